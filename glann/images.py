"""Image conversion between the two layouts glann uses, and PNG grids.

* float tensors (N, C, H, W) in [0, 1]: what networks, losses and metrics consume;
* uint8 arrays (N, H, W, C): what users save and load (``.npz`` key ``images``, PNG files).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from glann.files import atomic_write


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float (N, C, H, W) in [0, 1] -> uint8 (N, H, W, C)."""
    return images.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1) \
        .contiguous().numpy()


def to_float(images: np.ndarray, channels_last: bool = True) -> torch.Tensor:
    """uint8 (N, H, W, C) (or (N, C, H, W) with ``channels_last=False``) -> float (N, C, H, W) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if channels_last:
        x = x.permute(0, 3, 1, 2)
    return x.float().div_(255.0)


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> Path:
    """Save images in [0, 1] (N, C, H, W) as one PNG grid, atomically."""
    nrow = nrow or max(1, int(np.ceil(np.sqrt(len(images)))))
    buf = io.BytesIO()
    save_image(images.detach().float().cpu().clamp(0, 1), buf, nrow=nrow, padding=2, pad_value=1.0, format="png")
    return atomic_write(Path(path), lambda p: p.write_bytes(buf.getvalue()))
