"""glann-sample: draw images from a trained pipeline folder.

    glann-sample sampler_dir=outputs/glann/<time>/sampler num_samples=10000 seed=0 output=samples.npz
    glann-sample sampler_dir=... num_samples=64 output=pngs/        # a folder of PNGs

An ``.npz`` output holds one array under the key ``images``: uint8, shape (N, H, W, C).
A grid of the first (up to 100) images is written beside it as ``<output>_grid.png``.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import cast

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from glann.cli import friendly_errors, run_app
from glann.config import SampleConfig, validate_sample
from glann.errors import ConfigError
from glann.files import atomic_write, writable_problem
from glann.images import NPZ_KEY, save_grid, to_float
from glann.runtime import resolve_device
from glann.sampler import GlannSampler

log = logging.getLogger("glann")

def write_samples(images: np.ndarray, output: Path) -> Path:
    """uint8 (N, H, W, C) -> ``output`` (.npz, key "images") or a folder of numbered PNGs."""
    output = Path(output)
    if output.suffix == ".npz":
        buf = io.BytesIO()
        np.savez_compressed(buf, **{NPZ_KEY: images})  # type: ignore[arg-type]  # numpy's stub: **kwds as bool
        return atomic_write(output, lambda p: p.write_bytes(buf.getvalue()))
    output.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(len(images) - 1)))
    for i, img in enumerate(images):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(output / f"{i:0{width}d}.png")
    return output


def check_writable(output: Path) -> None:
    """Fail before sampling when ``output`` cannot be written (a file in the way, read-only place)."""
    problem = writable_problem(output.parent if output.suffix == ".npz" else output)
    if problem:
        raise ConfigError(f"output={output}: {problem}")


@friendly_errors
def sample(cfg: DictConfig) -> str:
    conf = validate_sample(cast(SampleConfig, OmegaConf.to_object(cfg)))
    assert conf.sampler_dir is not None  # validate_sample requires it
    output = Path(conf.output) if conf.output else Path(HydraConfig.get().runtime.output_dir) / "samples.npz"
    check_writable(output)
    sampler = GlannSampler.from_pretrained(conf.sampler_dir, device=resolve_device(conf.device))
    if conf.mode == "interpolate":
        return write_interpolations(sampler, conf, output)
    images = sampler(conf.num_samples, seed=conf.seed, batch_size=conf.batch_size, output_type="np",
                     progress=True, temperature=conf.temperature,
                     correction=conf.correction, candidates=conf.candidates).images
    path = write_samples(images, output)
    log.info("wrote %d images %s to %s", len(images), images.shape[1:], path)
    if conf.grid:
        grid = to_float(images[:100])
        stem = output.with_suffix("") if output.suffix == ".npz" else output
        log.info("grid: %s", save_grid(grid, stem.parent / f"{stem.name}_grid.png"))
    return str(path)


def interpolation_images(sampler: GlannSampler, conf: SampleConfig) -> np.ndarray:
    """``num_pairs`` pairs of endpoints drawn from ``seed`` (noise, mapped to codes for the latent space), each
    interpolated in ``interpolation_steps`` images: uint8 (num_pairs * steps, H, W, C), one pair after another."""
    noise = sampler.noise(2 * conf.num_pairs, seed=conf.seed)  # the endpoints are drawn as samples are:
    noise = sampler.mapper.scale_noise(noise, sampler.sampling_temperature(conf.temperature))
    noise = noise.view(conf.num_pairs, 2, -1)
    rows = []
    for pair in noise:
        if conf.interpolation_space == "latent":
            with torch.no_grad():
                pair = sampler.mapper(pair.to(sampler.device, sampler.dtype)).float().cpu()
        rows.append(sampler.interpolate(pair, conf.interpolation_steps, space=conf.interpolation_space,
                                        batch_size=conf.batch_size).images)
    return np.concatenate(rows)


def write_interpolations(sampler: GlannSampler, conf: SampleConfig, output: Path) -> str:
    """glann-sample mode=interpolate: the images to ``output`` and a grid with one row per pair beside it."""
    images = interpolation_images(sampler, conf)
    path = write_samples(images, output)
    stem = output.with_suffix("") if output.suffix == ".npz" else output
    grid = save_grid(to_float(images),
                     stem.parent / f"{stem.name}_grid.png", nrow=conf.interpolation_steps)
    log.info("wrote %d interpolations of %d steps (%s space) to %s; grid: %s", conf.num_pairs,
             conf.interpolation_steps, conf.interpolation_space, path, grid)
    return str(path)


def main() -> None:
    run_app("sample", sample)


if __name__ == "__main__":
    main()
