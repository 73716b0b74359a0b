"""glann-sample: draw images from a trained pipeline folder.

    glann-sample sampler_dir=outputs/glann/<time>/sampler num_samples=10000 seed=0 output=samples.npz
    glann-sample sampler_dir=... num_samples=64 output=pngs/        # a folder of PNGs

An ``.npz`` output holds one array under the key ``images``: uint8, shape (N, H, W, C).
A grid of the first (up to 100) images is written beside it as ``<output>_grid.png``.
"""
from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from glann.cli import friendly_errors, run_app
from glann.config import SampleConfig, validate_sample
from glann.errors import ConfigError

log = logging.getLogger("glann")

NPZ_KEY = "images"


def write_samples(images: np.ndarray, output: Path) -> Path:
    """uint8 (N, H, W, C) -> ``output`` (.npz, key "images") or a folder of numbered PNGs."""
    from PIL import Image

    from glann.artifacts import atomic_write

    output = Path(output)
    if output.suffix == ".npz":
        buf = io.BytesIO()
        np.savez_compressed(buf, **{NPZ_KEY: images})
        return atomic_write(output, lambda p: p.write_bytes(buf.getvalue()))
    output.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(len(images) - 1)))
    for i, img in enumerate(images):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(output / f"{i:0{width}d}.png")
    return output


def check_writable(output: Path) -> None:
    """Fail before sampling when ``output`` cannot be written (a file in the way, read-only place)."""
    folder = output.parent if output.suffix == ".npz" else output
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"output={output}: {probe} is not a directory")
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise ConfigError(f"output={output}: cannot write to {probe} ({e.strerror})") from None


@friendly_errors
def sample(cfg: DictConfig) -> str:
    conf: SampleConfig = validate_sample(OmegaConf.to_object(cfg))
    import torch

    from glann.runtime import resolve_device, save_grid
    from glann.sampler import GlannSampler

    output = Path(conf.output) if conf.output else Path(HydraConfig.get().runtime.output_dir) / "samples.npz"
    check_writable(output)
    sampler = GlannSampler.from_pretrained(conf.sampler_dir, device=resolve_device(conf.device))
    if conf.mode == "interpolate":
        return write_interpolations(sampler, conf, output)
    images = sampler(conf.num_samples, seed=conf.seed, batch_size=conf.batch_size, output_type="np",
                     progress=True).images
    path = write_samples(images, output)
    log.info("wrote %d images %s to %s", len(images), images.shape[1:], path)
    if conf.grid:
        grid = torch.from_numpy(images[:100]).permute(0, 3, 1, 2).float() / 255.0
        stem = output.with_suffix("") if output.suffix == ".npz" else output
        log.info("grid: %s", save_grid(grid, stem.parent / f"{stem.name}_grid.png"))
    return str(path)


def interpolation_images(sampler, conf: SampleConfig) -> np.ndarray:
    """``num_pairs`` pairs of endpoints drawn from ``seed`` (noise, mapped to codes for the latent space), each
    interpolated in ``interpolation_steps`` images: uint8 (num_pairs * steps, H, W, C), one pair after another."""
    import torch

    noise = sampler.noise(2 * conf.num_pairs, seed=conf.seed).view(conf.num_pairs, 2, -1)
    rows = []
    for pair in noise:
        if conf.interpolation_space == "latent":
            with torch.no_grad():
                pair = sampler.mapper(pair.to(sampler.device, sampler.dtype)).float().cpu()
        rows.append(sampler.interpolate(pair, conf.interpolation_steps, space=conf.interpolation_space,
                                        batch_size=conf.batch_size).images)
    return np.concatenate(rows)


def write_interpolations(sampler, conf: SampleConfig, output: Path) -> str:
    """glann-sample mode=interpolate: the images to ``output`` and a grid with one row per pair beside it."""
    import torch

    from glann.runtime import save_grid

    images = interpolation_images(sampler, conf)
    path = write_samples(images, output)
    stem = output.with_suffix("") if output.suffix == ".npz" else output
    grid = save_grid(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0,
                     stem.parent / f"{stem.name}_grid.png", nrow=conf.interpolation_steps)
    log.info("wrote %d interpolations of %d steps (%s space) to %s; grid: %s", conf.num_pairs,
             conf.interpolation_steps, conf.interpolation_space, path, grid)
    return str(path)


def main() -> None:
    run_app("sample", sample)


if __name__ == "__main__":
    main()
