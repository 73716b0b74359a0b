"""Stacked-MNIST mode coverage (VEEGAN / PacGAN protocol): three MNIST digits as the three channels give
1000 modes; each channel of a sample is read by an MNIST classifier that glann trains once and caches.

Reported: modes covered (of 1000) and KL(sample mode histogram || uniform).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from glann import artifacts
from glann.images import to_float

log = logging.getLogger(__name__)

NUM_MODES = 1000


class MnistClassifier(nn.Module):
    """A small CNN (~99% test accuracy after two CPU epochs)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(images: np.ndarray, labels: np.ndarray, epochs: int = 2, seed: int = 0,
                     batch_size: int = 128) -> MnistClassifier:
    """Train on uint8 (N, 1, 28, 28) MNIST images."""
    torch.manual_seed(seed)
    model = MnistClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all = to_float(images, channels_last=False)
    y_all = torch.from_numpy(np.asarray(labels)).long()
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="mnist classifier", unit="epoch", leave=False):
        perm = torch.randperm(len(x_all), generator=g)
        for s in range(0, len(perm), batch_size):
            b = perm[s:s + batch_size]
            loss = F.cross_entropy(model(x_all[b]), y_all[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict_digits(model, images) == np.asarray(labels)).mean())


@torch.no_grad()
def predict_digits(model: nn.Module, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    x = to_float(images, channels_last=False)
    return torch.cat([model(x[s:s + batch_size]).argmax(1) for s in range(0, len(x), batch_size)]).numpy()


def cached_classifier(mnist_root: str, cache_dir: str | None = None) -> MnistClassifier:
    """Load the cached classifier, or train it on MNIST under ``mnist_root`` and cache it (safetensors)."""
    cache = Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "glann"
    path = cache / "mnist_classifier.safetensors"
    model = MnistClassifier()
    if path.is_file():
        model.load_state_dict(artifacts.load_tensors(path))
        return model.eval()
    import torchvision  # here: seconds to import (BENCHMARKS "App start-up")

    train = torchvision.datasets.MNIST(mnist_root, train=True, download=False)
    model = train_classifier(train.data.numpy()[:, None], train.targets.numpy())
    test = torchvision.datasets.MNIST(mnist_root, train=False, download=False)
    acc = accuracy(model, test.data.numpy()[:, None], test.targets.numpy())
    log.info("MNIST classifier: test accuracy %.4f, cached at %s", acc, path)
    artifacts.save_tensors(path, model.state_dict())
    return model


def mode_ids(images: np.ndarray, classify: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """uint8 (N, 3, 28, 28) stacked digits -> mode ids 100*d0 + 10*d1 + d2."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"stacked MNIST samples must be (N, 3, H, W), got {images.shape}")
    digits = [classify(images[:, c:c + 1]) for c in range(3)]
    return 100 * digits[0] + 10 * digits[1] + digits[2]


def mode_stats(ids: np.ndarray) -> dict:
    """Modes covered and KL(p || uniform over 1000 modes) of a set of mode ids, and that KL split in two exact parts:
    ``modes/kl_channels``, the sum over the three channels of KL(channel's digit frequencies || uniform over 10), and
    ``modes/kl_dependence``, KL(p || product of the three channel frequencies). The first says the digit mix per
    channel is off (which digits, not which combinations); the second that the channels are not independent."""
    counts = np.bincount(np.asarray(ids), minlength=NUM_MODES).astype(np.float64)
    p = counts / counts.sum()
    nz = p > 0
    kl = float(np.sum(p[nz] * np.log(p[nz] * NUM_MODES)))
    joint = p.reshape(10, 10, 10)
    marginals = [joint.sum(axis=tuple(a for a in range(3) if a != c)) for c in range(3)]
    kl_channels = float(sum(np.sum(m[m > 0] * np.log(m[m > 0] * 10)) for m in marginals))
    product = np.einsum("i,j,k->ijk", *marginals).reshape(-1)
    kl_dependence = float(np.sum(p[nz] * np.log(p[nz] / product[nz])))
    return {"modes/covered": int(nz.sum()), "modes/kl_uniform": kl, "modes/kl_channels": kl_channels,
            "modes/kl_dependence": kl_dependence, "modes/num_samples": int(counts.sum())}
