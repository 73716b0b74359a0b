"""Density correction on MNIST: FID, KID, precision, recall and the digit mix at several correction strengths.

    GLANN_DATA_ROOT=../shared/data python bench/density_correction.py --run outputs/mnist_cpu/<time> \
        --weights ../shared/models/inception-2015-12-05-fid-weights-no-classifier.pth \
        --stats ../shared/models/mnist_test_inception_stats.npz --strengths 0 0.5 --num 10000 --num-real 10000 \
        [--candidates 6 12]

One finished run folder (``<run>/glo`` and ``<run>/sampler``). Its sampler is rebuilt with the run's GLO codes as
reference codes (so folders exported before glann saved them work too), then each strength (at strengths > 0, once per
``--candidates`` count of codes per image) draws ``--num`` samples with seed 0, as ``glann-eval`` does, scored like
``glann-eval`` scores them: FID against ``--stats``, KID and precision/recall (k=3) against ``--num-real`` MNIST test
images (features computed once and cached under ``--out``). The digit columns read the samples with glann's MNIST
classifier: the share of "1"s and KL(sample digit frequencies || training-set frequencies). Strength 0 is the
uncorrected sampler; its images are those of a plain ``glann-eval``.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from glann import resample
from glann.artifacts import load_tensors
from glann.config import DataConfig, EvalOptions
from glann.data import load_dataset
from glann.evaluate import reference_features
from glann.metrics import InceptionFeatures, frechet_distance, kid, load_stats, precision_recall, stats
from glann.modes import cached_classifier, predict_digits
from glann.sampler import GlannSampler


def run_sampler(run: Path) -> GlannSampler:
    """The sampler of a finished run folder with the run's GLO codes as its reference codes (so that folders exported
    before glann saved them can be corrected too)."""
    plain = GlannSampler.from_pretrained(run / "sampler")
    codes = load_tensors(run / "glo" / "latents.safetensors")["latents"]
    return GlannSampler(plain.mapper, plain.generator, reference=codes)


def parse_run_args(ap: argparse.ArgumentParser) -> tuple[argparse.Namespace, GlannSampler]:
    """Parse the arguments of a bench that reads one run with MNIST (``--run``, ``--mnist-root``, ``--threads``):
    (arguments, :func:`run_sampler` of ``--run``), torch's thread count set."""
    args = ap.parse_args()
    if not args.mnist_root:
        ap.error("give --mnist-root or set GLANN_DATA_ROOT")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, run_sampler(args.run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="a finished run folder (with glo/ and sampler/)")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--stats", required=True, help="reference Inception statistics for FID (.npz with mu, sigma)")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--candidates", type=int, nargs="+", default=[resample.DEFAULT_CANDIDATES],
                    help="codes drawn per image at strengths > 0 (a row per count)")
    ap.add_argument("--num", type=int, default=10000)
    ap.add_argument("--num-real", type=int, default=10000)
    ap.add_argument("--mnist-root", default=os.environ.get("GLANN_DATA_ROOT"),
                    help="MNIST root (default: $GLANN_DATA_ROOT)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_density_correction"))
    args, sampler = parse_run_args(ap)

    opts = EvalOptions(metrics=["fid", "kid", "pr"], num_samples=args.num, num_real=args.num_real, seed=0,
                       inception_weights=args.weights, fid_stats=args.stats, cache_dir=str(args.out / "cache"))
    extractor = InceptionFeatures(args.weights)
    real = reference_features(load_dataset(DataConfig(name="mnist", root=args.mnist_root, split="test")), extractor,
                              opts)
    mu, sigma = load_stats(args.stats)
    classifier = cached_classifier(args.mnist_root, str(args.out / "cache"))
    q = np.bincount(torchvision.datasets.MNIST(args.mnist_root, train=True).targets.numpy(), minlength=10)
    q = q / q.sum()

    print(f"\n{args.num} samples (seed 0), {args.num_real} test images, run {args.run}\n")
    print(f"| correction | candidates | FID | KID ×10³ | precision | recall | \"1\"s (data {q[1]:.1%}) | digit KL | "
          "sampling s | scoring s |\n|---|---|---|---|---|---|---|---|---|---|")
    for strength, candidates in [(s, c) for s in args.strengths for c in (args.candidates if s > 0 else [None])]:
        t0 = time.perf_counter()
        images = sampler(args.num, seed=0, correction=strength, candidates=candidates).images  # uint8 (N, H, W, 1)
        t1 = time.perf_counter()
        p = np.bincount(predict_digits(classifier, images.transpose(0, 3, 1, 2)), minlength=10) / len(images)
        nz = p > 0
        feats = extractor(images, progress=False)
        m, c = stats(feats)
        k_mean, k_std = kid(feats, real)
        prec, rec = precision_recall(real, feats)
        print(f"| {strength:g} | {candidates or '–'} | {frechet_distance(m, c, mu, sigma):.2f} | "
              f"{1e3 * k_mean:.2f} ± {1e3 * k_std:.2f} | {prec:.3f} | {rec:.3f} | {100 * p[1]:.1f}% | "
              f"{np.sum(p[nz] * np.log(p[nz] / q[nz])):.3f} | "
              f"{t1 - t0:.0f} | {time.perf_counter() - t1:.0f} |", flush=True)


if __name__ == "__main__":
    main()
