"""Where a Stacked-MNIST model's mode KL comes from: samples (at each density-correction strength) against the
generator's reconstructions of the training codes.

    GLANN_DATA_ROOT=../shared/data python bench/stacked_modes.py --run outputs/stacked_mnist_cpu/<time> \
        --strengths 0 0.5 --num 26000

One finished ``data=stacked_mnist`` run folder (``<run>/glo`` and ``<run>/sampler``). Each row reads ``--num`` images
channel by channel with glann's cached MNIST classifier, as ``glann-eval eval.metrics=[modes]`` does, and splits
KL(modes || uniform) into the per-channel digit mix (``kl_channels``) and the channels' dependence
(``kl_dependence``; :func:`glann.modes.mode_stats`). The "reconstructions" row decodes the first ``--num`` training
codes: what the generator gives when stage 2 is perfect. Per-channel digit frequencies are printed below the table.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from density_correction import parse_run_args  # bench/ is on the path when run as python bench/stacked_modes.py

from glann.images import to_uint8
from glann.modes import cached_classifier, mode_stats, predict_digits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="a finished stacked_mnist run (with glo/ and sampler/)")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--num", type=int, default=26000)
    ap.add_argument("--mnist-root", default=os.environ.get("GLANN_DATA_ROOT"),
                    help="MNIST root for the classifier (default: $GLANN_DATA_ROOT)")
    ap.add_argument("--cache", default=None, help="classifier cache folder (default: glann's)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args, sampler = parse_run_args(ap)
    codes = sampler.reference
    assert codes is not None
    classifier = cached_classifier(args.mnist_root, args.cache)

    rows: list[tuple[str, np.ndarray]] = [("reconstructions", to_uint8(sampler.decode(codes[:args.num])))]
    rows += [(f"samples, correction {s:g}", sampler(args.num, seed=0, correction=s).images) for s in args.strengths]
    print(f"\n{args.num} images per row, run {args.run}\n")
    print("| images | modes covered | KL to uniform | per-channel digit mix | channel dependence |\n"
          "|---|---|---|---|---|")
    mixes = []
    for name, images in rows:  # uint8 (N, H, W, 3)
        digits = np.stack([predict_digits(classifier, np.ascontiguousarray(images[..., c:c + 1].transpose(0, 3, 1, 2)))
                           for c in range(3)], 1)
        st = mode_stats(100 * digits[:, 0] + 10 * digits[:, 1] + digits[:, 2])
        print(f"| {name} | {st['modes/covered']} | {st['modes/kl_uniform']:.4f} | {st['modes/kl_channels']:.4f} | "
              f"{st['modes/kl_dependence']:.4f} |", flush=True)
        mixes.append((name, [np.bincount(digits[:, c], minlength=10) / len(digits) for c in range(3)]))
    print("\ndigit frequencies per channel (digits 0-9):")
    for name, per_channel in mixes:
        for c, f in enumerate(per_channel):
            print(f"  {name}, channel {c}: " + " ".join(f"{x:.3f}" for x in f))


if __name__ == "__main__":
    main()
