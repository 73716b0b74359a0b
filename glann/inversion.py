"""GLO's latent space from the outside: fit codes to new images (inversion) and walk between codes (slerp).

    result = invert(generator, images, Lap1Loss(4), steps=300)   # images: float (N, C, H, W) in [0, 1]
    result.latents, result.reconstructions, result.losses

Inversion is GLO's own latent step with the generator frozen: Adam on one code per image, each projected back
onto the unit sphere after every step (where all training codes live), minimising the stage-1 loss. The
generator is in eval mode, so every image's loss depends on its own code only, and the result does not depend
on the batch size. Starting codes are drawn up front from ``seed``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from glann.nets import Generator


@dataclass
class InversionResult:
    latents: torch.Tensor  # (N, latent_dim) on the unit sphere, float32 on the CPU
    reconstructions: torch.Tensor  # (N, C, H, W) in [0, 1], float32 on the CPU
    losses: torch.Tensor  # (N,) the stage-1 loss of each reconstruction against its image


def random_codes(num: int, dim: int, seed: int = 0) -> torch.Tensor:
    """``num`` codes drawn uniformly on the unit sphere, on the CPU, from ``seed``."""
    return F.normalize(torch.randn(num, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Spherical interpolation between rows of ``a`` and ``b`` (..., D) at ``t`` (a number, or one per row).

    The angle is that between the directions of ``a`` and ``b``; norms are interpolated along with it (so
    Gaussian noise keeps a typical norm, and unit codes stay on the sphere). ``t=0`` gives ``a`` and ``t=1``
    gives ``b`` exactly. Nearly parallel rows fall back to linear interpolation."""
    if a.shape != b.shape:
        raise ValueError(f"slerp endpoints must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    if t.ndim:
        t = t.unsqueeze(-1)
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    wa = torch.where(parallel, 1.0 - t, torch.sin((1.0 - t) * omega) / safe)
    wb = torch.where(parallel, t, torch.sin(t * omega) / safe)
    return wa * a + wb * b


def slerp_path(endpoints: torch.Tensor, steps: int) -> torch.Tensor:
    """(K, D) endpoints -> ((K - 1) * steps, D): ``steps`` points from each endpoint to the next, both ends
    included, one pair after another."""
    if endpoints.ndim != 2 or len(endpoints) < 2:
        raise ValueError(f"interpolation needs at least 2 endpoints as a (K, D) tensor, got shape "
                         f"{tuple(endpoints.shape)}")
    if steps < 2:
        raise ValueError(f"interpolation needs at least 2 steps (both endpoints), got {steps}")
    t = torch.linspace(0.0, 1.0, steps, dtype=endpoints.dtype)
    t[-1] = 1.0
    rows = [slerp(a.expand(steps, -1), b.expand(steps, -1), t) for a, b in zip(endpoints[:-1], endpoints[1:])]
    return torch.cat(rows)


def invert(generator: Generator, images: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
           steps: int = 300, lr: float = 0.05, batch_size: int = 256, seed: int = 0,
           init: str | torch.Tensor = "random", restarts: int = 1, progress: bool = True) -> InversionResult:
    """Fit one unit-norm latent code per image with the generator frozen.

    ``images``: float (N, C, H, W) in [0, 1], the generator's image shape. ``loss_fn`` maps (prediction, target)
    to a per-image loss (N,), as :mod:`glann.losses` does. ``init``: "random" (``restarts`` codes per image drawn
    on the sphere from ``seed``) or a tensor of starting codes, (N, D) or (N, R, D) for R starts per image. Every
    start is optimised for ``steps`` Adam steps (lr decays to 10% along a cosine) and the best one per image is
    kept. ``batch_size`` counts images; a batch optimises ``batch_size * R`` codes together."""
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (N, C, H, W) in [0, 1], got {images.dtype} "
                         f"{tuple(images.shape)}")
    arch = generator.arch
    want = (arch.channels, arch.image_size, arch.image_size)
    if tuple(images.shape[1:]) != want:
        raise ValueError(f"images have shape {tuple(images.shape[1:])}, the generator makes {want}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("restarts", restarts), ("lr", lr)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    n, dim = len(images), arch.latent_dim
    if isinstance(init, str):
        if init != "random":
            raise ValueError(f"init must be 'random' or a tensor of starting codes, got {init!r}")
        starts = random_codes(n * restarts, dim, seed).view(n, restarts, dim)
    else:
        starts = init.detach().float().cpu()
        starts = starts.unsqueeze(1) if starts.ndim == 2 else starts
        if starts.ndim != 3 or starts.shape[0] != n or starts.shape[2] != dim:
            raise ValueError(f"init must be (N, {dim}) or (N, R, {dim}) codes for N={n} images, got "
                             f"{tuple(init.shape)}")
        starts = F.normalize(starts, dim=-1)
    device = next(generator.parameters()).device
    dtype = next(generator.parameters()).dtype
    was_training = generator.training
    grad_flags = [p.requires_grad for p in generator.parameters()]
    generator.eval().requires_grad_(False)
    latents, losses, recons = [], [], []
    num_batches = math.ceil(n / batch_size)
    bar = tqdm(total=num_batches * steps, desc="invert", unit="step", disable=not progress, dynamic_ncols=True,
               mininterval=1.0)
    try:
        for s in range(0, n, batch_size):
            x = images[s:s + batch_size].to(device, dtype)
            b, r = len(x), starts.shape[1]
            target = x.repeat_interleave(r, dim=0)
            z = starts[s:s + b].reshape(b * r, dim).to(device, dtype).clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.1 * lr)
            for _ in range(steps):
                loss = loss_fn(generator(z), target)
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()  # a sum: each code's gradient is its own image's, whatever the batch
                opt.step()
                sched.step()
                with torch.no_grad():
                    z.copy_(F.normalize(z, dim=1))
                bar.update(1)
            with torch.no_grad():
                final = loss_fn(generator(z), target).float().view(b, r)
                best = final.argmin(1)
                z_best = z.view(b, r, dim)[torch.arange(b, device=device), best]
                recon = generator(z_best)
                latents.append(z_best.float().cpu())
                losses.append(final[torch.arange(b, device=device), best].cpu())
                recons.append(recon.float().cpu())
            bar.set_postfix(loss=f"{torch.cat(losses).mean():.4f}")
    finally:
        bar.close()
        generator.train(was_training)
        for p, flag in zip(generator.parameters(), grad_flags):
            p.requires_grad_(flag)
    return InversionResult(torch.cat(latents), torch.cat(recons), torch.cat(losses))


@torch.no_grad()
def nearest_decoded(images: torch.Tensor, codes: torch.Tensor, decoded: torch.Tensor, per_image: int = 1,
                    chunk: int = 1024) -> torch.Tensor:
    """For each image, the ``per_image`` codes whose decoded images are closest in pixel L2: (N, per_image, D).
    A cheap, data-driven start for :func:`invert` (codes from the mapper land where the generator was trained)."""
    flat = decoded.flatten(1).float()
    picks = []
    for s in range(0, len(images), chunk):
        d = torch.cdist(images[s:s + chunk].flatten(1).float(), flat)
        picks.append(d.topk(per_image, dim=1, largest=False).indices)
    return codes[torch.cat(picks)]
