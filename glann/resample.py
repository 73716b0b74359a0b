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

estimates p_data(c) / p_model(c). The 1/2 keeps the ratio finite and non-zero. The sampler draws ``oversample``
candidates per image and keeps ``num`` of them without replacement, with probability proportional to r(c)^strength.
The strength 0 turns the correction off. The strength 1 aims at the data density itself, but the k-NN ratio is
noisy and over-corrects (MNIST: 12.9% "1"s at k=30). A strength of 0.5 is the measured default.

Every search is exact (faiss on the CPU, torch on a GPU), like the IMLE matching.
"""
from __future__ import annotations

import torch

from glann.config import check_correction
from glann.knn import search_k

DEFAULT_STRENGTH = 0.5
NEIGHBOURS = 30
OVERSAMPLE = 6
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


def choose(ratio: torch.Tensor, num: int, strength: float, generator: torch.Generator) -> torch.Tensor:
    """``num`` distinct indices into ``ratio``, drawn with probability proportional to ``ratio ** strength``
    (int64 (num,), in the order drawn)."""
    check_correction(strength, "strength")
    if num > len(ratio):
        raise ValueError(f"cannot keep {num} of {len(ratio)} candidates")
    weights = ratio.double().pow(strength)
    return torch.multinomial(weights, num, replacement=False, generator=generator)


def effective_fraction(ratio: torch.Tensor, strength: float) -> float:
    """Kish's effective sample size of the weights, as a fraction of the candidates (1: uniform weights)."""
    w = ratio.double().pow(strength)
    return float(w.sum() ** 2 / (w * w).sum() / len(w))
