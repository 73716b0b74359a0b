"""2-D mixtures of Gaussians (a ring of 8, a 5x5 grid): the classic seconds-long mode-collapse check.

IMLE maps noise straight onto the 2-D points (the points play the role of GLO latents). Reported as in the
GAN literature (e.g. VEEGAN, PacGAN): modes covered (a mode counts when at least ``min_count`` samples lie
within 3 standard deviations of it) and the percentage of high-quality samples (within 3 std of any mode).
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from glann import resample
from glann.artifacts import load_network
from glann.config import (
    IMLEConfig,
    MapperConfig,
    check_candidates,
    check_categories,
    check_correction,
    check_matching,
    check_mixture,
    check_mode,
)
from glann.errors import ConfigError
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
TOY_DIM = 2  # the toy data live in the plane


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


# The settings each matching rule trains with in :func:`run_toy` (bench/toy.py measures them; BENCHMARKS.md).
TOY_MATCHING: dict[str, dict] = {
    "nearest": {},
    "rejection": {"rejection_quantile": 0.6},
    "adaptive": {"adaptive_gamma": 0.04, "adaptive_resample_every": 10},
    "capacity": {"capacity": 1, "capacity_k": 16},
}
_MAPPER_KEYS = ("hidden_dim", "num_layers", "categories", "mixture")


def toy_config(matching: str = "rejection", rounds: int = 250, **overrides: Any) -> IMLEConfig:
    """The IMLE settings :func:`run_toy` trains with: 2-d noise, an MLP 256 x 4 (no sphere), m=2, one epoch per
    round (fresh matches), batch 128, lr 3e-3 halved every ``rounds // 8`` rounds, and ``matching``'s settings from
    :data:`TOY_MATCHING`. ``overrides`` replace any :class:`IMLEConfig` field (``hidden_dim`` and ``num_layers`` go
    to the mapper); an unknown name raises ConfigError."""
    check_mode(matching)
    known = {f.name for f in fields(IMLEConfig)} | set(_MAPPER_KEYS)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"run_toy: unknown IMLE setting(s) {unknown}; choose from {sorted(known)}")
    mapper = MapperConfig(hidden_dim=overrides.pop("hidden_dim", 256), num_layers=overrides.pop("num_layers", 4),
                          project_to_sphere=False, categories=overrides.pop("categories", 0),
                          mixture=overrides.pop("mixture", 0))
    settings: dict[str, Any] = dict(noise_dim=2, mapper=mapper, rounds=rounds, epochs_per_round=1,
                                    samples_per_latent=2, batch_size=128, lr=3e-3,
                                    lr_decay_every=max(rounds // 8, 1), lr_decay=0.5, grid_every=0,
                                    matching=matching, **TOY_MATCHING[matching])
    settings.update(overrides)
    return check_mixture(check_categories(check_matching(IMLEConfig(**settings))), TOY_DIM)


def sample_toy(mapper: Mapper, data: torch.Tensor, num_samples: int = 2500, seed: int = 0,
               correction: float = 0.0, candidates: int = resample.DEFAULT_CANDIDATES) -> torch.Tensor:
    """``num_samples`` samples of a trained toy mapper, noise seeded by ``seed + 1``. ``correction`` > 0 applies the
    sampler's density correction (:mod:`glann.resample`, as :class:`glann.sampler.GlannSampler` does with the GLO
    codes) with the toy's ``data`` points as the reference: ``candidates`` codes per sample, one kept with
    probability proportional to the k-NN estimate of p_data / p_model raised to ``correction``. 0: plain samples."""
    strength = check_correction(correction, "correction")
    check_candidates(candidates, "candidates")
    cpu = torch.device("cpu")
    noise_dim = mapper.arch.noise_dim
    group = candidates if strength > 0 else 1
    noise = torch.randn(num_samples * group, noise_dim, generator=torch.Generator().manual_seed(seed + 1))
    codes = map_noise(mapper, noise, cpu)
    if strength == 0:
        return codes
    model = map_noise(mapper, torch.randn(len(data), noise_dim,
                                          generator=torch.Generator().manual_seed(resample.REFERENCE_SEED)), cpu)
    uniforms = torch.rand(num_samples, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
    return resample.resample(codes, data, model, strength, uniforms)


def train_toy(kind: str = "ring", n: int = 2000, rounds: int = 250, seed: int = 0,
              matching: str = "rejection", **overrides: Any) -> tuple[Mapper, torch.Tensor]:
    """Train IMLE (glann's IMLE stage, :func:`glann.imle.train_imle`) on ``n`` points of a 2-D mixture; return
    (trained mapper, the data points). Settings as in :func:`run_toy`."""
    cfg = toy_config(matching, rounds, **overrides)
    data = sample_mixture(kind, n, seed)
    with tempfile.TemporaryDirectory() as tmp:
        train_imle(data, cfg, Path(tmp), torch.device("cpu"), seed=seed, progress=False)
        mapper = load_network(Path(tmp) / "mapper", kind=Mapper)
    return mapper, data


def run_toy(kind: str = "ring", n: int = 2000, rounds: int = 250, seed: int = 0, num_samples: int = 2500,
            matching: str = "rejection", correction: float | list[float] = 0.0,
            **overrides: Any) -> dict | list[dict]:
    """Train IMLE (glann's IMLE stage, :func:`glann.imle.train_imle`) on ``n`` points of a 2-D mixture and report
    :func:`mode_metrics` of ``num_samples`` samples (:func:`sample_toy` at density-correction strength
    ``correction``), plus ``seconds`` (training and sampling). A list of strengths samples the one trained mapper at
    each and returns one dict per strength (``seconds`` is then the training time plus that strength's sampling).

    ``matching`` and ``overrides`` (any IMLEConfig field, e.g. ``rejection_quantile=0.7``, ``samples_per_latent=4``,
    ``hidden_dim=128``) are passed to :func:`toy_config`. Torch's thread count is left to the caller.
    """
    strengths = correction if isinstance(correction, list) else [correction]
    for s in strengths:
        check_correction(s, "correction")
    t0 = time.perf_counter()
    mapper, data = train_toy(kind, n, rounds, seed, matching, **overrides)
    trained = time.perf_counter() - t0
    rows = []
    for s in strengths:
        t1 = time.perf_counter()
        samples = sample_toy(mapper, data, num_samples, seed, s)
        rows.append({**mode_metrics(samples, kind, data=data), "correction": s,
                     "seconds": trained + time.perf_counter() - t1})
    return rows if isinstance(correction, list) else rows[0]
