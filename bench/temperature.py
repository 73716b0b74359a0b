"""The sampling temperature as a precision–recall dial: FID, KID, precision and recall of one trained sampler
at several noise scales.

    python bench/temperature.py --sampler outputs/mnist_cpu/<time>/sampler --mnist-root ../shared/data \
        --weights ../shared/models/inception-2015-12-05-fid-weights-no-classifier.pth \
        --stats ../shared/models/mnist_test_inception_stats.npz --temperatures 0.6 0.8 0.9 1.0 1.2

Each temperature is one ``glann.evaluate.evaluate`` call, the same code and protocol as ``glann-eval`` (same seed,
so every row decodes the same noise, scaled): FID against ``--stats`` (the full MNIST test set), KID and
precision/recall (k=3) against ``--num-real`` MNIST test images, whose Inception features are computed once and cached
under ``--out``. Seconds per row are sampling plus Inception for the samples.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from glann.config import DataConfig, EvalOptions
from glann.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sampler", required=True, type=Path, help="a sampler folder (<run>/sampler)")
    ap.add_argument("--mnist-root", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--stats", required=True, help="reference Inception statistics for FID (.npz with mu, sigma)")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.6, 0.8, 0.9, 1.0, 1.2])
    ap.add_argument("--num", type=int, default=10000, help="samples per temperature")
    ap.add_argument("--num-real", type=int, default=10000, help="test images for KID and precision/recall")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_temperature"))
    args = ap.parse_args()

    data = DataConfig(name="mnist", root=args.mnist_root, split="test")
    rows = []
    for t in args.temperatures:
        opts = EvalOptions(metrics=["fid", "kid", "pr"], num_samples=args.num, num_real=args.num_real, seed=args.seed,
                           inception_weights=args.weights, fid_stats=args.stats,
                           cache_dir=str(args.out / "cache"), temperature=t)
        t0 = time.perf_counter()
        res = evaluate(args.sampler, data, opts, args.out / f"t{t:g}")
        rows.append((t, res, time.perf_counter() - t0))
    print(f"\n{args.num} samples per row, {args.num_real} test images, seed {args.seed}, sampler {args.sampler}\n")
    print("| temperature | FID | KID ×10³ | precision | recall | s |\n|---|---|---|---|---|---|")
    for t, r, s in rows:
        print(f"| {t:g} | {r['fid']:.2f} | {1e3 * r['kid']:.2f} ± {1e3 * r['kid_std']:.2f} | "
              f"{r['precision']:.3f} | {r['recall']:.3f} | {s:.0f} |")


if __name__ == "__main__":
    main()
