"""GlannSampler: noise -> IMLE mapper -> GLO generator -> images, saved as one self-contained folder.

    sampler = GlannSampler.from_pretrained("outputs/glann/<time>/sampler")
    images = sampler(16, seed=0).images          # uint8 (16, H, W, C)

The folder holds ``sampler.json`` plus ``mapper/`` and ``generator/`` (config.json + model.safetensors).
Classes are rebuilt from glann's fixed registry, never from a class path read from disk.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from glann import artifacts
from glann.errors import ArtifactError
from glann.files import read_json, write_json
from glann.images import to_uint8
from glann.nets import Generator, Mapper
from glann.version import __version__

COMPONENTS = ("mapper", "generator")


@dataclass
class SamplerOutput:
    images: Any  # "np": uint8 (N, H, W, C); "tensor": float (N, C, H, W) in [0, 1]; "pil": list of images


class GlannSampler:
    def __init__(self, mapper: Mapper, generator: Generator):
        if mapper.arch.latent_dim != generator.arch.latent_dim:
            raise ArtifactError(f"mapper outputs {mapper.arch.latent_dim}-d latents but the generator takes "
                                f"{generator.arch.latent_dim}-d ones")
        self.mapper = mapper.eval()
        self.generator = generator.eval()

    @property
    def noise_dim(self) -> int:
        return self.mapper.arch.noise_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        a = self.generator.arch
        return (a.channels, a.image_size, a.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.generator.parameters()).dtype

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> GlannSampler:
        self.mapper.to(device=device, dtype=dtype)
        self.generator.to(device=device, dtype=dtype)
        return self

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        for name in COMPONENTS:
            artifacts.save_network(folder / name, getattr(self, name))
        write_json(folder / "sampler.json", {
            "components": {name: type(getattr(self, name)).__name__ for name in COMPONENTS},
            "noise_dim": self.noise_dim, "image_shape": list(self.image_shape), "value_range": [0, 1],
            "glann_version": __version__})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: Any = "cpu") -> GlannSampler:
        folder = Path(folder)
        if not folder.is_dir():
            raise ArtifactError(f"sampler directory {folder} does not exist")
        meta = read_json(folder / "sampler.json")
        missing = [n for n in COMPONENTS if not (folder / n / "config.json").is_file()
                   or not (folder / n / "model.safetensors").is_file()]
        if missing:
            raise ArtifactError(f"sampler directory {folder} is incomplete: missing component(s) {missing} "
                                "(each needs config.json and model.safetensors)")
        sampler = cls(artifacts.load_network(folder / "mapper", device, Mapper),
                      artifacts.load_network(folder / "generator", device, Generator))
        if meta.get("noise_dim") not in (None, sampler.noise_dim):
            raise ArtifactError(f"{folder / 'sampler.json'} says noise_dim={meta['noise_dim']} but the mapper "
                                f"takes {sampler.noise_dim}")
        return sampler

    def noise(self, num_samples: int, seed: int | None = 0, generator: torch.Generator | None = None):
        """All noise is drawn up front on the CPU, so a seed gives the same images at any batch size."""
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        return torch.randn(num_samples, self.noise_dim, generator=generator)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Generator only: latents -> float images in [0, 1] (N, C, H, W) on the CPU."""
        return torch.cat([self.generator(latents[s:s + batch_size].to(self.device, self.dtype)).float().cpu()
                          for s in range(0, len(latents), batch_size)])

    @torch.no_grad()
    def __call__(self, num_samples: int, seed: int | None = 0, generator: torch.Generator | None = None,
                 batch_size: int = 500, output_type: str = "np", progress: bool = False,
                 temperature: float = 1.0) -> SamplerOutput:
        """Draw ``num_samples`` images: Gaussian noise -> mapper -> generator.

        ``seed`` (or an explicit CPU ``generator``) fixes the noise, which is drawn up front, so the same seed gives
        the same images at any ``batch_size``. ``temperature`` scales the noise: below 1 trades diversity for
        sharpness (a precision-recall dial); 1 samples the prior the mapper was trained on. ``output_type``:
        ``"np"`` uint8 (N, H, W, C), ``"tensor"`` float (N, C, H, W) in [0, 1] on the CPU, ``"pil"`` PIL images.
        """
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if not temperature > 0 or temperature == float("inf"):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        if output_type not in ("np", "tensor", "pil"):
            raise ValueError(f"output_type must be 'np', 'tensor' or 'pil', got {output_type!r}")
        noise = self.noise(num_samples, seed, generator)
        if temperature != 1.0:
            noise = noise * temperature
        chunks = []
        for s in tqdm(range(0, num_samples, batch_size), desc="sample", unit="batch", disable=not progress):
            z = self.mapper(noise[s:s + batch_size].to(self.device, self.dtype))
            chunks.append(self.generator(z).float().cpu())
        images = torch.cat(chunks)
        if output_type == "tensor":
            return SamplerOutput(images)
        arr = to_uint8(images)
        if output_type == "np":
            return SamplerOutput(arr)
        return SamplerOutput([Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr])

