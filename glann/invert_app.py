"""glann-invert: fit latent codes to new images with a trained generator (GLO inversion).

    glann-invert sampler_dir=outputs/glann/<time>/sampler images=my_digits/ output=inverted.npz
    glann-invert sampler_dir=... images=samples.npz steps=200 init=random restarts=4

``images`` is a folder of image files (read, converted and resized as ``data=folder`` reads training data, in
sorted path order; unreadable files are skipped with a warning) or an ``.npz`` holding ``images``: uint8
(N, H, W, C), (N, H, W) or (N, C, H, W). Images of another size or channel count are converted as the training
data was. The output ``.npz`` holds ``latents`` (float32 N x D, unit norm), ``images`` (the reconstructions,
uint8 N x H x W x C, the key glann-sample writes) and ``losses`` (float32 N, the stage-1 loss of each). A grid,
originals above their reconstructions, is written beside it as ``<output>_grid.png``.
"""
from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path
from typing import cast

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from glann.cli import friendly_errors, run_app
from glann.config import DataConfig, InvertConfig, validate_invert
from glann.data import IMAGE_EXTENSIONS, conform_images, load_dataset
from glann.errors import ConfigError, DataError
from glann.files import atomic_write, writable_problem
from glann.images import NPZ_KEY, read_npz, save_grid, to_float, to_uint8
from glann.runtime import resolve_device
from glann.sampler import GlannSampler

log = logging.getLogger("glann")

def read_images(path: str | Path, channels: int, size: int) -> np.ndarray:
    """A folder of images or an ``.npz`` (key ``images``, uint8) -> uint8 (N, channels, size, size)."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in path.rglob("*")):
            raise DataError(f"images={path} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        with tempfile.TemporaryDirectory() as cache:  # decode without leaving a cache in the user's folder
            cfg = DataConfig(name="folder", root=str(path), image_size=size, channels=channels, cache_dir=cache)
            try:
                return np.array(load_dataset(cfg).images)
            except DataError as e:
                raise DataError(f"images={path}: {e}") from None
    if not path.is_file():
        raise DataError(f"images={path} does not exist (give a folder of images or an .npz file)")
    if path.suffix != ".npz":
        raise DataError(f"images={path} is neither a folder nor an .npz file")
    arr = read_npz(path).transpose(0, 3, 1, 2)
    try:
        return conform_images(arr, channels, size)
    except DataError as e:
        raise DataError(f"images={path}: {e}") from None


def write_inversion(output: Path, latents: np.ndarray, images: np.ndarray, losses: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, latents=latents, losses=losses, **{NPZ_KEY: images})  # type: ignore[arg-type]
    return atomic_write(Path(output), lambda p: p.write_bytes(buf.getvalue()))


def save_pairs_grid(originals, reconstructions, path: Path, per_row: int = 8) -> Path:
    """Float (N, C, H, W) originals and reconstructions -> a grid: each row of originals above its reconstructions."""
    rows = [t for s in range(0, len(originals), per_row)
            for t in (originals[s:s + per_row], reconstructions[s:s + per_row])]
    return save_grid(torch.cat(rows), path, nrow=min(per_row, len(originals)))


@friendly_errors
def run_invert(cfg: DictConfig) -> str:
    conf = validate_invert(cast(InvertConfig, OmegaConf.to_object(cfg)))
    assert conf.sampler_dir is not None and conf.images is not None  # validate_invert requires both
    output = Path(conf.output) if conf.output else Path(HydraConfig.get().runtime.output_dir) / "inversion.npz"
    problem = writable_problem(output.parent)
    if problem:
        raise ConfigError(f"output={output}: {problem}")
    sampler = GlannSampler.from_pretrained(conf.sampler_dir, device=resolve_device(conf.device))
    c, size, _ = sampler.image_shape
    images = read_images(conf.images, c, size)[: conf.limit]
    log.info("inverting %d images of shape %s (%d steps, init=%s)", len(images), images.shape[1:], conf.steps,
             conf.init)
    x = to_float(images, channels_last=False)
    result = sampler.invert(x, steps=conf.steps, lr=conf.lr, batch_size=conf.batch_size, seed=conf.seed,
                            init=conf.init, restarts=conf.restarts, candidates=conf.candidates, progress=True)
    path = write_inversion(output, result.latents.numpy().astype(np.float32), to_uint8(result.reconstructions),
                           result.losses.numpy().astype(np.float32))
    log.info("wrote %d codes and reconstructions to %s; mean loss %.5f", len(images), path, result.losses.mean())
    if conf.grid_size:
        n = conf.grid_size
        grid = save_pairs_grid(x[:n], result.reconstructions[:n], output.with_suffix("").parent /
                               f"{output.with_suffix('').name}_grid.png")
        log.info("grid (originals above reconstructions): %s", grid)
    return str(path)


def main() -> None:
    run_app("invert", run_invert)


if __name__ == "__main__":
    main()
