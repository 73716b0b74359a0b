"""Exact nearest-neighbour search for IMLE matching: faiss (CPU or GPU), with an exact torch fallback."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

logging.getLogger("faiss.loader").setLevel(logging.WARNING)
try:
    import faiss
except ImportError:  # pragma: no cover - faiss is a hard dependency; the fallback keeps tools usable
    faiss = None  # type: ignore[assignment]


def faiss_gpu_available() -> bool:
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def nearest_neighbors(database: torch.Tensor, queries: torch.Tensor, device: str = "auto",
                      chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row, the index of its exact nearest database row (L2) and the distance.

    Returns (indices int64 (Q,), distances float32 (Q,)) on the CPU. Uses a faiss flat index (GPU when
    ``device`` allows it and faiss has GPU support), else a chunked exact torch search.
    """
    if database.ndim != 2 or queries.ndim != 2 or database.shape[1] != queries.shape[1]:
        raise ValueError(f"need 2-D arrays of equal width, got {tuple(database.shape)} and {tuple(queries.shape)}")
    if database.shape[0] == 0:
        raise ValueError("empty database")
    want_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if faiss is not None:
        db = np.ascontiguousarray(database.detach().cpu().numpy(), dtype=np.float32)
        q = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)
        index: Any = faiss.IndexFlatL2(db.shape[1])
        on_gpu = want_gpu and faiss_gpu_available()
        if on_gpu:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        index.add(db)
        dist2, idx = index.search(q, 1) if on_gpu else search_cpu(index, q)
        return torch.from_numpy(idx[:, 0].astype(np.int64)), torch.from_numpy(np.sqrt(np.maximum(dist2[:, 0], 0)))
    return _torch_nn(database, queries, "cuda" if want_gpu and torch.cuda.is_available() else "cpu", chunk)


def search_cpu(index, q: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-1 search on the CPU: query chunks spread over threads, one single-threaded faiss call each.

    faiss's own multi-threaded search meets an OpenMP barrier twice per 4096x1024 distance tile. On a shared
    2-vCPU machine, one slowed vCPU stalls the other at every barrier: the 60k x 120k x 64 IMLE search swung
    between 6.8 s and 13 s that way, while chunks pulled from a queue by threads that never wait on each other
    took 6.1-6.4 s throughout (bench/speed.py, BENCHMARKS.md). faiss releases the GIL while it searches.
    """
    threads = threads or faiss.omp_get_max_threads()
    # faiss (1.15) takes its scalar, non-BLAS path when rows x dim < distance_compute_blas_threshold, which
    # is 5x slower here: keep every chunk above it.
    target = max(2048, -(-faiss.cvar.distance_compute_blas_threshold // q.shape[1]))
    n_chunks = q.shape[0] // target // threads * threads  # equal shares for the threads
    if threads <= 1 or n_chunks < threads:
        return index.search(q, 1)
    chunk = -(-q.shape[0] // n_chunks)
    dist = np.empty((q.shape[0], 1), dtype=np.float32)
    idx = np.empty((q.shape[0], 1), dtype=np.int64)

    def search(start: int) -> None:
        faiss.omp_set_num_threads(1)  # OpenMP's thread count is per calling thread: this leaves the caller's
        d, i = index.search(q[start:start + chunk], 1)
        dist[start:start + chunk], idx[start:start + chunk] = d, i

    with ThreadPoolExecutor(threads, thread_name_prefix="glann-knn") as pool:
        for f in [pool.submit(search, s) for s in range(0, q.shape[0], chunk)]:
            f.result()
    return dist, idx


def _torch_nn(database: torch.Tensor, queries: torch.Tensor, device: str, chunk: int):
    db = database.to(device, torch.float32)
    db_sq = (db * db).sum(1)
    idx_out, dist_out = [], []
    for start in range(0, queries.shape[0], chunk):
        q = queries[start:start + chunk].to(device, torch.float32)
        d2 = (q * q).sum(1, keepdim=True) - 2 * q @ db.T + db_sq
        best, arg = d2.min(1)
        idx_out.append(arg.cpu())
        dist_out.append(best.clamp_min(0).sqrt().cpu())
    return torch.cat(idx_out), torch.cat(dist_out)
