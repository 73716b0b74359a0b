"""How well does a trained GLO generator fit images it never saw? Invert MNIST test and training images.

    python bench/inversion.py --run outputs/mnist_cpu/<time> --mnist-root ../shared/data \
        --weights ../shared/models/inception-2015-12-05-fid-weights-no-classifier.pth \
        --stats ../shared/models/mnist_test_inception_stats.npz --num 2000

``--num`` random test images and ``--num`` random training images (seeded) are inverted with
``GlannSampler.invert`` at ``glann-invert``'s defaults (mapper start, 100 Adam steps, lr 0.05, batch 256) and the
stage-1 loss recorded in the sampler folder. For each set the table gives the mean stage-1 loss, the FID of the
reconstructions against the MNIST test-set Inception statistics (``--stats``) and the inversion's seconds per
1,000 images (Inception time not included). Two reference rows: the training images decoded from their own GLO
codes (what stage 1 reached for them; no optimisation) and the FID of the original training images themselves
(the floor at this sample count: FID at 2,000 images is biased upward, compare only rows of one table).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from glann import artifacts
from glann.config import DataConfig
from glann.data import conform_images, load_dataset
from glann.images import to_float, to_uint8
from glann.metrics import InceptionFeatures, frechet_distance, load_stats, stats
from glann.sampler import GlannSampler


def pick(num_images: int, num: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(num_images)[:num])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="a glann-train run folder (sampler/ and glo/)")
    ap.add_argument("--mnist-root", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--stats", required=True, help="reference Inception statistics (.npz with mu, sigma)")
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    sampler = GlannSampler.from_pretrained(args.run / "sampler")
    latents = artifacts.load_tensors(args.run / "glo" / "latents.safetensors")["latents"]
    run_cfg = OmegaConf.load(args.run / ".hydra" / "config.yaml")  # the training set as the run loaded it
    train = load_dataset(DataConfig(name="mnist", root=args.mnist_root, split="train", limit=run_cfg.data.limit),
                         seed=run_cfg.seed).images
    test = load_dataset(DataConfig(name="mnist", root=args.mnist_root, split="test"), seed=args.seed).images
    if len(latents) != len(train):
        raise SystemExit(f"{args.run}/glo has {len(latents)} latents, its MNIST training set {len(train)} images: "
                         "this bench needs a run trained on MNIST (e.g. experiment=mnist_cpu)")
    train_idx, test_idx = pick(len(train), args.num, args.seed), pick(len(test), args.num, args.seed + 1)
    ext = InceptionFeatures(args.weights)
    ref = load_stats(args.stats)

    def fid(images: np.ndarray) -> float:
        return frechet_distance(*stats(ext(images, progress=True, desc="inception")), *ref)

    rows = []
    for name, images in (("test images, inverted", test[test_idx]), ("training images, inverted", train[train_idx])):
        t0 = time.perf_counter()
        res = sampler.invert(images, steps=args.steps, seed=args.seed, progress=True)
        seconds = time.perf_counter() - t0
        rows.append((name, res.losses.mean().item(), fid(to_uint8(res.reconstructions)),
                     1000 * seconds / len(images)))
    own = sampler.decode(latents[torch.from_numpy(train_idx)])
    c, size, _ = sampler.image_shape
    conformed = to_float(conform_images(train[train_idx], c, size), channels_last=False)
    loss_fn = sampler.loss_fn()
    with torch.no_grad():
        own_loss = torch.cat([loss_fn(own[s:s + 256], conformed[s:s + 256])
                              for s in range(0, len(own), 256)]).mean().item()
    rows.append(("training images, their own GLO codes", own_loss, fid(to_uint8(own)), float("nan")))
    rows.append(("training images themselves (FID floor)", float("nan"), fid(train[train_idx]), float("nan")))
    print(f"\n{args.num} images per row, {args.steps} steps, seed {args.seed}, run {args.run}\n")
    print("| images | mean stage-1 loss | reconstruction FID | s / 1000 images |\n|---|---|---|---|")
    for name, loss, f, s in rows:
        print(f"| {name} | {'–' if np.isnan(loss) else f'{loss:.4f}'} | {f:.2f} | "
              f"{'–' if np.isnan(s) else f'{s:.0f}'} |")


if __name__ == "__main__":
    main()
