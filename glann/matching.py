"""IMLE selection rules: which generated sample each data point is pulled towards in a round.

Each rule is a function of the round's generated samples ``G`` (M, d), the data latents ``X`` (N, d) and,
for ``adaptive``, a small state carried from round to round. All searches are exact (L2):

- ``nearest``: every data point takes its nearest generated sample (Li & Malik 2018; glann's default).
- ``rejection`` (RS-IMLE, Vashist, Peng & Li, ECCV 2024): first discard every generated sample that lies
  within ``eps`` of *any* data point (its nearest data point is closer than ``eps``), then each data point takes
  its nearest remaining sample. The public RS-IMLE code only looks among each data point's ``knn_ignore``
  nearest samples (approximate, DCI); here the test is exact: one 1-NN search of the samples over the data.
  The remaining set is shared by all data points, so a data point lacks a sample only when every sample was
  rejected. The paper's code then keeps each point's previous latent (its "not closer than inf" update never
  fires); glann instead stops with :class:`AllRejected`, naming ``imle.rejection_eps``, as the issue asks.
  ``quantile`` (``imle.rejection_quantile``, glann's addition) sets the radius each round to the q-quantile of
  the samples' distances to the data: a schedule that shrinks with the mapper instead of a fixed ``eps``.
- ``adaptive`` (Adaptive IMLE, Aghabozorgi, Peng & Li, ICML 2023): data point ``i`` keeps the noise it was
  matched to until the mapper has pulled that sample within its radius ``tau_i`` (``d_i < tau_i``, ``d_i`` the
  distance from ``x_i`` to the mapper's current output for that noise), or until ``resample_every`` rounds have
  passed since its last match. It is then re-matched to its nearest fresh sample and ``tau_i = (1 - gamma) *
  d_i``, as in the authors' code (``change_thresholds[to_update] = selected_dists[to_update] * (1 -
  change_coef)``). The first round matches every point and sets ``tau_i = (1 - gamma) * d_i`` from its match.

- ``capacity`` (glann's; measured on MNIST in BENCHMARKS.md): like ``nearest``, but a generated sample serves at
  most ``capacity`` data points per round. Points take turns in ascending order of their nearest-sample distance;
  each takes the nearest of its ``k`` nearest samples that still has room, and a point whose ``k`` candidates are
  all full takes its nearest sample anyway (counted as ``overflow_frac``). Under ``nearest`` a tight cluster of
  data points shares few samples, so the mapper gives it less noise mass than its share of the data (on MNIST the
  plain "1"s); with ``capacity=1`` every point pulls its own sample. The greedy pass is a Python loop over the
  points (about 0.1 s for 60k points, small next to the search).

Searches run through faiss on CPU tensors (glann.knn, exact flat index) and through a chunked exact torch
search for CUDA tensors when faiss has no GPU support. Adaptive state is a dict of tensors, so it fits a
training checkpoint loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from glann.config import check_count, check_eps, check_gamma, check_interval, check_mode, check_quantile
from glann.errors import ArtifactError, ConfigError
from glann.knn import _check_knn_inputs, _torch_nn, faiss_gpu_available, nearest_neighbors, search_k

STATE_KEYS = ("tau", "last_match", "noise")


class AllRejected(ConfigError):
    """``rejection`` discarded every generated sample: ``imle.rejection_eps`` is too large for this model."""


@dataclass
class MatchResult:
    """One round's selection.

    index: (N,) int64, the generated sample each data point was matched to this round; -1 where it was not
      re-matched (``adaptive``: it keeps its previous noise).
    distance: (N,) float32, the distance from each data point to the sample it trains on this round.
    noise: (N, noise_dim) float32, the noise each data point trains on (None when no noise was passed).
    stats: per-round figures for logging (see each rule).
    """
    index: torch.Tensor
    distance: torch.Tensor
    noise: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)


# ---------------------------------------------------------------- config checks (each names imle.<key>)

# ---------------------------------------------------------------- exact search

def search(database: torch.Tensor, queries: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact 1-NN of each query row among ``database`` rows (L2): (index int64 (Q,), distance float32 (Q,)), CPU.

    ``backend``: "faiss" (glann.knn: flat index, GPU when faiss has one), "torch" (chunked matmul on the
    tensors' device), or "auto": faiss, except torch for CUDA tensors when faiss has no GPU support.
    """
    _check_knn_inputs(database, queries, backend)
    on_cuda = database.is_cuda or queries.is_cuda
    if backend == "torch" or (backend == "auto" and on_cuda and not faiss_gpu_available()):
        return _torch_nn(database, queries, str(database.device), 8192)
    return nearest_neighbors(database, queries, device="cuda" if on_cuda else "cpu")


def _dist_stats(dist: torch.Tensor) -> dict:
    d = dist[torch.isfinite(dist)]
    return {"nn_dist": d.mean().item() if len(d) else float("nan"),
            "nn_dist_max": d.max().item() if len(d) else float("nan")}


def _take(noise: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if noise is None else noise.detach().cpu().float()[idx]


# ---------------------------------------------------------------- the rules

def nearest(generated: torch.Tensor, data: torch.Tensor, noise: torch.Tensor | None = None,
            backend: str = "auto") -> MatchResult:
    """Each data point's exact nearest generated sample. Stats: nn_dist (mean), nn_dist_max."""
    idx, dist = search(generated, data, backend)
    return MatchResult(idx, dist, _take(noise, idx), _dist_stats(dist))


def rejection(generated: torch.Tensor, data: torch.Tensor, eps: float | None, noise: torch.Tensor | None = None,
              backend: str = "auto", quantile: float | None = None) -> MatchResult:
    """RS-IMLE: drop samples within ``eps`` of any data point, then match each point to its nearest survivor.

    A sample is rejected when the distance to its nearest data point is < ``eps`` (strict, as the authors'
    ``dci_dists < eps_radius``). With ``quantile`` q the round's radius is the q-quantile of those distances (so
    about a fraction q of the samples is rejected, whatever the mapper's scale: a radius that shrinks as the samples
    close in on the data), or ``eps`` where that is larger (``eps`` may then be None). Raises :class:`AllRejected`
    (a ConfigError naming ``imle.rejection_eps``) when no sample survives. Stats: nn_dist, nn_dist_max,
    rejected_frac, samples_kept, unmatched (data points left without a sample; 0 whenever a sample survives, since
    the survivors serve every point), eps (the radius used).
    """
    if quantile is None or eps is not None:
        eps = check_eps(eps)
    _, to_data = search(data, generated, backend)  # each sample's distance to its nearest data point
    if quantile is not None:
        radius = torch.quantile(to_data.double(), check_quantile(quantile)).item()
        eps = radius if eps is None else max(eps, radius)
    assert eps is not None  # check_eps or the quantile set it
    kept = torch.nonzero(to_data >= eps).squeeze(1)
    rejected = 1.0 - len(kept) / max(len(generated), 1)
    if len(kept) == 0:
        raise AllRejected(f"imle.rejection_eps={eps:g} rejects all {len(generated)} generated samples (each lies "
                          f"within eps of a data point; the closest is {to_data.max().item():.4g} from its nearest "
                          f"one): lower imle.rejection_eps")
    sub, dist = search(generated[kept.to(generated.device)], data, backend)
    idx = kept[sub]
    stats = {**_dist_stats(dist), "rejected_frac": rejected, "samples_kept": float(len(kept)), "unmatched": 0.0,
             "eps": float(eps)}
    return MatchResult(idx, dist, _take(noise, idx), stats)


def capacity(generated: torch.Tensor, data: torch.Tensor, cap: int = 1, k: int = 16,
             noise: torch.Tensor | None = None, backend: str = "auto") -> MatchResult:
    """Nearest matching where one generated sample serves at most ``cap`` data points (greedy, see the module
    docstring). Stats: nn_dist, nn_dist_max (of the samples taken), overflow_frac (points whose ``k`` candidates
    were all full: they share their nearest sample), distinct_frac (distinct samples taken / data points),
    mean_rank (0: every point took its nearest sample)."""
    cap = check_count(cap, "capacity", "data points one sample may serve per round")
    k = check_count(k, "capacity_k", "nearest samples each data point may take")
    cand, cand_dist = search_k(generated, data, k, backend)
    order = torch.argsort(cand_dist[:, 0], stable=True).tolist()
    rows = cand.tolist()
    load = [0] * generated.shape[0]
    index = [0] * len(rows)
    rank = [0] * len(rows)
    overflow = 0
    for p in order:
        row = rows[p]
        j = next((j for j, sample in enumerate(row) if load[sample] < cap), -1)
        if j < 0:  # every candidate is full: share the nearest
            j = 0
            overflow += 1
        sample = row[j]
        load[sample] += 1
        index[p], rank[p] = sample, j
    idx = torch.tensor(index, dtype=torch.int64)
    pick = torch.tensor(rank, dtype=torch.int64)
    dist = cand_dist.gather(1, pick[:, None]).squeeze(1)
    n = max(len(rows), 1)
    stats = {**_dist_stats(dist), "overflow_frac": overflow / n, "distinct_frac": len(set(index)) / n,
             "mean_rank": pick.float().mean().item() if len(rows) else 0.0}
    return MatchResult(idx, dist, _take(noise, idx), stats)


def init_state() -> dict:
    """An empty adaptive state: the first round matches every data point."""
    return {}


def check_state(state: dict, num_data: int, noise_dim: int, path: Any = "the training state") -> None:
    """Refuse an adaptive state that does not fit this data set or noise size (ArtifactError)."""
    if not state:
        return
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise ArtifactError(f"{path}: adaptive matching state lacks {missing}; it was written by another "
                            "imle.matching mode or glann version")
    shapes = {"tau": (num_data,), "last_match": (num_data,), "noise": (num_data, noise_dim)}
    for key, shape in shapes.items():
        if tuple(state[key].shape) != shape:
            raise ArtifactError(f"{path}: adaptive state {key} has shape {tuple(state[key].shape)}, this run needs "
                                f"{shape} ({num_data} data points, imle.noise_dim={noise_dim})")


def adaptive(generated: torch.Tensor, data: torch.Tensor, noise: torch.Tensor, state: dict, rnd: int,
             gamma: float, resample_every: int, current: torch.Tensor | None = None,
             backend: str = "auto") -> tuple[MatchResult, dict]:
    """Adaptive IMLE: re-match a data point only once its sample came within ``tau_i`` or went stale.

    generated (M, d) and noise (M, k): this round's fresh samples and the noise that made them.
    state: the previous round's state (``{}`` in the first round): tau (N,), last_match (N,) int64 (the round
      of each point's last match), noise (N, k) (the noise each point is matched to).
    current (N, d): the mapper's output, under the current weights, for ``state["noise"]``; required once
      the state is non-empty. ``rnd``: this round's number (0-based, strictly increasing).
    Returns the selection (``index`` -1 where a point keeps its previous noise) and the new state (fresh
    tensors; the old state is not modified). Stats: nn_dist, nn_dist_max, rematched_frac, threshold_frac
    (re-matched because d_i < tau_i), forced_frac (only because of the interval), tau_mean, tau_median,
    tau_min (after the update).
    """
    gamma, resample_every = check_gamma(gamma), check_interval(resample_every)
    n = data.shape[0]
    if noise.shape[0] != generated.shape[0]:
        raise ValueError(f"noise has {noise.shape[0]} rows for {generated.shape[0]} generated samples")
    noise = noise.detach().cpu().float()
    if state:
        check_state(state, n, noise.shape[1])
        if current is None or tuple(current.shape) != tuple(data.shape):
            raise ValueError(f"adaptive needs current={tuple(data.shape)}: the mapper's outputs for state['noise']")
        d_cur = (current.detach().float().cpu() - data.detach().float().cpu()).norm(dim=1)
        age = rnd - state["last_match"]
        if (age < 1).any():
            raise ValueError(f"round {rnd} is not after the state's last match (round {state['last_match'].max()})")
        by_threshold = d_cur < state["tau"]
        forced = (age >= resample_every) & ~by_threshold
        due = by_threshold | forced
        tau, last, held = state["tau"].clone(), state["last_match"].clone(), state["noise"].clone()
    else:
        d_cur = None
        by_threshold = forced = torch.zeros(n, dtype=torch.bool)
        due = torch.ones(n, dtype=torch.bool)
        tau = torch.full((n,), math.inf)
        last = torch.zeros(n, dtype=torch.int64)
        held = torch.zeros(n, noise.shape[1])
    rows = torch.nonzero(due).squeeze(1)
    index = torch.full((n,), -1, dtype=torch.int64)
    distance = d_cur.clone() if d_cur is not None else torch.full((n,), math.inf)
    if len(rows):
        idx, dist = search(generated, data[rows.to(data.device)], backend)
        index[rows] = idx
        distance[rows] = dist
        held[rows] = noise[idx]
        last[rows] = rnd
        tau[rows] = (1.0 - gamma) * (d_cur[rows] if d_cur is not None else dist)
    stats = {**_dist_stats(distance), "rematched_frac": due.float().mean().item(),
             "threshold_frac": by_threshold.float().mean().item(), "forced_frac": forced.float().mean().item(),
             "tau_mean": tau.mean().item(), "tau_median": tau.median().item(), "tau_min": tau.min().item()}
    new_state = {"tau": tau.float(), "last_match": last, "noise": held.float()}
    return MatchResult(index, distance.float(), held.clone(), stats), new_state


def select(mode: str, generated: torch.Tensor, data: torch.Tensor, noise: torch.Tensor, *, state: dict | None = None,
           rnd: int = 0, current: torch.Tensor | None = None, eps: float | None = None, gamma: float = 0.04,
           resample_every: int = 10, backend: str = "auto", quantile: float | None = None, cap: int = 1,
           k: int = 16) -> tuple[MatchResult, dict]:
    """Dispatch one round to ``mode``'s rule; returns (selection, state). Only ``adaptive`` carries state."""
    check_mode(mode)
    if mode == "nearest":
        return nearest(generated, data, noise, backend), {}
    if mode == "capacity":
        return capacity(generated, data, cap, k, noise, backend), {}
    if mode == "rejection":
        return rejection(generated, data, eps, noise, backend, quantile), {}
    return adaptive(generated, data, noise, state or {}, rnd, gamma, resample_every, current, backend)
