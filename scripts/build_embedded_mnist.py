"""Rebuild glann/assets/mnist_10k.npz: a class-balanced 10k subset of the MNIST training set.

    python scripts/build_embedded_mnist.py --root ../shared/data

The subset is what a bare ``glann-train`` trains on, so the README's main job runs offline.
"""
import argparse
from pathlib import Path

import numpy as np
import torchvision

ATTRIBUTION = (
    "MNIST subset (10,000 training images, 1,000 per class) from the MNIST database by "
    "Yann LeCun, Corinna Cortes and Christopher J.C. Burges, licensed CC BY-SA 3.0."
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default="../shared/data")
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "glann/assets/mnist_10k.npz"))
    args = ap.parse_args()
    ds = torchvision.datasets.MNIST(args.root, train=True, download=False)
    images, labels = ds.data.numpy(), ds.targets.numpy()
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), args.per_class, replace=False) for c in range(10)])
    idx = rng.permutation(idx)
    np.savez_compressed(args.out, images=images[idx], labels=labels[idx], source_index=idx.astype(np.int32),
                        attribution=np.array(ATTRIBUTION))
    print(f"wrote {args.out}: {len(idx)} images")


if __name__ == "__main__":
    main()
