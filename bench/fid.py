"""FID of a trained sampler, or of saved samples, against reference Inception statistics (.npz: mu, sigma).

    python bench/fid.py --sampler outputs/mnist_cpu/<time>/sampler --num 10000 \
        --stats ../shared/models/mnist_test_inception_stats.npz \
        --weights ../shared/models/inception-2015-12-05-fid-weights-no-classifier.pth

``--images FILE.npz`` scores saved uint8 samples (N x H x W x C under ``images``, as glann-sample and
bench/reference_recipe.py write them) instead of a sampler. Prints a one-row table; --save-features keeps the
sample features (.npy) for later metrics.
"""
import argparse
import time

import numpy as np
import torch

from glann.metrics import InceptionFeatures, frechet_distance, load_stats, stats
from glann.sampler import GlannSampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--sampler")
    src.add_argument("--images", help=".npz with uint8 images (N, H, W, C) under 'images'")
    ap.add_argument("--num", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stats", required=True)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--save-features", default=None)
    args = ap.parse_args()
    if args.sampler:
        sampler = GlannSampler.from_pretrained(args.sampler)
        images = sampler(args.num, seed=args.seed, output_type="np").images
    else:
        with np.load(args.images) as f:
            images = f["images"]
        if len(images) < args.num:
            raise SystemExit(f"{args.images} holds {len(images)} images, fewer than --num {args.num}")
        images = images[:args.num]
    t0 = time.perf_counter()
    feats = InceptionFeatures(args.weights)(images)
    dt = time.perf_counter() - t0
    if args.save_features:
        np.save(args.save_features, feats)
    fid = frechet_distance(*stats(feats), *load_stats(args.stats))
    print(f"| sampler | N | FID | inception img/s |\n|---|---|---|---|\n"
          f"| {args.sampler or args.images} | {args.num} | {fid:.2f} | {args.num / dt:.1f} |")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
