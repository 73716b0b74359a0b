"""torch.distributed for glann: one process per device, launched by torchrun or by submitit (SLURM).

``init_world(device)`` reads the rank and world size that torchrun puts in the environment (RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or, inside a submitit job with several tasks, has
submitit's own ``TorchDistributedEnvironment`` export them, then starts the process group: NCCL for CUDA tensors
plus gloo for CPU tensors ("cuda:nccl,cpu:gloo") on GPUs, gloo on CPUs. World size 1 is the same code path with no
process group: every helper here then returns at once and makes no distributed call.

The helpers (``is_main``, ``barrier``, ``broadcast_object``, ``all_gather_tensor``, ``all_reduce_mean``,
``any_rank``) act on the world the last ``init_world`` started, so call sites never ask for ranks themselves.

Failure handling: torchrun ends the whole group when one rank exits non-zero (it sends SIGTERM to the other
workers, then SIGKILL after its grace period); a rank blocked in a collective with a dead peer gets an error from
gloo at once, and every collective is bounded by the process group's finite ``timeout_s`` in any case.
``any_rank(stop)`` lets all ranks agree to stop (SIGTERM on one rank) at the same step, so all of them save.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist

from glann.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 1800.0  # torch's own default for gloo; long enough for rank 0 to write a checkpoint
BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class World:
    """Where this process sits: its rank among ``world_size`` processes, its rank on this node, the
    torch.distributed backend (None without a process group) and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    launcher: str = "none"  # torchrun | submitit | env (RANK/WORLD_SIZE set by hand) | none

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_WORLD: World | None = None
_START: datetime.datetime | None = None


def current_world() -> World:
    """The world the last ``init_world`` call set up. Before any call: rank and world size as the environment
    gives them (RANK, WORLD_SIZE; no process group, nothing started), so that rank 1 of a torchrun job never takes
    itself for rank 0; a single process outside torchrun is rank 0 of 1."""
    if _WORLD is not None:
        return _WORLD
    return World(rank=int(os.environ.get("RANK", "0")), world_size=int(os.environ.get("WORLD_SIZE", "1")))


def _env_world() -> tuple[int, int, int, int, str]:
    """(rank, world_size, local_rank, local_world_size, launcher) from the environment.

    torchrun sets RANK/WORLD_SIZE itself; inside a submitit job with several tasks, submitit's helper exports the
    same variables from its job environment (SLURM's variables are never parsed here).
    """
    launcher = "none"
    if os.environ.get("SUBMITIT_EXECUTOR") and "RANK" not in os.environ:
        import submitit  # the `slurm` extra (hydra-submitit-launcher) brings it

        if submitit.JobEnvironment().num_tasks > 1:
            # Keep CUDA_VISIBLE_DEVICES as SLURM set it: the rank picks cuda:LOCAL_RANK itself (_rank_device).
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        launcher = ("torchrun" if "TORCHELASTIC_RUN_ID" in os.environ
                    else "submitit" if os.environ.get("SUBMITIT_EXECUTOR") else "env")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return rank, world_size, local_rank, local_world_size, launcher


def _ranks_setting(launcher: str) -> str:
    return "hydra.launcher.tasks_per_node" if launcher == "submitit" else "torchrun --nproc_per_node"


def _rank_device(device: str, local_rank: int, local_world_size: int, world_size: int, launcher: str) -> torch.device:
    """The device this rank computes on: with several ranks on CUDA, rank r of a node uses cuda:r."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ConfigError(f"device={device} but torch sees no CUDA GPU; use device=cpu or device=auto")
    if world_size == 1:
        return dev
    if dev.index is not None:
        raise ConfigError(f"device={device} pins one GPU, but {world_size} ranks need one GPU each; use device=cuda "
                          "(rank r of a node then uses cuda:r)")
    n_gpus = torch.cuda.device_count()
    if local_world_size <= n_gpus:
        return torch.device("cuda", local_rank)
    if launcher == "submitit" and n_gpus == 1:
        return torch.device("cuda", 0)  # SLURM bound one GPU to each task
    raise ConfigError(f"{_ranks_setting(launcher)}={local_world_size} is more than the {n_gpus} GPU(s) visible on "
                      f"this node; use at most {n_gpus} ranks per node, or device=cpu")


def init_world(device: str = "auto", backend: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Set up this process's place in the run from the launcher's environment and return it.

    ``device``: auto | cpu | cuda (several ranks on CUDA: rank r of a node uses cuda:r). ``backend``: auto (NCCL
    for CUDA tensors plus gloo for CPU ones on a CUDA device, gloo on the CPU) | gloo | nccl (CUDA only).
    ``timeout_s`` bounds every collective, so a rank never waits forever on a peer that hangs.
    With world size 1 no process group is started. Later calls reuse a process group that already exists (for
    example one ``run_stamp`` started before Hydra ran); its backend and timeout are then the first call's.
    """
    global _WORLD
    if backend not in BACKENDS:
        raise ConfigError(f"dist_backend={backend!r} is not one of {', '.join(BACKENDS)}")
    rank, world_size, local_rank, local_world_size, launcher = _env_world()
    dev = _rank_device(device, local_rank, local_world_size, world_size, launcher)
    if backend == "nccl" and dev.type != "cuda":
        raise ConfigError(f"dist_backend=nccl needs CUDA, but this rank runs on {dev}; use dist_backend=gloo or auto")
    if world_size == 1:
        _WORLD = World(device=dev, launcher=launcher)
        return _WORLD
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        _start_group(dev.type == "cuda" and backend != "gloo", timeout_s)
    log.info("distributed: rank %d/%d (local %d/%d) on %s, backend %s, launcher %s", rank, world_size, local_rank,
             local_world_size, dev, dist.get_backend(), launcher)
    if dist.get_world_size() != world_size or dist.get_rank() != rank:  # pragma: no cover - a broken launcher
        raise RuntimeError(f"process group is rank {dist.get_rank()}/{dist.get_world_size()}, "
                           f"environment says {rank}/{world_size}")
    _WORLD = World(rank, world_size, local_rank, local_world_size, str(dist.get_backend()), dev, launcher)
    return _WORLD


def _start_group(nccl: bool, timeout_s: float) -> None:
    """The default process group from the env:// variables: NCCL for CUDA tensors plus gloo for CPU tensors, or
    gloo alone. NCCL's communicators are created at the first CUDA collective, so a combined group costs nothing
    until then (and the device is set by then: ``init_world``)."""
    dist.init_process_group("cuda:nccl,cpu:gloo" if nccl else "gloo", timeout=datetime.timedelta(seconds=timeout_s))


def check_ranks(world: World, n_images: int) -> None:
    """Every rank needs at least one image of every global batch: more ranks than images is an error."""
    if world.world_size > n_images:
        raise ConfigError(f"{world.world_size} ranks ({_ranks_setting(world.launcher)} x nodes) but the dataset has "
                          f"only {n_images} image(s); use at most {n_images} ranks")


def shard(n: int, world: World | None = None) -> slice:
    """This rank's part of ``n`` items (a global batch, the IMLE samples): ``n // world_size`` consecutive items
    for every rank, in rank order. The remainder (fewer than world_size items) is DROPPED, not padded.

    Why drop: equal shards are what make the N-rank step the global-batch step (DDP averages gradients with
    weight 1/N per rank, and the latent rows are all-gathered with equal sizes), and what keep ranks in step (no
    rank runs one extra collective). Padding would repeat items: a repeated image is counted twice in the step's
    mean and its latent row gets two gradients. The items come from a permutation drawn afresh each epoch, so
    the < N dropped images of an epoch's last batch are different ones every epoch; dropping < N of the m*n
    IMLE samples does not change matching.
    """
    world = world or current_world()
    k = n // world.world_size
    return slice(world.rank * k, (world.rank + 1) * k)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one place that asks whether to write files."""
    return current_world().is_main


def barrier() -> None:
    """Wait for every rank. A 1-element CPU all-reduce (gloo under both backends), so it needs no CUDA stream or
    device id and is bounded by the process group's timeout."""
    if _active():
        dist.all_reduce(torch.zeros(1))


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s picklable ``obj`` on every rank (through gloo, on the CPU)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=torch.device("cpu"))
    return box[0]


def _has_nccl() -> bool:
    return "nccl" in str(dist.get_backend()).lower()


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` concatenated along dim 0 in rank order (0-d tensors are stacked). All ranks must pass
    the same shape and dtype. CUDA tensors go through NCCL, CPU tensors through gloo; under a gloo-only group a
    CUDA tensor is staged through the host."""
    if not _active():
        return t
    stage = t.is_cuda and not _has_nccl()
    src = (t.cpu() if stage else t).contiguous()
    parts = [torch.empty_like(src) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, src)
    out = torch.stack(parts) if src.ndim == 0 else torch.cat(parts)
    return out.to(t.device) if stage else out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over ranks (a new tensor; ``t`` unchanged)."""
    if not _active():
        return t.clone()
    stage = t.is_cuda and not _has_nccl()
    out = (t.cpu() if stage else t).clone()
    dist.all_reduce(out)
    out /= dist.get_world_size()
    return out.to(t.device) if stage else out


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any rank: lets all ranks stop at the same step (a SIGTERM that reached
    one rank only), so every rank saves and none waits for a peer that left."""
    if not _active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def wrap_ddp(module: torch.nn.Module, world: World | None = None) -> torch.nn.Module:
    """``module`` under DistributedDataParallel when there are several ranks (its gradients are then averaged
    over ranks in backward); the module itself in a single process."""
    world = world or current_world()
    if not world.distributed:
        return module
    # Imported here: DistributedDataParallel pulls in torch._dynamo (seconds), which single-process runs never need.
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (what is saved), or the module itself."""
    inner = getattr(module, "module", None)
    if type(module).__name__ == "DistributedDataParallel" and isinstance(inner, torch.nn.Module):
        return inner
    return module


def run_stamp(fmt: str = "%Y-%m-%d_%H-%M-%S") -> str:
    """The run's start time formatted with ``fmt`` (strftime), identical on every rank: Hydra's ``${now:}`` is
    evaluated by each rank's own clock, which splits a torchrun job over several run folders.

    The first call, on every rank, fixes the start time: under torchrun (or a multi-task submitit job) it starts
    the process group from the environment (NCCL+gloo where torch sees CUDA, else gloo, with the default timeout;
    the device is not chosen here, so no GPU check runs before the config is known; a later ``init_world`` reuses
    the group) and takes rank 0's clock; in a single process it takes the local clock and makes no distributed
    call. Later calls make
    no collective at all (any number of them, with any format), so the function can sit behind an OmegaConf
    resolver that ranks may evaluate a different number of times, as long as every rank calls it once first,
    e.g. before ``hydra.main`` runs.
    """
    global _START
    if _START is None:
        start = datetime.datetime.now()
        multi = int(os.environ.get("WORLD_SIZE", "1")) > 1 or os.environ.get("SUBMITIT_EXECUTOR")
        if multi and _env_world()[1] > 1:
            if not dist.is_initialized():
                _start_group(torch.cuda.is_available(), DEFAULT_TIMEOUT_S)
            start = broadcast_object(start)
        _START = start
    return _START.strftime(fmt)


def destroy() -> None:
    """Shut the process group down (at the end of a run; no-op without one)."""
    global _WORLD
    if _active():
        dist.destroy_process_group()
    _WORLD = None
