"""Crash-safety check: SIGKILL a real ``glann-train`` at random moments, re-run the same command until it
completes, then verify every artifact of the run loads and is complete.

    python bench/kill_test.py --trials 20 [--seed 0] [--max-delay 8]

Each trial uses a fresh run folder (and stage cache) with a small MNIST-subset config whose checkpoints are
written many times a second, so kills land during saves too. Prints one table row per trial and a summary.
"""
import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARGS = ["data.limit=512", "glo.epochs=12", "glo.batch_size=32", "glo.generator.hidden_dim=128",
        "glo.generator.base_channels=16", "imle.rounds=8", "imle.epochs_per_round=2", "sampler.grid_size=16",
        "device=cpu"]


def verify(run_dir: Path) -> list[str]:
    """Problems found in a finished run folder (empty list: every artifact is valid)."""
    import torch

    from glann import artifacts
    from glann.sampler import GlannSampler

    problems = []
    for stage in ("glo", "imle"):
        try:
            manifest = artifacts.read_json(run_dir / stage / "manifest.json")
            assert manifest["config_hash"], "empty config hash"
            artifacts.load_state(run_dir / stage / "state" / "last.pt")
            for line in (run_dir / stage / "stats.jsonl").read_text().splitlines():
                json.loads(line)
        except Exception as e:  # noqa: BLE001 - report everything
            problems.append(f"{stage}: {type(e).__name__}: {e}")
    try:
        z = artifacts.load_tensors(run_dir / "glo" / "latents.safetensors")["latents"]
        assert torch.isfinite(z).all(), "non-finite latents"
        images = GlannSampler.from_pretrained(run_dir / "sampler")(4, seed=0).images
        assert images.shape[0] == 4
        json.loads((run_dir / "results.json").read_text())
    except Exception as e:  # noqa: BLE001
        problems.append(f"sampler: {type(e).__name__}: {e}")
    leftovers = [str(p) for p in run_dir.rglob(".*.tmp")]
    if leftovers:
        problems.append(f"temp files left: {leftovers[:3]}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-delay", type=float, default=8.0, help="kill after U(0.5, max) seconds")
    ap.add_argument("--kills", type=int, default=3, help="kills per trial before the final uninterrupted run")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="glann_kill_"))
    print("| trial | kills | re-runs to finish | problems |\n|---|---|---|---|")
    completed = corrupt = 0
    for trial in range(args.trials):
        run_dir = root / f"t{trial}"
        cmd = [sys.executable, "-m", "glann.train", *ARGS, f"hydra.run.dir={run_dir}",
               f"cache_dir={run_dir / 'cache'}", f"seed={trial}"]
        kills = 0
        for _ in range(args.kills):
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                proc.wait(timeout=rng.uniform(0.5, args.max_delay))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                kills += 1
        reruns, ok = 0, False
        while reruns < 5 and not ok:
            reruns += 1
            res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            ok = res.returncode == 0
        problems = verify(run_dir) if ok else [f"did not finish: {res.stderr.strip().splitlines()[-1:]}"]
        completed += ok
        corrupt += bool(problems) and ok
        print(f"| {trial} | {kills} | {reruns} | {'; '.join(problems) or 'none'} |", flush=True)
    print(f"\ntrials: {args.trials}, completed: {completed}, runs with corrupt/invalid artifacts: {corrupt}")
    shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if completed == args.trials and corrupt == 0 else 1)


if __name__ == "__main__":
    t0 = time.time()
    main()
