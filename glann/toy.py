"""2-D mixtures of Gaussians (a ring of 8, a 5x5 grid): the classic seconds-long mode-collapse check.

IMLE maps noise straight onto the 2-D points (the points play the role of GLO latents). Reported as in the
GAN literature (e.g. VEEGAN, PacGAN): modes covered (a mode counts when at least ``min_count`` samples lie
within 3 standard deviations of it) and the percentage of high-quality samples (within 3 std of any mode).
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from glann.artifacts import load_network
from glann.config import IMLEConfig, MapperConfig
from glann.imle import map_noise, train_imle
from glann.nets import Mapper


def mixture_centers(kind: str) -> torch.Tensor:
    if kind == "ring":
        angles = torch.arange(8) * (2 * math.pi / 8)
        return 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    if kind == "grid":
        g = torch.arange(-2, 3, dtype=torch.float32) * 2.0
        return torch.cartesian_prod(g, g)
    raise ValueError(f"unknown toy {kind!r}: ring or grid")


TOY_STD = {"ring": 0.02, "grid": 0.05}


def sample_mixture(kind: str, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = mixture_centers(kind)
    which = torch.randint(len(centers), (n,), generator=g)
    return centers[which] + TOY_STD[kind] * torch.randn(n, 2, generator=g)


def mode_metrics(samples: torch.Tensor, kind: str, min_count: int = 20,
                 data: torch.Tensor | None = None) -> dict:
    """Modes covered and % high-quality samples; with ``data``, also the % of data points that have a sample
    within 3 std (``data_recall_pct``), the property IMLE optimises (every data point has a nearby sample)."""
    centers = mixture_centers(kind)
    d = torch.cdist(samples, centers)
    nearest_d, nearest = d.min(1)
    good = nearest_d < 3 * TOY_STD[kind]
    counts = torch.bincount(nearest[good], minlength=len(centers))
    out = {"modes": len(centers), "modes_covered": int((counts >= min_count).sum()),
           "high_quality_pct": 100.0 * good.float().mean().item()}
    if data is not None:
        reached = torch.cdist(data, samples).min(1).values < 3 * TOY_STD[kind]
        out["data_recall_pct"] = 100.0 * reached.float().mean().item()
    return out


def run_toy(kind: str = "ring", n: int = 2000, rounds: int = 30, seed: int = 0, num_samples: int = 2500) -> dict:
    """Train IMLE on a 2-D mixture and report its mode metrics (a few seconds on a CPU)."""
    data = sample_mixture(kind, n, seed)
    cfg = IMLEConfig(noise_dim=8, mapper=MapperConfig(hidden_dim=128, num_layers=3, project_to_sphere=False),
                     rounds=rounds, epochs_per_round=5, samples_per_latent=4, batch_size=128, lr=1e-3, grid_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        train_imle(data, cfg, Path(tmp), torch.device("cpu"), seed=seed, progress=False)
        mapper = load_network(Path(tmp) / "mapper", kind=Mapper)
    noise = torch.randn(num_samples, cfg.noise_dim, generator=torch.Generator().manual_seed(seed + 1))
    return mode_metrics(map_noise(mapper, noise, torch.device("cpu")), kind, data=data)
