"""Where a Stacked-MNIST model's mode KL comes from: samples (at each density-correction strength) against the
generator's reconstructions of the training codes, and against training codes moved by noise.

    GLANN_DATA_ROOT=../shared/data python bench/stacked_modes.py --run outputs/stacked_mnist_cpu/<time> \
        --strengths 0 0.5 --sigmas 0.05 0.09 --near-copies --num 26000

One finished ``data=stacked_mnist`` run folder (``<run>/glo`` and ``<run>/sampler``). Each row reads ``--num`` images
channel by channel with glann's cached MNIST classifier, as ``glann-eval eval.metrics=[modes]`` does, and splits
KL(modes || uniform) into the per-channel digit mix (``kl_channels``) and the channels' dependence
(``kl_dependence``; :func:`glann.modes.mode_stats`). Rows:

- ``reconstructions``: the first ``--num`` training codes decoded, what the generator gives when stage 2 is perfect;
- ``training codes + noise σ``: the same codes plus isotropic Gaussian noise of std σ per coordinate, back on the unit
  sphere (a Gaussian kernel density estimate of the codes, sampled): how far from its codes the generator still
  decodes the right digits;
- ``samples, correction s``: the sampler's images at that density-correction strength (seed 0).

``distance``: the mean distance from a row's codes to the nearest training code. With
``--near-copies``, each row also gets glann-eval's memorization figure: the share of images closer (pixel L2) to a
training image than 99% of ``--num`` held-out Stacked-MNIST test images are (:func:`glann.evaluate.memorization`).
Per-channel digit frequencies are printed below the table.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from density_correction import parse_run_args  # bench/ is on the path when run as python bench/stacked_modes.py

from glann.config import DataConfig
from glann.data import load_dataset
from glann.evaluate import memorization
from glann.images import to_uint8
from glann.knn import search_k
from glann.modes import cached_classifier, mode_stats, predict_digits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="a finished stacked_mnist run (with glo/ and sampler/)")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--sigmas", type=float, nargs="*", default=[], help="noise stds for moved training codes")
    ap.add_argument("--near-copies", action="store_true", help="add glann-eval's near-copy share to each row")
    ap.add_argument("--num", type=int, default=26000)
    ap.add_argument("--seed", type=int, default=0, help="seed of the samples and of the noise on the codes")
    ap.add_argument("--mnist-root", default=os.environ.get("GLANN_DATA_ROOT"),
                    help="MNIST root for the classifier (default: $GLANN_DATA_ROOT)")
    ap.add_argument("--cache", default=None, help="classifier cache folder (default: glann's)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args, sampler = parse_run_args(ap)
    codes = sampler.reference
    assert codes is not None
    classifier = cached_classifier(args.mnist_root, args.cache)
    if args.near_copies:
        train = load_dataset(DataConfig(name="stacked_mnist", root=args.mnist_root, split="train"))
        test = load_dataset(DataConfig(name="stacked_mnist", root=args.mnist_root, split="test",
                                       num_stacked=args.num))

    def nearest(z: torch.Tensor) -> float:
        return float(search_k(codes, z, 1)[1][:, 0].mean())

    base = codes[:args.num].float()
    g = torch.Generator().manual_seed(args.seed)

    def rows():  # (name, uint8 images (N, H, W, 3), mean distance of their codes to the nearest training code)
        yield "reconstructions", to_uint8(sampler.decode(base)), 0.0
        for sigma in args.sigmas:
            moved = F.normalize(base + sigma * torch.randn(base.shape, generator=g), dim=1)
            yield f"training codes + noise σ={sigma:g}", to_uint8(sampler.decode(moved)), nearest(moved)
        for s in args.strengths:  # at the sampler's default temperature, as sampler(n) draws
            out = sampler(args.num, seed=args.seed, correction=s)
            yield f"samples, correction {s:g}", out.images, nearest(out.latents)

    print(f"\n{args.num} images per row, run {args.run}\n")
    cols = "| images | distance | modes covered | KL to uniform | per-channel digit mix | channel dependence |"
    print(cols + (" near-copies |" if args.near_copies else "") + "\n" + "|---" * (7 if args.near_copies else 6) + "|")
    mixes = []
    for name, images, dist in rows():
        digits = np.stack([predict_digits(classifier, np.ascontiguousarray(images[..., c:c + 1].transpose(0, 3, 1, 2)))
                           for c in range(3)], 1)
        st = mode_stats(100 * digits[:, 0] + 10 * digits[:, 1] + digits[:, 2])
        line = (f"| {name} | {dist:.3f} | {st['modes/covered']} | "
                f"{st['modes/kl_uniform']:.4f} | {st['modes/kl_channels']:.4f} | {st['modes/kl_dependence']:.4f} |")
        if args.near_copies:
            with tempfile.TemporaryDirectory() as tmp:
                mem = memorization(images.transpose(0, 3, 1, 2), train, test, Path(tmp))
            line += f" {100 * mem['memorization/near_copy_fraction']:.2f}% |"
        print(line, flush=True)
        mixes.append((name, [np.bincount(digits[:, c], minlength=10) / len(digits) for c in range(3)]))
    print("\ndigit frequencies per channel (digits 0-9):")
    for name, per_channel in mixes:
        for c, f in enumerate(per_channel):
            print(f"  {name}, channel {c}: " + " ".join(f"{x:.3f}" for x in f))


if __name__ == "__main__":
    main()
