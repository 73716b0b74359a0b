"""Datasets, loaded once into memory as uint8 (N, C, H, W) arrays (memory-mapped when cached on disk).

``embedded`` (10k MNIST images shipped with the package) and ``tiny`` (synthetic) work offline
anywhere; ``mnist``, ``fashion_mnist``, ``cifar10`` and ``celeba`` go through torchvision (local root,
optional download); ``folder`` reads any directory of images.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from glann.config import DataConfig
from glann.errors import DataError
from glann.files import atomic_write
from glann.images import to_float

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
TORCHVISION_SETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10", "celeba": "CelebA"}


@dataclass
class ImageData:
    images: np.ndarray  # uint8 (N, C, H, W)
    name: str
    fingerprint: str  # hash of config + content; keys stage reuse

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return c, h, w

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, idx: torch.Tensor | np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images at ``idx`` as float in [0, 1] on ``device``."""
        idx = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx)
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx]))
        return to_float(x.to(device, non_blocking=True), channels_last=False)


def load_dataset(cfg: DataConfig, seed: int = 0) -> ImageData:
    loaders = {"embedded": _embedded, "tiny": _tiny, "folder": _folder, "stacked_mnist": _stacked_mnist}
    if cfg.name in loaders:
        images = loaders[cfg.name](cfg)
    elif cfg.name in TORCHVISION_SETS:
        images = _torchvision(cfg)
    else:
        raise DataError(f"data.name={cfg.name!r} is unknown; choose from "
                        f"{sorted(list(loaders) + list(TORCHVISION_SETS))}")
    images = _postprocess(images, cfg, seed)
    if len(images) == 0:
        raise DataError(f"data.name={cfg.name}: the dataset is empty")
    digest = hashlib.sha256(f"{cfg.name}:{cfg.split}:{images.shape}".encode())
    for s in range(0, len(images), 4096):  # all of the processed content, whatever path it was read from
        digest.update(np.ascontiguousarray(images[s:s + 4096]).tobytes())
    log.info("data: %s, %d images of shape %s", cfg.name, len(images), tuple(images.shape[1:]))
    return ImageData(images, cfg.name, digest.hexdigest()[:16])


def _postprocess(images: np.ndarray, cfg: DataConfig, seed: int) -> np.ndarray:
    if cfg.limit is not None and cfg.limit < len(images):
        keep = np.sort(np.random.default_rng(seed).permutation(len(images))[: cfg.limit])
        images = images[keep]
    c = images.shape[1]
    if cfg.channels is not None and cfg.channels != c:
        images = images.repeat(3, axis=1) if cfg.channels == 3 else _to_gray(images)
    if (cfg.image_size is not None and images.shape[-1] != cfg.image_size) or images.shape[-2] != images.shape[-1]:
        size = cfg.image_size or min(images.shape[-2:])
        images = resize_uint8(images, size, cfg.center_crop)
    return np.ascontiguousarray(images)


def _to_gray(images: np.ndarray) -> np.ndarray:
    w = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(1, 3, 1, 1)
    return np.clip((images.astype(np.float32) * w).sum(1, keepdims=True) + 0.5, 0, 255).astype(np.uint8)


def resize_uint8(images: np.ndarray, size: int, center_crop: int | None = None, chunk: int = 1024) -> np.ndarray:
    """Centre-crop to a square (``center_crop`` or the short side), then antialiased resize to ``size``."""
    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    h, w = images.shape[-2:]
    crop = min(center_crop or min(h, w), h, w)
    top, left = (h - crop) // 2, (w - crop) // 2
    for s in range(0, len(images), chunk):
        x = torch.from_numpy(np.ascontiguousarray(images[s:s + chunk, :, top:top + crop, left:left + crop])).float()
        if crop != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[s:s + chunk] = x.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def conform_images(images: np.ndarray, channels: int, size: int) -> np.ndarray:
    """uint8 (N, C, H, W) of any size with 1 or 3 channels -> uint8 (N, channels, size, size), converted the way
    training data is: grey <-> RGB as :func:`_postprocess` does, then a centre crop to a square and an
    antialiased resize (:func:`resize_uint8`). Anything else is refused with a one-line :class:`DataError`."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise DataError(f"images must be uint8, got {images.dtype}")
    if images.ndim != 4:
        raise DataError(f"images must be (N, C, H, W), got shape {images.shape}")
    if channels not in (1, 3):
        raise DataError(f"images can be converted to 1 or 3 channels, not {channels}")
    c = images.shape[1]
    if c not in (1, 3):
        raise DataError(f"images have {c} channels; only 1 (grey) or 3 (RGB) can be converted to {channels}")
    if len(images) == 0 or min(images.shape[-2:]) == 0:
        raise DataError(f"images are empty (shape {images.shape})")
    if c != channels:
        images = images.repeat(3, axis=1) if channels == 3 else _to_gray(images)
    if images.shape[-2:] != (size, size):
        images = resize_uint8(images, size)
    return np.ascontiguousarray(images)


def _embedded(cfg: DataConfig) -> np.ndarray:
    with resources.files("glann").joinpath("assets/mnist_10k.npz").open("rb") as f:
        with np.load(f) as z:
            return z["images"][:, None]


def _tiny(cfg: DataConfig) -> np.ndarray:
    """Synthetic 16x16 images (a bright square on a dark background at seeded positions), for tests."""
    size = cfg.image_size or 16
    rng = np.random.default_rng(1234)
    images = np.zeros((cfg.num_tiny, 1, size, size), dtype=np.uint8)
    side = max(2, size // 4)
    for i in range(cfg.num_tiny):
        r, c = rng.integers(0, size - side, size=2)
        images[i, 0, r:r + side, c:c + side] = 255
    return images


def stacked_mnist(images: np.ndarray, labels: np.ndarray, num: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stack three random MNIST digits per image as channels: uint8 (num, 3, 28, 28) and mode ids."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(images), size=(num, 3))
    stacked = np.concatenate([images[pick[:, c]] for c in range(3)], axis=1)
    ids = 100 * labels[pick[:, 0]] + 10 * labels[pick[:, 1]] + labels[pick[:, 2]]
    return stacked, ids.astype(np.int64)


def _stacked_mnist(cfg: DataConfig) -> np.ndarray:
    """Stacked MNIST: three random MNIST digits as the three channels (1000 modes)."""
    import torchvision  # here: seconds to import (BENCHMARKS "App start-up")

    digits = _torchvision(replace(cfg, name="mnist"))
    labels = torchvision.datasets.MNIST(str(Path(os.path.expanduser(cfg.root or "data"))),
                                        train=cfg.split == "train").targets.numpy()
    return stacked_mnist(digits, labels, cfg.num_stacked, seed=0 if cfg.split == "train" else 1)[0]


def _torchvision(cfg: DataConfig) -> np.ndarray:
    name = TORCHVISION_SETS[cfg.name]
    root = Path(os.path.expanduser(cfg.root or "data"))
    if not root.is_dir() and not cfg.download:
        raise DataError(f"data.root={root} does not exist. Point data.root at a folder holding "
                        f"{name}/ (torchvision layout) or set data.download=true on a connected machine")
    import torchvision  # here: seconds to import (BENCHMARKS "App start-up")

    cls = getattr(torchvision.datasets, name)
    try:
        if cfg.name == "celeba":
            return _celeba(cls, root, cfg)
        ds = cls(str(root), train=cfg.split == "train", download=cfg.download)
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise DataError(f"data.name={cfg.name}: cannot read {name} under data.root={root} ({e}). "
                        f"Set data.download=true on a connected machine, or copy the files there") from None
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    if data.ndim == 3:  # (N, H, W) grayscale
        return data[:, None]
    return data.transpose(0, 3, 1, 2)  # CIFAR: (N, H, W, C)


def _celeba(cls, root: Path, cfg: DataConfig) -> np.ndarray:
    size, crop = cfg.image_size or 64, cfg.center_crop or 140
    cache = _cache_path(cfg, root, f"celeba_{cfg.split}_{crop}_{size}.npy")
    if cache.is_file():
        return np.load(cache, mmap_mode="r")
    ds = cls(str(root), split=cfg.split, download=cfg.download)
    return _decode_to_cache([Path(ds.root) / ds.base_folder / "img_align_celeba" / f for f in ds.filename],
                            cache, 3, size, crop, "error")


def _cache_path(cfg: DataConfig, root: Path, name: str) -> Path:
    return Path(os.path.expanduser(cfg.cache_dir)) / name if cfg.cache_dir else root / ".glann_cache" / name


def _folder(cfg: DataConfig) -> np.ndarray:
    if not cfg.root:
        raise DataError("data.name=folder needs data.root=/path/to/images")
    root = Path(os.path.expanduser(cfg.root))
    if not root.is_dir():
        raise DataError(f"data.root={root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"data.root={root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    size = cfg.image_size or 64
    channels = cfg.channels or 3
    key = hashlib.sha256("\n".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files).encode())
    cache = _cache_path(cfg, root, f"folder_{key.hexdigest()[:12]}_{channels}_{cfg.center_crop}_{size}.npy")
    if cache.is_file():
        return np.load(cache, mmap_mode="r")
    return _decode_to_cache(files, cache, channels, size, cfg.center_crop, cfg.on_corrupt)


def _decode_to_cache(files: list[Path], cache: Path, channels: int, size: int, crop: int | None,
                     on_corrupt: str) -> np.ndarray:
    """Decode, crop, resize; skip or stop on unreadable files; cache the array as .npy."""
    images, bad = [], []
    for path in tqdm(files, desc="decode images", unit="img", leave=False, mininterval=1.0):
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            if on_corrupt == "error":
                raise DataError(f"unreadable image {path} ({e}); set data.on_corrupt=skip to skip such files") from None
            bad.append(path)
            continue
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        images.append(resize_uint8(arr[None], size, crop)[0])
    if bad:
        log.warning("skipped %d unreadable image(s) of %d (first: %s)", len(bad), len(files), bad[0])
    if not images:
        raise DataError(f"no readable images among {len(files)} file(s) (first: {files[0]})")
    out = np.stack(images)
    try:
        def write(p: Path) -> None:
            with open(p, "wb") as f:
                np.save(f, out)

        atomic_write(cache, write)
    except OSError as e:
        log.warning("could not cache decoded images at %s: %s", cache, e)
    return out
