"""Stage 2, IMLE (Li & Malik 2018) in GLO's latent space: a mapper from Gaussian noise to latents such
that every data latent has a nearby generated latent.

Each round draws m*N noise vectors, maps them, finds for every data latent its exact nearest generated
latent (faiss), then trains the mapper to pull those matched outputs onto the data latents for
``epochs_per_round`` epochs. Writes ``mapper/``, ``stats.jsonl``, ``grids/`` and ``state/last.pt``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from tqdm import tqdm

from glann import artifacts
from glann.config import IMLEConfig
from glann.errors import ArtifactError, TrainingError
from glann.knn import nearest_neighbors
from glann.nets import Mapper, MapperArch
from glann.runtime import NO_STOP, Preempted, Stats, StopFlag, adam, rng_state, save_grid, set_rng_state

log = logging.getLogger(__name__)


def mapper_arch(cfg: IMLEConfig, latent_dim: int) -> MapperArch:
    return MapperArch(noise_dim=cfg.noise_dim, latent_dim=latent_dim, hidden_dim=cfg.mapper.hidden_dim,
                      num_layers=cfg.mapper.num_layers, project_to_sphere=cfg.mapper.project_to_sphere)


def round_lr(cfg: IMLEConfig, rnd: int) -> float:
    """The mapper's lr in round ``rnd`` (0-based): step decay every ``lr_decay_every`` rounds, if set."""
    return cfg.lr * cfg.lr_decay ** (rnd // cfg.lr_decay_every) if cfg.lr_decay_every else cfg.lr


@torch.no_grad()
def map_noise(mapper: nn.Module, noise: torch.Tensor, device: torch.device, batch_size: int = 8192) -> torch.Tensor:
    was_training = mapper.training
    mapper.eval()
    out = torch.cat([mapper(noise[s:s + batch_size].to(device)).float().cpu()
                     for s in range(0, len(noise), batch_size)])
    mapper.train(was_training)
    return out


def matching_round(mapper: nn.Module, latents: torch.Tensor, num_samples: int, noise_dim: int,
                   rng: torch.Generator, device: torch.device, knn_device: str = "auto"):
    """Draw noise, map it, and for each data latent return (matched noise, NN distance)."""
    noise = torch.randn(num_samples, noise_dim, generator=rng)
    generated = map_noise(mapper, noise, device)
    idx, dist = nearest_neighbors(generated, latents, device=knn_device)
    return noise[idx], dist


def train_imle(latents: torch.Tensor, cfg: IMLEConfig, out_dir: Path, device: torch.device, seed: int = 0,
               generator: Optional[nn.Module] = None, stop: StopFlag = NO_STOP, progress: bool = True,
               resume_key: str = "") -> dict:
    out_dir = Path(out_dir)
    latents = latents.float().cpu()
    n, dim = latents.shape
    torch.manual_seed(seed + 1)  # the init must not depend on whether GLO ran in this process
    mapper = Mapper(mapper_arch(cfg, dim)).to(device)
    opt = adam(mapper.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    state_path = out_dir / "state" / "last.pt"
    stats = Stats(out_dir / "stats.jsonl")
    start = 0
    if state_path.is_file():
        state = artifacts.load_state(state_path)
        artifacts.check_resume_key(state, resume_key, state_path)
        try:
            mapper.load_state_dict(state["mapper"])
            opt.load_state_dict(state["opt"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ArtifactError(f"checkpoint {state_path} is from an incompatible config: {e}") from None
        start = state["round"]
        if start > cfg.rounds:
            raise ArtifactError(f"checkpoint {state_path} is at round {start}, past imle.rounds={cfg.rounds}; raise "
                                "imle.rounds or use a new run folder")
        set_rng_state(state["rng"])
        log.info("imle: resuming from %s at round %d", state_path, start)
    stats.rewind("round", start)
    grid_noise = torch.randn(64, cfg.noise_dim, generator=torch.Generator().manual_seed(seed + 17))
    target_dev = latents.to(device)
    row: dict = {}
    bar = tqdm(total=cfg.rounds, initial=start, desc="imle", unit="round", disable=not progress, dynamic_ncols=True)
    for rnd in range(start, cfg.rounds):
        rng = torch.Generator().manual_seed(seed * 100003 + rnd)
        lr = round_lr(cfg, rnd)
        for group in opt.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        matched, dist = matching_round(mapper, latents, cfg.samples_per_latent * n, cfg.noise_dim, rng, device,
                                       cfg.knn_device)
        t_match = time.perf_counter() - t0
        matched = matched.to(device)
        mapper.train()
        loss_sum, steps = 0.0, 0
        for _ in range(cfg.epochs_per_round):
            perm = torch.randperm(n, generator=rng).to(device)
            for s in range(0, n, cfg.batch_size):
                b = perm[s:s + cfg.batch_size]
                loss = (mapper(matched[b]) - target_dev[b]).pow(2).sum(1).mean()
                if not torch.isfinite(loss):
                    raise TrainingError(f"imle: loss became {loss.item()} in round {rnd}; the last good checkpoint "
                                        f"{state_path if state_path.is_file() else '(none)'} is kept. Lower imle.lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.item()
                steps += 1
                if stop:
                    raise Preempted(f"imle: stopped in round {rnd}; resuming restarts it from {state_path}")
        row = {"round": rnd + 1, "imle/nn_dist": dist.mean().item(), "imle/nn_dist_max": dist.max().item(),
               "imle/loss": loss_sum / max(steps, 1), "imle/lr": lr, "imle/match_seconds": t_match,
               "imle/round_seconds": time.perf_counter() - t0}
        stats.write(**row)
        log.info("imle: round %d/%d mean NN distance %.4f, loss %.4f (matching %.2fs)", rnd + 1, cfg.rounds,
                 row["imle/nn_dist"], row["imle/loss"], t_match)
        bar.set_postfix(nn_dist=f"{row['imle/nn_dist']:.4f}")
        bar.update(1)
        artifacts.save_state(state_path, {"mapper": mapper.state_dict(), "opt": opt.state_dict(), "round": rnd + 1,
                                          "num_latents": n, "rng": rng_state(), "resume_key": resume_key})
        if generator is not None and cfg.grid_every and ((rnd + 1) % cfg.grid_every == 0 or rnd + 1 == cfg.rounds):
            with torch.no_grad():
                images = generator(map_noise(mapper, grid_noise, device).to(device))
            save_grid(images, out_dir / "grids" / f"samples_{rnd + 1:04d}.png", nrow=8)
    bar.close()
    artifacts.save_network(out_dir / "mapper", mapper.eval())
    return {k: v for k, v in row.items() if k.startswith("imle/")}
