"""Image conversion between the two layouts glann uses, and PNG grids.

* float tensors (N, C, H, W) in [0, 1]: what networks, losses and metrics consume;
* uint8 arrays (N, H, W, C): what users save and load (``.npz`` key ``images``, PNG files).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from glann.errors import DataError
from glann.files import atomic_write

NPZ_KEY = "images"  # the array name in every .npz of images glann reads or writes


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float (N, C, H, W) in [0, 1] -> uint8 (N, H, W, C)."""
    return images.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1) \
        .contiguous().numpy()


def to_float(images: np.ndarray | torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 (N, H, W, C) (or (N, C, H, W) with ``channels_last=False``), an array or a tensor on any device
    -> float (N, C, H, W) in [0, 1] on the same device."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if channels_last:
        x = x.permute(0, 3, 1, 2)
    return x.float().div_(255.0)


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> Path:
    """Save images in [0, 1] (N, C, H, W) as one PNG grid, atomically."""
    from torchvision.utils import save_image  # here: seconds to import (BENCHMARKS "App start-up")

    nrow = nrow or max(1, int(np.ceil(np.sqrt(len(images)))))
    buf = io.BytesIO()
    save_image(images.detach().float().cpu().clamp(0, 1), buf, nrow=nrow, padding=2, pad_value=1.0, format="png")
    return atomic_write(Path(path), lambda p: p.write_bytes(buf.getvalue()))


def read_npz(path: Path) -> np.ndarray:
    """The uint8 (N, H, W, C) array stored under ``images`` in an ``.npz`` file (as ``glann-sample`` writes it;
    (N, H, W) is read as grey and (N, C, H, W) is transposed)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path) as z:
            if NPZ_KEY not in z:
                raise DataError(f"{path} has no '{NPZ_KEY}' array (found: {', '.join(z.files) or 'none'})")
            images = z[NPZ_KEY]
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path} is not a readable .npz file ({e})") from None
    if images.dtype != np.uint8:
        raise DataError(f"{path}: '{NPZ_KEY}' must be uint8 (0-255), got {images.dtype}")
    if images.ndim == 3:  # (N, H, W) grey
        images = images[..., None]
    elif images.ndim == 4 and images.shape[-1] not in (1, 3) and images.shape[1] in (1, 3):  # (N, C, H, W)
        images = images.transpose(0, 2, 3, 1)
    if images.ndim != 4 or len(images) == 0:
        raise DataError(f"{path}: '{NPZ_KEY}' must be a non-empty (N, H, W, C) array, got shape {images.shape}")
    if images.shape[-1] not in (1, 3):
        raise DataError(f"{path}: '{NPZ_KEY}' has {images.shape[-1]} channels per image; glann reads 1 (grey) or 3 "
                        "(RGB)")
    return np.ascontiguousarray(images)
