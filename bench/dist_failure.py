"""What happens to a torchrun group when one rank fails: run under torchrun, one mode per run.

    torchrun --standalone --nproc_per_node=2 bench/dist_failure.py MODE OUT_DIR

Both ranks run a loop of gloo all-reduces (a stand-in for training steps), write ``OUT_DIR/rank{r}.pid`` and,
when they stop cleanly, ``OUT_DIR/rank{r}.saved``. Modes (rank 1 misbehaves after ~2 s):

- ``crash``:   rank 1 raises an exception (exit 1).
- ``kill``:    rank 1 SIGKILLs itself (no Python cleanup at all).
- ``hang``:    rank 1 stops calling collectives (sleeps until SIGTERM); rank 0's next all-reduce meets the
               process group's timeout (``GLANN_DIST_TIMEOUT_S``, default 5 s here), then torchrun SIGTERMs rank 1.
- ``sigterm``: run without a mode-specific fault: the caller sends SIGTERM to one rank (its pid file) or to
               torchrun. Ranks poll ``glann.distributed.any_rank(stop)`` each step, so every rank saves and
               exits 143.

``tests/test_distributed.py`` (slow tier) drives it; BENCHMARKS.md / the report describe what was seen.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch


def main() -> int:
    mode, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    from glann import distributed as gd
    from glann.runtime import StopFlag

    world = gd.init_world("cpu", timeout_s=float(os.environ.get("GLANN_DIST_TIMEOUT_S", "5")))
    (out / f"rank{world.rank}.pid").write_text(str(os.getpid()))
    t0 = time.monotonic()
    step = 0
    with StopFlag() as stop:
        while time.monotonic() - t0 < 60:
            if world.rank == 1 and time.monotonic() - t0 > 2:
                if mode == "crash":
                    raise RuntimeError("rank 1 crashed on purpose")
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if mode == "hang":  # stuck outside collectives, but it still honours torchrun's SIGTERM
                    while not stop:
                        time.sleep(0.1)
                    return 143
            x = torch.ones(1000)
            torch.distributed.all_reduce(x)
            step += 1
            if gd.any_rank(bool(stop)):
                (out / f"rank{world.rank}.saved").write_text(f"step {step}\n")
                print(f"rank {world.rank}: stop agreed at step {step}; saved, exit 143", flush=True)
                return 143
            time.sleep(0.01)
    gd.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
