"""A Gaussian mixture fitted to the GLO codes: the starting point of a mixture mapper (``imle.mapper.mixture``).

EM with full covariances, by scikit-learn's ``GaussianMixture`` (k-means initialisation, seeded), in float64. Fitting
K components to N codes of d dimensions costs about N * K * d^2 operations per EM iteration (60k 64-d MNIST codes,
K=400: 14 iterations, about 6 minutes on 2 CPU cores; BENCHMARKS.md "A Gaussian mixture under the mapper").
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from glann.errors import ConfigError

log = logging.getLogger(__name__)

REG_COVAR = 1e-5  # added to every covariance's diagonal: keeps components of a few nearly identical codes invertible


@dataclass
class Mixture:
    weights: torch.Tensor  # (K,) float64, summing to 1
    means: torch.Tensor  # (K, d) float64
    covariances: torch.Tensor  # (K, d, d) float64, positive definite
    iterations: int
    converged: bool
    seconds: float


def fit_mixture(codes: torch.Tensor, components: int, seed: int = 0, max_iter: int = 300) -> Mixture:
    """Fit a ``components``-component full-covariance Gaussian mixture to ``codes`` (N, d) by EM."""
    if components > len(codes):
        raise ConfigError(f"imle.mapper.mixture={components} components for {len(codes)} codes: use at most "
                          f"{len(codes)}")
    try:
        from sklearn.mixture import GaussianMixture
    except ImportError:  # a dependency of glann; only a broken environment lacks it
        raise ConfigError("imle.mapper.mixture needs scikit-learn: pip install scikit-learn") from None
    t0 = time.perf_counter()
    gm = GaussianMixture(components, covariance_type="full", reg_covar=REG_COVAR, max_iter=max_iter,
                         random_state=seed)
    gm.fit(codes.detach().cpu().double().numpy())
    seconds = time.perf_counter() - t0
    if not gm.converged_:
        log.warning("mixture: EM stopped after %d iterations without converging; the mixture is used as it is",
                    gm.n_iter_)
    return Mixture(torch.from_numpy(gm.weights_), torch.from_numpy(gm.means_), torch.from_numpy(gm.covariances_),
                   int(gm.n_iter_), bool(gm.converged_), seconds)
