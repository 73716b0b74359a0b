"""How far from its training codes does a GLO generator still decode digits? Where do the IMLE samples sit?

    python bench/latent_smoothness.py --run outputs/mnist_cpu/<time> --mnist-root ../shared/data \
        --weights ../shared/models/inception-2015-12-05-fid-weights-no-classifier.pth \
        --stats ../shared/models/mnist_test_inception_stats.npz --sigmas 0.03 0.06 0.09

One finished run folder (``<run>/glo`` and ``<run>/sampler``). Rows, each on ``--num`` codes decoded by the run's
generator and scored like ``glann-eval`` scores samples (FID against ``--stats``; precision and recall, k=3,
against ``--num-real`` MNIST test images, whose features are computed once and cached under ``--out``):

- ``samples``: the sampler's own codes (noise -> IMLE mapper), i.e. its samples;
- ``training codes``: ``--num`` random training latents (the reconstruction ceiling);
- ``training codes + noise σ``: the same latents plus isotropic Gaussian noise of std σ per coordinate, put back on
  the unit sphere; the column ``distance`` is the mean distance the noise moved them;
- ``samples nearest the data, q``: ``--num``/q sampler codes drawn, the ``--num`` of them nearest a training code kept
  (a latent-space filter, as a truncation would be); ``distance`` is their mean distance to the nearest training code.

The first lines give the mean distance from a training code to its nearest other training code, and from a
sample's code to its nearest training code: how far the mapper's codes sit from the data, against how far a
generator still decodes well.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from glann.artifacts import load_tensors
from glann.config import DataConfig, EvalOptions
from glann.data import load_dataset
from glann.evaluate import reference_features
from glann.images import to_uint8
from glann.metrics import InceptionFeatures, frechet_distance, load_stats, precision_recall, stats
from glann.sampler import GlannSampler


def nearest_distance(queries: torch.Tensor, base: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    d = torch.cdist(queries, base)
    if exclude is not None:
        d[torch.arange(len(queries)), exclude] = float("inf")
    return d.min(1).values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="a finished run folder (with glo/ and sampler/)")
    ap.add_argument("--mnist-root", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--stats", required=True, help="reference Inception statistics for FID (.npz with mu, sigma)")
    ap.add_argument("--sigmas", type=float, nargs="*", default=[0.03, 0.06, 0.09])
    ap.add_argument("--keep-nearest", type=float, nargs="*", default=[],
                    help="fractions q of sampler codes to keep, nearest a training code first")
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--num-real", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_latent_smoothness"))
    args = ap.parse_args()

    sampler = GlannSampler.from_pretrained(args.run / "sampler")
    latents = load_tensors(args.run / "glo" / "latents.safetensors")["latents"].float()
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(latents), generator=g)[:args.num]
    codes = latents[idx]
    with torch.no_grad():
        sample_codes = sampler.mapper(sampler.noise(args.num, seed=args.seed).to(sampler.dtype))
    print(f"training code -> nearest other training code: mean {nearest_distance(codes, latents, idx).mean():.3f}")
    print(f"sample code -> nearest training code: mean {nearest_distance(sample_codes, latents).mean():.3f}")

    opts = EvalOptions(metrics=["fid", "pr"], num_samples=args.num, num_real=args.num_real, seed=args.seed,
                       inception_weights=args.weights, fid_stats=args.stats, cache_dir=str(args.out / "cache"))
    extractor = InceptionFeatures(args.weights)
    real = reference_features(load_dataset(DataConfig(name="mnist", root=args.mnist_root, split="test")), extractor,
                              opts)
    mu, sigma = load_stats(args.stats)

    rows = [("samples", sample_codes, float("nan")), ("training codes", codes, 0.0)]
    for s in args.sigmas:
        moved = F.normalize(codes + s * torch.randn(codes.shape, generator=g), dim=1)
        rows.append((f"training codes + noise σ={s:g}", moved, (moved - codes).norm(dim=1).mean().item()))
    for q in args.keep_nearest:
        if not 0 < q <= 1:
            ap.error(f"--keep-nearest takes fractions in (0, 1], got {q}")
        with torch.no_grad():
            drawn = sampler.mapper(sampler.noise(int(round(args.num / q)), seed=args.seed).to(sampler.dtype))
        dist_all = nearest_distance(drawn, latents)
        keep = torch.argsort(dist_all)[:args.num]
        rows.append((f"samples nearest the data, q={q:g}", drawn[keep], dist_all[keep].mean().item()))
    print(f"\n{args.num} codes per row, {args.num_real} test images, seed {args.seed}, run {args.run}\n")
    print("| codes | distance | FID | precision | recall | s |\n|---|---|---|---|---|---|")
    for name, z, dist in rows:
        t0 = time.perf_counter()
        feats = extractor(to_uint8(sampler.decode(z)), progress=False)
        m, c = stats(feats)
        p, r = precision_recall(real, feats)
        shown = "–" if np.isnan(dist) else f"{dist:.3f}"
        print(f"| {name} | {shown} | {frechet_distance(m, c, mu, sigma):.2f} | {p:.3f} | {r:.3f} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
