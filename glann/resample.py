"""Density correction of IMLE samples: importance resampling with a k-NN density ratio in latent space.

IMLE trains the mapper so that every data code has a generated code nearby. That covers every mode, but it is not
density matching: a sample set that minimises the distance from each data point to its nearest sample is an optimal
quantiser, whose density in d dimensions goes as p^(d/(d+2)) (Zador), flatter than the data density p. Dense clusters
get fewer samples than their share of the data and sparse regions more. On MNIST the mapper draws 4.5% "1"s where
the data has 11.2% (BENCHMARKS.md, "Density correction").

The correction reweights the mapper's own codes. For a code c, look at its ``k`` nearest neighbours among the union
of the data codes D and an equally large reference set R of the mapper's codes (fresh noise, fixed seed). If ``a`` of
the ``k`` are data codes, then

    r(c) = (a + 1/2) / (k - a + 1/2)

estimates p_data(c) / p_model(c). The 1/2 keeps the ratio finite and non-zero. The sampler draws ``candidates`` codes
per image (``DEFAULT_CANDIDATES`` unless set) and keeps one of them, with probability proportional to r(c)^strength
(sampling-importance-resampling in groups: each image depends on its own candidates only, so a seed gives the same
images whatever the batch size). More candidates come closer to the weighted density itself. The strength 0 turns the
correction off; 1 would aim at the data density itself if the ratio were exact, but the k-NN ratio is noisy and a weaker
correction is safer. 0.5 is the default, chosen by measurement (BENCHMARKS).

Every search is exact (faiss on the CPU, torch on a GPU), like the IMLE matching.
"""
from __future__ import annotations

import torch

from glann.config import check_correction
from glann.knn import search_k

DEFAULT_STRENGTH = 0.5
NEIGHBOURS = 30
DEFAULT_CANDIDATES = 6  # codes drawn per image; 12 was measured no better on average (BENCHMARKS)
MAX_REFERENCE = 60_000  # data codes kept in a sampler folder (a random subset of larger training sets)
REFERENCE_SEED = 2 ** 31 - 1  # the noise of the model's reference codes; not a seed users pick for sampling


def subsample_reference(codes: torch.Tensor, max_codes: int = MAX_REFERENCE, seed: int = 0) -> torch.Tensor:
    """At most ``max_codes`` rows of ``codes`` (a fixed random subset, in their original order), float32, CPU."""
    codes = codes.detach().float().cpu()
    if len(codes) <= max_codes:
        return codes.clone()
    keep = torch.randperm(len(codes), generator=torch.Generator().manual_seed(seed))[:max_codes]
    return codes[keep.sort().values].clone()


def density_ratio(codes: torch.Tensor, data: torch.Tensor, model: torch.Tensor,
                  k: int = NEIGHBOURS) -> torch.Tensor:
    """Estimated p_data / p_model at each row of ``codes`` (float32 (N,), CPU), from the share of data codes among
    its ``k`` nearest neighbours in ``data`` ∪ ``model``. ``data`` and ``model`` must have the same number of rows,
    so that the share is a density ratio, and ``codes`` must not be rows of either."""
    if len(data) != len(model):
        raise ValueError(f"data and model reference sets must be equally large, got {len(data)} and {len(model)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    union = torch.cat([data.to(codes.device, torch.float32), model.to(codes.device, torch.float32)])
    k = min(k, len(union))
    idx, _ = search_k(union, codes.float(), k)
    from_data = (idx < len(data)).sum(1).float()
    return (from_data + 0.5) / (k - from_data + 0.5)


def pick(ratio: torch.Tensor, strength: float, uniforms: torch.Tensor) -> torch.Tensor:
    """For each row of ``ratio`` (N, M), the index of one column, column j with probability proportional to
    ``ratio[:, j] ** strength``, decided by ``uniforms`` (N,) in [0, 1) (int64 (N,), on the CPU)."""
    check_correction(strength, "strength")
    if ratio.ndim != 2 or uniforms.shape != ratio.shape[:1]:
        raise ValueError(f"need ratio (N, M) and uniforms (N,), got {tuple(ratio.shape)} and {tuple(uniforms.shape)}")
    cumulative = ratio.detach().cpu().double().pow(strength).cumsum(1)
    threshold = uniforms.detach().cpu().double() * cumulative[:, -1]
    return (cumulative <= threshold.unsqueeze(1)).sum(1).clamp_max(ratio.shape[1] - 1)


def resample(candidates: torch.Tensor, data: torch.Tensor, model: torch.Tensor, strength: float,
             uniforms: torch.Tensor, k: int = NEIGHBOURS) -> torch.Tensor:
    """One code per group of consecutive ``candidates`` rows ((N * G, d) for ``uniforms`` (N,)): the row picked by
    :func:`pick` from the groups' :func:`density_ratio` against ``data`` and ``model``; (N, d), on the candidates'
    device."""
    n = len(uniforms)
    if n == 0 or len(candidates) % n:
        raise ValueError(f"need a whole number of candidates per pick, got {len(candidates)} for {n}")
    group = len(candidates) // n
    ratio = density_ratio(candidates, data, model, k)
    chosen = pick(ratio.view(n, group), strength, uniforms)
    return candidates.view(n, group, -1)[torch.arange(n, device=candidates.device), chosen.to(candidates.device)]
