"""Stage 1, GLO (Bojanowski et al. 2018): a generator and one unit-norm latent per image, fitted jointly.

Writes ``generator/`` (network artifact), ``latents.safetensors``, ``stats.jsonl``, ``grids/`` and
``state/last.pt`` (training state, resumed from when present) into the stage folder.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from glann import artifacts
from glann.config import GLOConfig, LossConfig
from glann.data import ImageData
from glann.errors import ArtifactError, TrainingError
from glann.losses import build_loss
from glann.nets import Generator, GeneratorArch
from glann.runtime import (NO_STOP, CheckpointTimer, Preempted, Stats, StopFlag, adam, rng_state, save_grid,
                           set_rng_state)

log = logging.getLogger(__name__)


def init_latents(data: ImageData, dim: int, method: str, seed: int, max_fit: int = 20000) -> torch.Tensor:
    """PCA projection of the images (GLO's initialisation) or Gaussian noise, on the unit sphere."""
    g = torch.Generator().manual_seed(seed)
    n = len(data)
    z = torch.randn(n, dim, generator=g)
    if method == "pca":
        fit = torch.randperm(n, generator=g)[:max_fit]
        x = data.batch(fit).flatten(1)
        mean = x.mean(0, keepdim=True)
        q = min(dim, x.shape[1], x.shape[0])
        torch.manual_seed(seed)  # pca_lowrank draws from the global RNG
        _, _, v = torch.pca_lowrank(x - mean, q=q, center=False)
        for s in range(0, n, 8192):
            idx = torch.arange(s, min(n, s + 8192))
            z[idx, :q] = (data.batch(idx).flatten(1) - mean) @ v
        if q < dim:  # keep the PCA part dominant, fill the rest with small noise
            z[:, q:] *= 1e-2 * z[:, :q].std()
    return F.normalize(z, dim=1)


def generator_arch(cfg: GLOConfig, image_shape: tuple[int, int, int]) -> GeneratorArch:
    c, h, w = image_shape
    return GeneratorArch(latent_dim=cfg.latent_dim, image_size=h, channels=c, hidden_dim=cfg.generator.hidden_dim,
                         base_channels=cfg.generator.base_channels, batch_norm=cfg.generator.batch_norm)


def train_glo(data: ImageData, cfg: GLOConfig, loss_cfg: LossConfig, out_dir: Path, device: torch.device,
              seed: int = 0, stop: StopFlag = NO_STOP, progress: bool = True, resume_key: str = "") -> dict:
    """Train (or resume) GLO into ``out_dir``. ``resume_key`` identifies the settings a checkpoint must share
    to be resumed (everything but the epoch count and logging); a mismatch is an error, not a silent mix."""
    out_dir = Path(out_dir)
    n = len(data)
    torch.manual_seed(seed)  # the init must not depend on what ran before in this process
    gen = Generator(generator_arch(cfg, data.shape)).to(device)
    latents = nn.Embedding(n, cfg.latent_dim, sparse=True).to(device)
    opt_g = adam(gen.parameters(), lr=cfg.lr_generator, betas=(cfg.beta1, cfg.beta2))
    opt_z = (RowAdam if cfg.latent_optimizer == "row_adam" else torch.optim.SparseAdam)(
        latents.parameters(), lr=cfg.lr_latent, betas=(cfg.beta1, cfg.beta2))
    sched_g = torch.optim.lr_scheduler.StepLR(opt_g, cfg.lr_decay_every, cfg.lr_decay)
    sched_z = torch.optim.lr_scheduler.StepLR(opt_z, cfg.lr_decay_every, cfg.lr_decay)
    loss_fn = build_loss(loss_cfg).to(device)
    state_path = out_dir / "state" / "last.pt"
    stats = Stats(out_dir / "stats.jsonl")
    batches_per_epoch = math.ceil(n / cfg.batch_size)
    epoch, batch_i = 0, 0

    def checkpoint() -> None:
        artifacts.save_state(state_path, {
            "generator": gen.state_dict(), "latents": latents.weight.detach(), "opt_g": opt_g.state_dict(),
            "opt_z": opt_z.state_dict(), "sched_g": sched_g.state_dict(), "sched_z": sched_z.state_dict(),
            "epoch": epoch, "batch": batch_i, "num_images": n, "rng": rng_state(), "resume_key": resume_key})
        timer.reset()

    if state_path.is_file():
        state = artifacts.load_state(state_path)
        artifacts.check_resume_key(state, resume_key, state_path)
        if state.get("num_images") != n or tuple(state["latents"].shape) != (n, cfg.latent_dim):
            raise ArtifactError(f"checkpoint {state_path} is from an incompatible config "
                                f"(latents {tuple(state['latents'].shape)}, need {(n, cfg.latent_dim)}); "
                                "delete it or use another run directory")
        try:
            gen.load_state_dict(state["generator"])
            opt_g.load_state_dict(state["opt_g"])
            opt_z.load_state_dict(state["opt_z"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ArtifactError(f"checkpoint {state_path} is from an incompatible config: {e}") from None
        with torch.no_grad():
            latents.weight.copy_(state["latents"])
        sched_g.load_state_dict(state["sched_g"])
        sched_z.load_state_dict(state["sched_z"])
        epoch, batch_i = state["epoch"], state["batch"]
        if epoch > cfg.epochs:
            raise ArtifactError(f"checkpoint {state_path} is at epoch {epoch}, past glo.epochs={cfg.epochs}; raise "
                                "glo.epochs or use a new run folder")
        set_rng_state(state["rng"])
        log.info("glo: resuming from %s at epoch %d, batch %d", state_path, epoch, batch_i)
    else:
        with torch.no_grad():
            latents.weight.copy_(init_latents(data, cfg.latent_dim, cfg.latent_init, seed))

    stats.rewind("epoch", epoch)
    timer = CheckpointTimer(cfg.checkpoint_minutes)
    grid_idx = torch.arange(min(32, n))
    row: dict = {}
    bar = tqdm(total=cfg.epochs * batches_per_epoch, initial=epoch * batches_per_epoch + batch_i, desc="glo",
               unit="batch", disable=not progress, dynamic_ncols=True, mininterval=1.0)
    while epoch < cfg.epochs:
        gen.train()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        t0, loss_sum, seen = time.perf_counter(), 0.0, 0
        while batch_i < batches_per_epoch:
            idx = perm[batch_i * cfg.batch_size:(batch_i + 1) * cfg.batch_size]
            if len(idx) < 2 and cfg.generator.batch_norm:  # BatchNorm cannot train on one image
                batch_i += 1
                bar.update(1)
                continue
            loss = glo_step(gen, latents, opt_g, opt_z, loss_fn, data.batch(idx, device), idx.to(device))
            if not math.isfinite(loss):
                raise TrainingError(f"glo: loss became {loss} at epoch {epoch}, batch {batch_i}; the last good "
                                    f"checkpoint {state_path if state_path.is_file() else '(none)'} is kept. "
                                    "Lower glo.lr_generator / glo.lr_latent and re-run to resume")
            loss_sum += loss * len(idx)
            seen += len(idx)
            batch_i += 1
            bar.update(1)
            if stop or timer.due():
                checkpoint()
                if stop:
                    raise Preempted(f"glo: stopped at epoch {epoch}, batch {batch_i}; state saved to {state_path}")
        dt = time.perf_counter() - t0
        sched_g.step()
        sched_z.step()
        epoch, batch_i = epoch + 1, 0
        row = {"epoch": epoch, "glo/loss": loss_sum / max(seen, 1), "glo/images_per_s": seen / max(dt, 1e-9),
               "glo/lr_generator": opt_g.param_groups[0]["lr"], "glo/lr_latent": opt_z.param_groups[0]["lr"]}
        stats.write(**row)
        log.info("glo: epoch %d/%d loss %.5f (%.0f img/s)", epoch, cfg.epochs, row["glo/loss"], row["glo/images_per_s"])
        bar.set_postfix(epoch=epoch, loss=f"{row['glo/loss']:.4f}")
        if cfg.grid_every and (epoch % cfg.grid_every == 0 or epoch == cfg.epochs):
            save_recon_grid(gen, latents.weight, data, grid_idx, out_dir / "grids" / f"recon_{epoch:04d}.png", device)
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
            checkpoint()
        if stop:
            raise Preempted(f"glo: stopped after epoch {epoch}; state saved to {state_path}")
    bar.close()

    recalibrate_batchnorm(gen, latents.weight.detach(), cfg.batch_size)
    artifacts.save_network(out_dir / "generator", gen)
    artifacts.save_tensors(out_dir / "latents.safetensors", {"latents": latents.weight.detach()})
    return {k: v for k, v in row.items() if k.startswith("glo/")}


def glo_step(gen: nn.Module, latents: nn.Embedding, opt_g: torch.optim.Optimizer, opt_z: torch.optim.Optimizer,
             loss_fn: nn.Module, x: torch.Tensor, idx: torch.Tensor) -> float:
    """One joint step on a batch: only the batch's latent codes move (sparse gradients, row-wise optimiser), and
    they are projected back onto the unit sphere. Returns the loss; non-finite losses update nothing."""
    loss = loss_fn(gen(latents(idx)), x).mean()
    if not torch.isfinite(loss):
        return float(loss.item())
    opt_g.zero_grad(set_to_none=True)
    opt_z.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    opt_z.step()
    with torch.no_grad():
        latents.weight[idx] = F.normalize(latents.weight[idx], dim=1)
    return float(loss.item())


@torch.no_grad()
def save_recon_grid(gen: nn.Module, z: torch.Tensor, data: ImageData, idx: torch.Tensor, path: Path,
                    device: torch.device) -> None:
    """Rows alternate: real images, then their reconstructions."""
    was_training = gen.training
    gen.eval()
    real = data.batch(idx, device)
    recon = gen(z[idx.to(z.device)].to(device))
    gen.train(was_training)
    per_row = 8
    rows = [t for s in range(0, len(idx), per_row) for t in (real[s:s + per_row], recon[s:s + per_row])]
    save_grid(torch.cat(rows), path, nrow=per_row)


@torch.no_grad()
def recalibrate_batchnorm(gen: nn.Module, latents: torch.Tensor, batch_size: int) -> None:
    """Recompute BatchNorm running statistics over all training latents with the final weights."""
    bns = [m for m in gen.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    gen.train()
    device = next(gen.parameters()).device
    for s in range(0, len(latents), batch_size):
        z = latents[s:s + batch_size].to(device)
        if len(z) > 1:
            gen(z)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    gen.eval()


def load_glo(stage_dir: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, torch.Tensor]:
    """The trained generator and latent table of a finished GLO stage."""
    gen = artifacts.load_network(Path(stage_dir) / "generator", device)
    z = artifacts.load_tensors(Path(stage_dir) / "latents.safetensors")["latents"]
    return gen, z


class RowAdam(torch.optim.Optimizer):
    """Adam for a latent table with sparse gradients, with moments *and bias correction per row*.

    Each code is seen once per epoch. ``torch.optim.SparseAdam`` bias-corrects with the table's global step
    count, so a code's second moment looks ~1/(1-beta2^t) too small after a few epochs and its steps blow up
    to ~10x the learning rate. Here row i is corrected with its own update count: exactly Adam, as if
    every code were its own parameter that is updated only when its image is in the batch.
    """

    def __init__(self, params, lr: float = 1e-2, betas: tuple[float, float] = (0.5, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.coalesce() if p.grad.is_sparse else p.grad.to_sparse(1).coalesce()
                rows, g = grad.indices()[0], grad.values()
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["row_steps"] = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
                state["row_steps"][rows] += 1
                t = state["row_steps"][rows].unsqueeze(1)
                m = state["exp_avg"][rows].mul_(beta1).add_(g, alpha=1 - beta1)
                v = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                state["exp_avg"][rows] = m
                state["exp_avg_sq"][rows] = v
                m_hat = m / (1 - beta1 ** t)
                v_hat = v / (1 - beta2 ** t)
                p[rows] -= group["lr"] * m_hat / (v_hat.sqrt() + group["eps"])
        return None
