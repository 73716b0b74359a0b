"""How much FID a wrong digit mix costs by itself: real MNIST test images, resampled to a sampler's digit mix.

    GLANN_DATA_ROOT=../shared/data python bench/digit_mix_fid.py --features /tmp/bm/cache/mnist_<key>.npy \
        --stats ../shared/models/mnist_test_inception_stats.npz --classifier-cache /tmp/bm/cache \
        --sampler nearest=/tmp/bm/nearest/sampler --sampler rejection=/tmp/bm/rejection_quantile0.5/sampler

``--features``: the cached Inception features of ``--num-real`` test images that ``glann-eval`` (and
bench/matching.py) wrote with ``eval.num_real``/``eval.seed``; the images are the same seeded pick
(glann.evaluate.reference_index), so their labels are known. Each row draws ``--subset`` of those real images,
without replacement, with the digit frequencies of the training set (the "data" row) or of a sampler's samples
(read by glann's MNIST classifier), ``--draws`` times, and scores FID against ``--stats``. The rows differ in the
digit mix alone: every image is real, so the gap to the data row is what the mix costs.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", required=True, type=Path)
    ap.add_argument("--stats", required=True)
    ap.add_argument("--sampler", action="append", default=[], help="name=sampler_dir; repeat")
    ap.add_argument("--mnist-root", default=os.environ.get("GLANN_DATA_ROOT", "data"))
    ap.add_argument("--classifier-cache", default=None, help="folder of mnist_classifier.safetensors")
    ap.add_argument("--num-real", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0, help="eval.seed the features were computed with")
    ap.add_argument("--num-samples", type=int, default=2000, help="samples drawn to read a sampler's digit mix")
    ap.add_argument("--subset", type=int, default=700)
    ap.add_argument("--draws", type=int, default=5)
    args = ap.parse_args()

    import torchvision

    from glann.config import EvalOptions
    from glann.evaluate import reference_index
    from glann.metrics import frechet_distance, stats
    from glann.modes import cached_classifier, predict_digits
    from glann.sampler import GlannSampler

    feats = np.load(args.features)
    test = torchvision.datasets.MNIST(args.mnist_root, train=False)
    idx = reference_index(len(test), EvalOptions(num_real=args.num_real, seed=args.seed))
    if len(idx) != len(feats):
        raise SystemExit(f"--features has {len(feats)} rows, --num-real {args.num_real} picks {len(idx)}")
    labels = test.targets.numpy()[idx]
    ref = np.load(args.stats)
    train = np.bincount(torchvision.datasets.MNIST(args.mnist_root, train=True).targets.numpy(), minlength=10)
    mixes = {"data (training-set mix)": train / train.sum()}
    if args.sampler:
        classifier = cached_classifier(args.mnist_root, args.classifier_cache)
        for item in args.sampler:
            name, path = item.split("=", 1)
            images = GlannSampler.from_pretrained(path)(args.num_samples, seed=0).images
            digits = predict_digits(classifier, images.transpose(0, 3, 1, 2))
            mixes[name] = np.bincount(digits, minlength=10) / len(digits)

    by_digit = [np.flatnonzero(labels == d) for d in range(10)]
    print(f"| digit mix | \"1\"s | FID of {args.subset} real test images (mean ± std of {args.draws}) |\n|---|---|---|")
    for name, mix in mixes.items():
        counts = np.floor(mix * args.subset).astype(int)
        counts[np.argsort(mix * args.subset - counts)[::-1][:args.subset - counts.sum()]] += 1  # largest remainders
        if np.any(counts > [len(b) for b in by_digit]):
            raise SystemExit(f"{name}: needs more real images of some digit than --num-real holds; lower --subset")
        rng = np.random.default_rng(0)
        fids = []
        for _ in range(args.draws):
            pick = np.concatenate([rng.choice(by_digit[d], counts[d], replace=False) for d in range(10)])
            mu, sigma = stats(feats[pick])
            fids.append(frechet_distance(mu, sigma, ref["mu"], ref["sigma"]))
        print(f"| {name} | {mix[1]:.1%} | {np.mean(fids):.2f} ± {np.std(fids):.2f} |")


if __name__ == "__main__":
    main()
