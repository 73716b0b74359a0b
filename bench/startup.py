"""App start-up time of two checkouts of glann, run in alternation from one Python environment.

    python bench/startup.py --before /tmp/old_checkout --after . --sampler-dir outputs/<run>/sampler --repeats 5

Each repeat runs, for each checkout, ``python -m glann.train glo.epochs=many`` (it stops on the bad setting: pure
start-up) and ``python -m glann.sample num_samples=16`` on a trained sampler (start-up, one batch and a PNG grid),
with ``PYTHONPATH`` set to that checkout. Prints the mean wall-clock seconds and the after/before ratio.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], checkout: Path, expect_ok: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if (res.returncode == 0) != expect_ok:
        sys.exit(f"{' '.join(cmd)} in {checkout}: exit {res.returncode}\n{res.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="checkout of the earlier commit")
    ap.add_argument("--after", type=Path, default=Path("."), help="checkout of the later commit")
    ap.add_argument("--sampler-dir", type=Path, required=True, help="a trained sampler folder")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    sampler_dir = args.sampler_dir.resolve()
    train_row, sample_row = "bad-config glann-train", "glann-sample, 16 images"
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, checkout in (("before", args.before.resolve()), ("after", args.after.resolve())):
                out = Path(tmp) / f"{name}{r}"
                train = [sys.executable, "-m", "glann.train", "glo.epochs=many", f"hydra.run.dir={out}/train"]
                sample = [sys.executable, "-m", "glann.sample", f"sampler_dir={sampler_dir}", "num_samples=16",
                          f"output={out}/s.npz", f"hydra.run.dir={out}/sample"]
                times.setdefault((train_row, name), []).append(timed(train, checkout, False))
                times.setdefault((sample_row, name), []).append(timed(sample, checkout, True))
    print("| command | before (s) | after (s) | after / before |\n|---|---|---|---|")
    for what in (train_row, sample_row):
        before = sum(times[what, "before"]) / args.repeats
        after = sum(times[what, "after"]) / args.repeats
        print(f"| {what} | {before:.2f} | {after:.2f} | {after / before:.2f} |")


if __name__ == "__main__":
    main()
