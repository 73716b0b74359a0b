"""Shared training plumbing: devices, seeding, RNG state capture, SIGTERM handling, stats, lr schedule."""
from __future__ import annotations

import contextlib
import json
import logging
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch import nn

from glann.files import atomic_write

log = logging.getLogger(__name__)
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def adam(params, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam with the fused kernel (one pass over each parameter, no temporaries), where the device has one.

    On CPU the default multi-tensor Adam allocates several parameter-sized temporaries per step: for the
    GLO generator's 6.4M-weight layer that was ~20% of a training step.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except RuntimeError:  # a device without a fused Adam kernel
        return torch.optim.Adam(params, lr=lr, betas=betas)


def step_decay(base_lr: float, decay: float, every: int, unit: int) -> float:
    """The learning rate in epoch/round ``unit`` (0-based): ``base_lr`` times ``decay`` once per ``every`` units
    (``every`` = 0: constant). With ``decay`` a power of two it equals ``torch.optim.lr_scheduler.StepLR`` bit for
    bit."""
    return base_lr * decay ** (unit // every) if every else base_lr


@dataclass(frozen=True)
class Accel:
    """How a stage's network runs its training steps: autocast ``precision`` (fp32 | bf16 | fp16), the
    ``channels_last`` memory format and ``torch.compile``. The defaults run exactly the plain fp32 step."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The forward pass's context: nothing for fp32, else ``torch.autocast`` to bf16/fp16 on ``device``."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        """A loss scaler for fp16 (its gradients underflow without one); None otherwise."""
        return torch.amp.GradScaler(device.type) if self.precision == "fp16" else None

    def memory_format(self, net: ModuleT) -> ModuleT:
        """``net`` with its weights in channels_last when asked (in place; before DDP wraps it)."""
        return net.to(memory_format=torch.channels_last) if self.channels_last else net

    def compiled(self, net: nn.Module) -> nn.Module:
        """What the training steps call: ``net``, or ``torch.compile(net)`` (the same parameters)."""
        return cast(nn.Module, torch.compile(net)) if self.compile else net


class Preempted(Exception):
    """SIGTERM/SIGINT arrived; the stage saved its state and stopped. Re-run to resume."""


class StopFlag:
    """Turns SIGTERM (what SLURM sends on preemption) into a flag the training loops poll."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM,):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        log.warning("received signal %d: saving a checkpoint and stopping", signum)
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __bool__(self) -> bool:
        return self.signum is not None


NO_STOP = StopFlag()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    np_state = cast(tuple, np.random.get_state())  # the legacy (tuple) form
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                             "numpy": {"key": np_state[0], "state": torch.from_numpy(np_state[1].astype(np.int64)),
                                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                                       "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Stats:
    """Appends one JSON line per log step to ``stats.jsonl`` (flushed, so a crash loses nothing)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def rewind(self, key: str, upto: int) -> None:
        """Keep only complete rows with ``row[key] <= upto``: on resume, drop rows logged after the checkpoint
        and any line a kill cut short."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get(key, 0) <= upto:
                keep.append(line)
        data = "".join(f"{line}\n" for line in keep)
        atomic_write(self.path, lambda p: p.write_text(data))

    def write(self, **row: Any) -> None:
        row = {"time": round(time.time(), 3), **row}
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
            f.flush()


class CheckpointTimer:
    """True when ``minutes`` have passed since the last reset."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60.0
        self.reset()

    def reset(self) -> None:
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.seconds
