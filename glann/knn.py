"""Exact nearest-neighbour search for IMLE matching: faiss (CPU or GPU), with an exact torch fallback."""
from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from glann import distributed as gd
from glann.distributed import World
from glann.errors import ConfigError

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
    ``device`` allows it and faiss has GPU support), else a chunked exact torch search. CUDA inputs stay on the GPU
    (results on the GPU too; see ``search_cuda``): never a round trip through the host or CPU faiss.
    """
    if database.ndim != 2 or queries.ndim != 2 or database.shape[1] != queries.shape[1]:
        raise ValueError(f"need 2-D arrays of equal width, got {tuple(database.shape)} and {tuple(queries.shape)}")
    if database.shape[0] == 0:
        raise ValueError("empty database")
    if database.is_cuda and queries.is_cuda:
        dist2, idx, backend = search_cuda(database, queries)
        log.debug("knn: %d x %d search on %s with %s", len(queries), len(database), database.device, backend)
        return idx, dist2.clamp_min(0).sqrt()
    want_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if faiss is not None:
        db = np.ascontiguousarray(database.detach().cpu().numpy(), dtype=np.float32)
        q = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)
        index: Any = faiss.IndexFlatL2(db.shape[1])
        on_gpu = want_gpu and faiss_gpu_available()
        if on_gpu:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        index.add(db)
        d2_np, idx_np = index.search(q, 1) if on_gpu else search_cpu(index, q)
        return (torch.from_numpy(idx_np[:, 0].astype(np.int64)),
                torch.from_numpy(np.sqrt(np.maximum(d2_np[:, 0], 0))))
    return _torch_nn(database, queries, "cuda" if want_gpu and torch.cuda.is_available() else "cpu", chunk)


def search_cpu(index, q: np.ndarray, threads: int | None = None, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` search on the CPU: query chunks spread over threads, one single-threaded faiss call each.

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
        return index.search(q, k)
    chunk = -(-q.shape[0] // n_chunks)
    dist = np.empty((q.shape[0], k), dtype=np.float32)
    idx = np.empty((q.shape[0], k), dtype=np.int64)

    def search(start: int) -> None:
        faiss.omp_set_num_threads(1)  # OpenMP's thread count is per calling thread: this leaves the caller's
        d, i = index.search(q[start:start + chunk], k)
        dist[start:start + chunk], idx[start:start + chunk] = d, i

    with ThreadPoolExecutor(threads, thread_name_prefix="glann-knn") as pool:
        for f in [pool.submit(search, s) for s in range(0, q.shape[0], chunk)]:
            f.result()
    return dist, idx


def _check_knn_inputs(database: torch.Tensor, queries: torch.Tensor, backend: str) -> None:
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
    if database.ndim != 2 or queries.ndim != 2 or database.shape[1] != queries.shape[1]:
        raise ValueError(f"need 2-D arrays of equal width, got {tuple(database.shape)} and {tuple(queries.shape)}")
    if database.shape[0] == 0:
        raise ValueError("empty database")


def search_k(database: torch.Tensor, queries: torch.Tensor, k: int,
             backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN of each query row among ``database`` rows (L2), nearest first: (index int64 (Q, k), distance
    float32 (Q, k)), on the CPU. ``k`` is capped at the database size. Backends as :func:`glann.matching.search`;
    the torch search runs on the tensors' device in query chunks of at most 2^28 distances."""
    _check_knn_inputs(database, queries, backend)
    k = min(k, database.shape[0])
    on_cuda = database.is_cuda or queries.is_cuda
    if backend == "torch" or faiss is None or (backend == "auto" and on_cuda):
        dev = database.device if database.is_cuda else queries.device
        db = database.to(dev, torch.float32)
        db_sq = (db * db).sum(1)
        rows = max(1, (1 << 28) // db.shape[0])
        idx_out, dist_out = [], []
        for s in range(0, queries.shape[0], rows):
            q = queries[s:s + rows].to(dev, torch.float32)
            d2 = torch.addmm(db_sq, q, db.T, alpha=-2.0) + (q * q).sum(1, keepdim=True)
            best, arg = d2.topk(k, dim=1, largest=False, sorted=True)
            idx_out.append(arg.cpu())
            dist_out.append(best.clamp_min(0).sqrt().cpu())
        return torch.cat(idx_out), torch.cat(dist_out)
    db_np = np.ascontiguousarray(database.detach().cpu().numpy(), dtype=np.float32)
    q_np = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)
    index = faiss.IndexFlatL2(db_np.shape[1])
    index.add(db_np)
    d2_np, idx_np = search_cpu(index, q_np, k=k)
    return torch.from_numpy(idx_np.astype(np.int64)), torch.from_numpy(np.sqrt(np.maximum(d2_np, 0)))


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


# --- CUDA search without a host round trip, and exact matching sharded over ranks -------------------------------

_GPU_RESOURCES: dict[int, object] = {}
_GPU_CHECKED: set[int] = set()


def faiss_has_gpu_build() -> bool:
    """The installed faiss is a GPU build (whether or not it can see a GPU)."""
    return faiss is not None and hasattr(faiss, "StandardGpuResources")


def knn_backend(device: torch.device | str) -> str:
    """Which exact search runs for tensors on ``device``: faiss-gpu | torch-cuda | faiss-cpu | torch-cpu."""
    if torch.device(device).type == "cuda":
        return "faiss-gpu" if faiss_has_gpu_build() else "torch-cuda"
    return "faiss-cpu" if faiss is not None else "torch-cpu"


@contextlib.contextmanager
def _ieee_fp32_matmul():
    """Full fp32 matmuls (no TF32) inside the block, whatever the process-wide setting is."""
    m = torch.backends.cuda.matmul
    if hasattr(m, "fp32_precision"):
        old = m.fp32_precision
        m.fp32_precision = "ieee"
        try:
            yield
        finally:
            m.fp32_precision = old
    else:  # pragma: no cover - torch < 2.9
        old = m.allow_tf32
        m.allow_tf32 = False
        try:
            yield
        finally:
            m.allow_tf32 = old


def torch_search_sq(database: torch.Tensor, queries: torch.Tensor,
                    max_bytes: int = 1 << 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-1 L2 search with torch on the inputs' device: (squared distances float32 (Q,), unclamped;
    indices int64 (Q,)), ties to the lowest index. Query chunks are sized so one chunk's distance block stays
    under ``max_bytes``; matmuls run in full fp32 (no TF32)."""
    db = database.float()
    db_sq = (db * db).sum(1)
    rows = max(1, max_bytes // (4 * db.shape[0]))
    d2_out, idx_out = [], []
    with _ieee_fp32_matmul():
        for s in range(0, queries.shape[0], rows):
            q = queries[s:s + rows].float()
            # |y|^2 - 2 q.y: the per-query |q|^2 does not change the argmin, so it is added to the minimum only
            best, arg = torch.addmm(db_sq, q, db.T, alpha=-2.0).min(1)  # min returns the first minimal index
            d2_out.append(best + (q * q).sum(1))
            idx_out.append(arg)
    return torch.cat(d2_out), torch.cat(idx_out)


def _gpu_resources(index: int):
    if index not in _GPU_RESOURCES:
        _GPU_RESOURCES[index] = faiss.StandardGpuResources()
    return _GPU_RESOURCES[index]


def _faiss_gpu_search_sq(database: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss.contrib.torch_utils  # (lets faiss.knn_gpu take CUDA torch tensors, on torch's stream)

    dev = database.device.index if database.device.index is not None else torch.cuda.current_device()
    res = _gpu_resources(dev)
    if dev not in _GPU_CHECKED:
        _check_faiss_gpu(res, dev)
    with torch.cuda.device(dev):
        d2, idx = faiss.knn_gpu(res, queries.float().contiguous(), database.float().contiguous(), 1, device=dev)
    return d2[:, 0], idx[:, 0]


def _check_faiss_gpu(res, dev: int) -> None:
    """One tiny search against torch's on first use: a faiss build without kernels for this GPU (e.g. no sm_90
    for an H100) fails here with one line instead of deep inside a run."""
    name = torch.cuda.get_device_name(dev)
    cc = "".join(map(str, torch.cuda.get_device_capability(dev)))
    hint = ("install a faiss GPU build with kernels for it (pip install 'glann[gpu]', see README) or faiss-cpu "
            "(glann then searches on the GPU with torch)")
    if faiss.get_num_gpus() == 0:
        raise ConfigError(f"faiss {faiss.__version__} is a GPU build but sees no GPU while torch sees {name} "
                          f"(sm_{cc}): its CUDA does not match this driver; {hint}")
    g = torch.Generator(device=f"cuda:{dev}").manual_seed(0)
    db = torch.randn(300, 16, device=f"cuda:{dev}", generator=g)
    q = torch.randn(50, 16, device=f"cuda:{dev}", generator=g)
    try:
        with torch.cuda.device(dev):
            _, idx = faiss.knn_gpu(res, q, db, 1, device=dev)
        torch.cuda.synchronize(dev)
    except Exception as e:  # noqa: BLE001 - faiss raises RuntimeError/AssertionError with CUDA's message
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ConfigError(f"faiss {faiss.__version__} GPU search failed on {name} (sm_{cc}): {msg}; {hint}") from None
    if not torch.equal(idx[:, 0], torch_search_sq(db, q)[1]):
        raise ConfigError(f"faiss {faiss.__version__} GPU search gives wrong neighbours on {name} (sm_{cc}); {hint}")
    _GPU_CHECKED.add(dev)


def search_cuda(database: torch.Tensor, queries: torch.Tensor,
                backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, str]:
    """Exact top-1 search of CUDA tensors on their GPU, no host round trip: (squared distances float32 (Q,),
    unclamped; indices int64 (Q,); the backend that ran).

    ``backend``: auto (faiss's GPU brute force through ``faiss.contrib.torch_utils`` when the installed faiss is
    a GPU build, else torch) | faiss | torch. Never CPU faiss. A faiss GPU build that cannot search on this GPU is
    a one-line ConfigError (checked once per device), not a silent fall back.
    """
    if not (database.is_cuda and queries.is_cuda):
        raise ValueError("search_cuda needs CUDA tensors")
    if backend not in ("auto", "faiss", "torch"):
        raise ConfigError(f"knn backend={backend!r} is not one of auto, faiss, torch")
    if backend == "faiss" or (backend == "auto" and faiss_has_gpu_build()):
        if not faiss_has_gpu_build():
            raise ConfigError("knn backend=faiss on CUDA needs a faiss GPU build (pip install 'glann[gpu]')")
        d2, idx = _faiss_gpu_search_sq(database, queries)
        return d2, idx, "faiss-gpu"
    d2, idx = torch_search_sq(database, queries)
    return d2, idx, "torch-cuda"


def search_sq(database: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Exact top-1 search on the inputs' device: (squared distances float32 (Q,), unclamped; indices int64 (Q,);
    backend), on that device. CPU: faiss's flat index (query chunks over threads), or torch without faiss."""
    if database.is_cuda and queries.is_cuda:
        return search_cuda(database, queries)
    if faiss is None:
        d2, idx = torch_search_sq(database, queries)
        return d2, idx, "torch-cpu"
    db = np.ascontiguousarray(database.detach().cpu().numpy(), dtype=np.float32)
    q = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)
    index = faiss.IndexFlatL2(db.shape[1])
    index.add(db)
    dist2, idx = search_cpu(index, q)
    return torch.from_numpy(dist2[:, 0]), torch.from_numpy(idx[:, 0].astype(np.int64)), "faiss-cpu"


def nearest_neighbors_distributed(generated_local: torch.Tensor, latents: torch.Tensor,
                                  world: World | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """IMLE matching with the generated samples sharded over ranks: for every data latent, its exact nearest
    sample among ALL ranks' samples. Returns (global sample indices int64 (n,), distances float32 (n,), backend),
    identical on every rank, on ``latents``' device.

    ``generated_local`` is this rank's consecutive share of the samples in global order (rank 0's first; sizes may
    differ); ``latents`` (the queries) are the same on every rank. Each rank searches all latents against its own
    samples, then one all-reduce(MIN) over a packed int64 key per latent -- the squared distance, clamped at 0
    (faiss's expansion |q|^2 - 2 q.y + |y|^2 can go slightly negative), as ordered float bits in the high 32 bits,
    the global sample index in the low 32 -- picks the smallest distance and, on ties, the lowest global index.

    Why samples sharded with a min-reduce rather than queries sharded with the samples all-gathered: each round
    moves 8 bytes per latent instead of every sample to every rank (2M samples x 64 floats = 512 MB per rank per
    round), the samples stay on the rank that made them, and no rank holds all of them; the compute is the same
    1/N share either way. A rank whose samples are its noise's mapping can take the matched noise from the full
    noise tensor that every rank draws from the round's seed, so nothing else moves.

    Exact = exhaustive, and the same neighbours as the single-process search over the concatenated samples: both
    compute each distance in float32, so the two can differ only where two samples are within float32 rounding of
    each other (~1e-6 relative), as faiss's own results do between thread counts; clamping makes candidates with
    negative squared distances tie at 0 (then the lowest index wins, where faiss alone takes the most negative).
    """
    world = world or gd.current_world()
    if generated_local.ndim != 2 or latents.ndim != 2 or generated_local.shape[1] != latents.shape[1]:
        raise ValueError(f"need 2-D arrays of equal width, got {tuple(generated_local.shape)} and "
                         f"{tuple(latents.shape)}")
    sizes = gd.all_gather_tensor(torch.tensor([generated_local.shape[0]], dtype=torch.int64))
    total = int(sizes.sum())
    if total == 0:
        raise ValueError("empty database")
    if total >= 2 ** 32:
        raise ValueError(f"{total} samples: the packed matching key holds indices below 2^32")
    offset = int(sizes[:world.rank].sum())
    if generated_local.shape[0]:
        d2, idx, backend = search_sq(generated_local, latents)
        d2, idx = d2.to(latents.device), idx.to(latents.device)
    else:  # this rank has no samples: it never wins
        d2 = torch.full((latents.shape[0],), float("inf"), device=latents.device)
        idx = torch.zeros(latents.shape[0], dtype=torch.int64, device=latents.device)
        backend = knn_backend(latents.device)
    bits = d2.float().clamp_min(0).contiguous().view(torch.int32).to(torch.int64)
    key = (bits << 32) | (idx + offset)
    if world.distributed:
        key = _all_reduce_min(key)
    best_idx = key & 0xFFFFFFFF
    best_d2 = (key >> 32).to(torch.int32).view(torch.float32)
    return best_idx, best_d2.sqrt(), backend


def _all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    stage = t.is_cuda and not gd._has_nccl()
    out = (t.cpu() if stage else t).clone()
    dist.all_reduce(out, op=dist.ReduceOp.MIN)
    return out.to(t.device) if stage else out
