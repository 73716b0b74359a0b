"""Stage 1, GLO (Bojanowski et al. 2018): a generator and one unit-norm latent per image, fitted jointly.

Writes ``generator/`` (network artifact), ``latents.safetensors``, ``stats.jsonl``, ``grids/`` and
``state/last.pt`` (training state, resumed from when present) into the stage folder.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from glann import artifacts
from glann import distributed as gd
from glann.config import GLOConfig, LossConfig
from glann.data import ImageData
from glann.distributed import World
from glann.errors import ArtifactError, ConfigError
from glann.glo_dist import distributed_glo_step, perturbed
from glann.images import to_float
from glann.losses import build_loss
from glann.nets import Generator, GeneratorArch
from glann.runtime import NO_STOP, Accel, StopFlag, adam
from glann.tracking import Tracker
from glann.training import LoopOptions, Schedule, fit

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


class GLOStage:
    """GLO as the shared training loop (:func:`glann.training.fit`) sees it: one epoch is one pass over the images
    in a seeded order; each step moves the generator and only the batch's latent codes."""

    name, unit, count_key, mid_unit_checkpoints = "glo", "epoch", "epochs", True

    def __init__(self, data: ImageData, cfg: GLOConfig, loss_cfg: LossConfig, out_dir: Path, device: torch.device,
                 seed: int = 0, world: World | None = None):
        self.data, self.cfg, self.out_dir, self.device, self.seed = data, cfg, Path(out_dir), device, seed
        self.world = world or World(device=device)
        self.num_units = cfg.epochs
        n = len(data)
        self.accel = Accel(cfg.precision, cfg.channels_last, cfg.compile)
        if self.world.distributed and cfg.precision == "fp16":
            raise ConfigError("glo.precision=fp16 runs on one process only so far (its loss scaler is not shared "
                              "across ranks); use glo.precision=bf16 with several ranks")
        torch.manual_seed(seed)  # the init must not depend on what ran before in this process
        self.net = self.accel.memory_format(
            Generator(GeneratorArch.of(cfg.generator, cfg.latent_dim, data.shape)).to(device))
        self.gen = self.accel.compiled(gd.wrap_ddp(self.net, self.world))  # DDP: itself with one rank
        self.scaler = self.accel.grad_scaler(device)
        self.images = resident_images(data, device)
        self.latents = nn.Embedding(n, cfg.latent_dim, sparse=True).to(device)
        self.opt_g = adam(self.gen.parameters(), lr=cfg.lr_generator, betas=(cfg.beta1, cfg.beta2))
        self.opt_z = (RowAdam if cfg.latent_optimizer == "row_adam" else torch.optim.SparseAdam)(
            self.latents.parameters(), lr=cfg.lr_latent, betas=(cfg.beta1, cfg.beta2))
        self.loss_fn = build_loss(loss_cfg).to(device)
        # One step is a global batch of batch_size images per rank; with several ranks the last, partial global
        # batch of an epoch is dropped (equal work per rank; a new permutation each epoch drops other images).
        ranks = self.world.world_size
        self.batches_per_epoch = math.ceil(n / cfg.batch_size) if ranks == 1 else n // (cfg.batch_size * ranks)
        self.grid_idx = torch.arange(min(32, n))

    def optimizers(self) -> list[tuple[torch.optim.Optimizer, float]]:
        return [(self.opt_g, self.cfg.lr_generator), (self.opt_z, self.cfg.lr_latent)]

    def state_dict(self) -> dict:
        state = {"generator": self.net.state_dict(), "latents": self.latents.weight.detach(),
                 "opt_g": self.opt_g.state_dict(), "opt_z": self.opt_z.state_dict(), "num_images": len(self.data)}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        n, dim = len(self.data), self.cfg.latent_dim
        if state.get("num_images") != n or tuple(state["latents"].shape) != (n, dim):
            raise ArtifactError(f"checkpoint {self.out_dir / 'state'} is from an incompatible config (latents "
                                f"{tuple(state['latents'].shape)}, need {(n, dim)}); delete it or use another run "
                                "directory")
        self.net.load_state_dict(state["generator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_z.load_state_dict(state["opt_z"])
        with torch.no_grad():
            self.latents.weight.copy_(state["latents"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def init_fresh(self) -> None:
        with torch.no_grad():
            self.latents.weight.copy_(init_latents(self.data, self.cfg.latent_dim, self.cfg.latent_init, self.seed))

    def steps_in(self, unit: int) -> int:
        return self.batches_per_epoch

    def begin(self, unit: int) -> None:
        self.gen.train()
        self.perm = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self.seed * 100003 + unit))
        self.t0, self.seen = time.perf_counter(), 0

    def step(self, unit: int, i: int) -> tuple[float, int]:
        b, ranks = self.cfg.batch_size, self.world.world_size
        idx = self.perm[i * b * ranks:(i + 1) * b * ranks][gd.shard(b * ranks, self.world)] if ranks > 1 else \
            self.perm[i * b:(i + 1) * b]
        if len(idx) < 2 and self.cfg.generator.batch_norm:  # BatchNorm cannot train on one image
            return 0.0, 0
        x = self.batch(idx)
        autocast = self.accel.autocast(self.device)
        noise = None
        if self.cfg.latent_noise > 0:
            noise = code_noise(b * ranks, self.cfg.latent_dim, self.cfg.latent_noise, (self.seed, unit, i))
            noise = (noise[gd.shard(b * ranks, self.world)] if ranks > 1 else noise[:len(idx)]).to(self.device)
        if ranks > 1:
            loss = distributed_glo_step(self.gen, self.latents, self.opt_g, self.opt_z, self.loss_fn, x,
                                        idx.to(self.device), self.world, autocast, noise)
        else:
            loss = glo_step(self.gen, self.latents, self.opt_g, self.opt_z, self.loss_fn, x, idx.to(self.device),
                            autocast, self.scaler, noise)
        self.seen += len(idx)
        return loss, len(idx)

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """The images at ``idx`` as float on the device: from the GPU-resident copy when there is one."""
        if self.images is None:
            return self.data.batch(idx, self.device)
        return to_float(self.images[idx.to(self.device)], channels_last=False)

    def end(self, unit: int) -> dict[str, float]:
        return {"glo/images_per_s": self.seen / max(time.perf_counter() - self.t0, 1e-9),
                "glo/lr_generator": self.opt_g.param_groups[0]["lr"], "glo/lr_latent": self.opt_z.param_groups[0]["lr"]}

    @torch.no_grad()
    def snapshot(self, unit: int) -> dict[str, tuple[torch.Tensor, int]]:
        """Rows alternate: real images, then their reconstructions."""
        was_training = self.net.training
        self.net.eval()
        real = self.batch(self.grid_idx)
        recon = self.net(self.latents.weight[self.grid_idx.to(self.device)])
        self.net.train(was_training)
        per_row = 8
        rows = [t for s in range(0, len(real), per_row) for t in (real[s:s + per_row], recon[s:s + per_row])]
        return {"recon": (torch.cat(rows), per_row)}

    def export(self) -> None:
        recalibrate_batchnorm(self.net, self.latents.weight.detach(), self.cfg.batch_size)
        artifacts.save_network(self.out_dir / "generator", self.net)
        artifacts.save_tensors(self.out_dir / "latents.safetensors", {"latents": self.latents.weight.detach()})


def train_glo(data: ImageData, cfg: GLOConfig, loss_cfg: LossConfig, out_dir: Path, device: torch.device,
              seed: int = 0, stop: StopFlag = NO_STOP, progress: bool = True, resume_key: str = "",
              tracker: Callable[[int], Tracker] | None = None, log_every: int = 50, world: World | None = None) -> dict:
    """Train GLO on ``data`` into ``out_dir`` (or resume it from ``out_dir/state/last.pt``).

    Writes ``generator/`` and ``latents.safetensors`` (the artifacts the IMLE stage reads), ``stats.jsonl`` (one row
    per epoch), ``grids/recon_*.png`` and the training state. ``resume_key`` identifies the settings a checkpoint
    must share to be resumed (everything but the epoch count and logging); a mismatch is an error, not a silent
    mix. Returns the last epoch's ``glo/*`` metrics.
    """
    schedule = Schedule(lr_decay_every=cfg.lr_decay_every, lr_decay=cfg.lr_decay, grid_every=cfg.grid_every,
                        checkpoint_every=cfg.checkpoint_every, checkpoint_minutes=cfg.checkpoint_minutes,
                        lr_hint="glo.lr_generator / glo.lr_latent")
    stage = GLOStage(data, cfg, loss_cfg, out_dir, device, seed, world)
    return fit(stage, out_dir, schedule, LoopOptions(stop=stop, progress=progress, resume_key=resume_key,
                                                    tracker=tracker, log_every=log_every, world=stage.world))


def code_noise(rows: int, dim: int, sigma: float, key: tuple[int, int, int]) -> torch.Tensor:
    """``glo.latent_noise``: Gaussian noise of std ``sigma`` for a global batch of ``rows`` codes, drawn on the CPU
    from a generator seeded by ``key`` = (run seed, epoch, step). A step's noise depends on nothing else, so a resumed
    run draws the noise the uninterrupted run drew, and ranks that take their shard of it reproduce one process."""
    seed = (key[0] * 1_000_003 + key[1]) * 1_000_033 + key[2]
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed % 2**63)) * sigma


def glo_step(gen: nn.Module, latents: nn.Embedding, opt_g: torch.optim.Optimizer, opt_z: torch.optim.Optimizer,
             loss_fn: nn.Module, x: torch.Tensor, idx: torch.Tensor,
             autocast: contextlib.AbstractContextManager | None = None,
             scaler: torch.amp.GradScaler | None = None, noise: torch.Tensor | None = None) -> float:
    """One joint step on a batch: only the batch's latent codes move (sparse gradients, row-wise optimiser), and
    they are projected back onto the unit sphere. Returns the loss; non-finite losses update nothing.

    ``autocast`` (``Accel.autocast``) wraps the generator's forward pass; the loss is computed in fp32. ``scaler``
    (fp16) scales the loss for backward and skips a step whose gradients overflowed. ``noise`` (``code_noise``)
    perturbs the codes before the generator (``glo.latent_noise``): it learns to decode a neighbourhood of each
    code, not only the code itself."""
    with autocast or contextlib.nullcontext():
        out = gen(perturbed(latents(idx), noise))
    loss = loss_fn(out.float(), x).mean()
    if not torch.isfinite(loss):
        return float(loss.item())
    opt_g.zero_grad(set_to_none=True)
    opt_z.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt_g.step()
        opt_z.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt_g)
        scaler.step(opt_z)
        scaler.update()
    with torch.no_grad():
        latents.weight[idx] = F.normalize(latents.weight[idx], dim=1)
    return float(loss.item())


def resident_images(data: ImageData, device: torch.device, share: float = 0.25) -> torch.Tensor | None:
    """The uint8 dataset copied once to a CUDA ``device`` when it takes at most ``share`` of the free memory (then
    no batch is copied from the host); None on CPU or when it does not fit."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    if data.images.nbytes > share * free:
        log.info("glo: the %.0f MB dataset stays in host memory (over %d%% of the GPU's free memory)",
                 data.images.nbytes / 2**20, 100 * share)
        return None
    log.info("glo: the %.0f MB uint8 dataset is resident on %s", data.images.nbytes / 2**20, device)
    return torch.from_numpy(data.images).to(device)


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
    gen = artifacts.load_network(Path(stage_dir) / "generator", device, Generator)
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
