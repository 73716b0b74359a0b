"""Reconstruction losses for GLO: Laplacian-pyramid L1 (GLO paper) and pixel + VGG16 features (GLANN).

Each loss maps (prediction, target), both (N, C, H, W) in [0, 1], to a per-sample loss of shape (N,).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from glann.errors import ConfigError

_BINOMIAL_5 = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def blur_downsample(x: torch.Tensor) -> torch.Tensor:
    """5x5 binomial blur (replicate padding) sampled at every second pixel: ``conv2d(pad(x), k)[..., ::2, ::2]``.

    The kernel is separable, so this is two 1-D passes that compute only the kept columns, then rows. On
    CPU a 1-channel conv2d and especially its backward are slow (the pyramid of a 28 px batch cost ~10%
    of a GLO step); strided slices and adds cost a few elementwise ops.
    """
    h, w = x.shape[-2:]
    p = F.pad(x, (2, 2, 2, 2), mode="replicate")
    p = cast(torch.Tensor, sum(c * p[..., :, k:k + w:2] for k, c in enumerate(_BINOMIAL_5)))
    return cast(torch.Tensor, sum(c * p[..., k:k + h:2, :] for k, c in enumerate(_BINOMIAL_5)))


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels L^0..L^{levels-2} plus the low-pass residual as the last entry."""
    pyramid, current = [], x
    for _ in range(levels - 1):
        if min(current.shape[-2:]) < 2:
            break
        down = blur_downsample(current)
        up = F.interpolate(down, size=current.shape[-2:], mode="bilinear", align_corners=False)
        pyramid.append(current - up)
        current = down
    pyramid.append(current)
    return pyramid


class Lap1Loss(nn.Module):
    """GLO's Lap1: sum over pyramid levels j of 2^{2j} * ||L^j(x) - L^j(x')||_1, divided by the number
    of pixels at level 0. Level j has 4^-j as many pixels, so this is the sum of per-level mean
    absolute differences (the weighting of Bojanowski et al. 2018)."""

    def __init__(self, levels: int = 4):
        super().__init__()
        self.levels = levels

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # The pyramid is linear, L(x) - L(x') = L(x - x'): one pyramid of the difference instead of two.
        loss = pred.new_zeros(pred.shape[0])
        for band in laplacian_pyramid(pred - target, self.levels):
            loss = loss + band.abs().flatten(1).mean(1)
        return loss


# VGG16 `features` indices of the ReLU closing each block.
_VGG16_BLOCK_END = {1: 3, 2: 8, 3: 15, 4: 22, 5: 29}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def load_vgg16_features(weights: str | None) -> nn.Sequential:
    """VGG16 conv trunk with ImageNet weights: from a local file, or torchvision's (downloaded/cached).

    Never falls back to random weights: a perceptual loss on random features is silently wrong.
    """
    import torchvision  # here: seconds to import (BENCHMARKS "App start-up")

    vgg = torchvision.models.vgg16(weights=None)
    how_to = ("Provide VGG16 ImageNet weights: run once on a connected machine "
              "`python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\"` "
              "(it caches them under $TORCH_HOME), or set loss.vgg_weights=/path/to/vgg16.pth "
              "(a state dict of torchvision's vgg16 or of its .features), or use loss=lap1.")
    if weights:
        path = Path(os.path.expanduser(weights))
        if not path.is_file():
            raise ConfigError(f"loss.vgg_weights={weights}: no such file. {how_to}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if any(k.startswith("features.") for k in state):
            state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        try:
            vgg.features.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"loss.vgg_weights={weights} is not a VGG16 state dict: {e}") from e
    else:
        try:
            w = torchvision.models.VGG16_Weights.IMAGENET1K_V1
            vgg.load_state_dict(w.get_state_dict(progress=False))
        except Exception as e:  # offline, blocked, corrupt cache
            raise ConfigError(f"loss=vgg needs VGG16 ImageNet weights and none could be loaded ({e}). "
                              f"{how_to}") from e
    return vgg.features


class VGGLoss(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    """GLANN's loss: L1 on pixels plus L1 on VGG16 features after the given blocks (1-3 at 28-32 px)."""

    def __init__(self, features: nn.Sequential, blocks: Sequence[int] = (1, 2, 3),
                 feature_weight: float = 1.0, resize: int | None = None):
        super().__init__()
        last = max(_VGG16_BLOCK_END[b] for b in blocks)
        self.features = features[: last + 1].eval().requires_grad_(False)
        self.taps = {_VGG16_BLOCK_END[b] for b in blocks}
        self.feature_weight = feature_weight
        self.resize = resize
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True):  # the VGG trunk stays in eval mode
        super().train(mode)
        self.features.eval()
        return self

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = (pred - target).abs().flatten(1).mean(1)
        for a, b in zip(self._feats(pred), self._feats(target)):
            loss = loss + self.feature_weight * (a - b).abs().flatten(1).mean(1)
        return loss


def build_loss(cfg) -> nn.Module:
    """Build the loss named by a :class:`glann.config.LossConfig`."""
    if cfg.name == "lap1":
        return Lap1Loss(cfg.lap_levels)
    if cfg.name == "vgg":
        return VGGLoss(load_vgg16_features(cfg.vgg_weights), cfg.vgg_layers, cfg.vgg_weight, cfg.vgg_resize)
    raise ConfigError(f"loss.name must be 'lap1' or 'vgg', got {cfg.name!r}")
