"""GlannSampler: noise -> IMLE mapper -> GLO generator -> images, saved as one self-contained folder.

    sampler = GlannSampler.from_pretrained("outputs/glann/<time>/sampler")
    images = sampler(16, seed=0).images          # uint8 (16, H, W, C)

The folder holds ``sampler.json`` plus ``mapper/`` and ``generator/`` (config.json + model.safetensors), and
``reference.safetensors``: the training set's GLO codes (up to 60k), which the density correction compares the mapper's
codes with (:mod:`glann.resample`). Classes are rebuilt from glann's fixed registry, never from a class path read
from disk.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from glann import artifacts, resample
from glann.config import LossConfig, check_candidates, check_correction, check_temperature
from glann.data import conform_images
from glann.errors import ArtifactError, DataError
from glann.files import read_json, write_json
from glann.images import to_float, to_uint8
from glann.inversion import InversionResult, invert, nearest_decoded, slerp_path
from glann.losses import build_loss
from glann.nets import Generator, Mapper
from glann.version import __version__

log = logging.getLogger(__name__)

COMPONENTS = ("mapper", "generator")
REFERENCE_FILE = "reference.safetensors"


@dataclass
class SamplerOutput:
    images: Any  # "np": uint8 (N, H, W, C); "tensor": float (N, C, H, W) in [0, 1]; "pil": list of images
    latents: Any = None  # the (N, latent_dim) codes decoded into ``images`` (float, CPU)


class GlannSampler:
    def __init__(self, mapper: Mapper, generator: Generator, reference: torch.Tensor | None = None,
                 correction: float = resample.DEFAULT_STRENGTH, candidates: int = resample.DEFAULT_CANDIDATES,
                 temperature: float = 1.0):
        """``reference``: training-set GLO codes (N, latent_dim) for the density correction (:meth:`__call__`);
        without them the sampler draws uncorrected samples only. ``correction`` and ``candidates``: the strength and
        the codes drawn per image a call uses by default when there are reference codes; ``temperature``: the noise
        scale a call uses by default (all three recorded in sampler.json)."""
        if mapper.arch.latent_dim != generator.arch.latent_dim:
            raise ArtifactError(f"mapper outputs {mapper.arch.latent_dim}-d latents but the generator takes "
                                f"{generator.arch.latent_dim}-d ones")
        if reference is not None and (reference.ndim != 2 or reference.shape[1] != mapper.arch.latent_dim
                                      or len(reference) == 0):
            raise ArtifactError(f"reference codes must be (N > 0, {mapper.arch.latent_dim}), got shape "
                                f"{tuple(reference.shape)}")
        self.mapper = mapper.eval()
        self.generator = generator.eval()
        self.reference = None if reference is None else resample.subsample_reference(reference)
        self.default_correction = check_correction(correction, "correction")
        self.default_candidates = check_candidates(candidates, "candidates")
        self.default_temperature = check_temperature(temperature, "temperature")
        self.loss_config: dict | None = None  # the stage-1 loss settings (LossConfig fields), used by invert
        self._model_codes: dict[float, torch.Tensor] = {}  # the mapper's reference codes, per temperature
        self._warned_reference = False

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
        self._model_codes.clear()
        return self

    def save_pretrained(self, folder: str | Path, loss: dict | None = None) -> Path:
        """``loss``: the stage-1 loss settings (``dataclasses.asdict(LossConfig)``), recorded in sampler.json
        for :meth:`invert`; default: the settings this sampler was loaded with, if any."""
        folder = Path(folder)
        for name in COMPONENTS:
            artifacts.save_network(folder / name, getattr(self, name))
        meta = {"components": {name: type(getattr(self, name)).__name__ for name in COMPONENTS},
                "noise_dim": self.noise_dim, "image_shape": list(self.image_shape), "value_range": [0, 1],
                "temperature": self.default_temperature, "glann_version": __version__}
        if self.reference is not None:
            artifacts.save_tensors(folder / REFERENCE_FILE, {"latents": self.reference})
            meta["reference_codes"] = len(self.reference)
            meta["correction"] = self.default_correction
            meta["candidates"] = self.default_candidates
        loss = loss if loss is not None else self.loss_config
        if loss is not None:
            meta["loss"] = dict(loss)
        write_json(folder / "sampler.json", meta)
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
        reference = None
        if (folder / REFERENCE_FILE).is_file():
            tensors = artifacts.load_tensors(folder / REFERENCE_FILE)
            if "latents" not in tensors:
                raise ArtifactError(f"{folder / REFERENCE_FILE} has no 'latents' tensor")
            reference = tensors["latents"]
        elif meta.get("reference_codes"):
            raise ArtifactError(f"sampler directory {folder} is incomplete: sampler.json lists "
                                f"{meta['reference_codes']} reference codes but {REFERENCE_FILE} is missing")
        sampler = cls(artifacts.load_network(folder / "mapper", device, Mapper),
                      artifacts.load_network(folder / "generator", device, Generator), reference,
                      meta.get("correction", resample.DEFAULT_STRENGTH),
                      meta.get("candidates", resample.DEFAULT_CANDIDATES), meta.get("temperature", 1.0))
        if meta.get("noise_dim") not in (None, sampler.noise_dim):
            raise ArtifactError(f"{folder / 'sampler.json'} says noise_dim={meta['noise_dim']} but the mapper "
                                f"takes {sampler.noise_dim}")
        if isinstance(meta.get("loss"), dict):
            sampler.loss_config = meta["loss"]
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
                 temperature: float | None = None, correction: float | None = None,
                 candidates: int | None = None) -> SamplerOutput:
        """Draw ``num_samples`` images: Gaussian noise -> mapper -> generator.

        ``seed`` (or an explicit CPU ``generator``) fixes the noise, which is drawn up front, so the same seed gives
        the same images at any ``batch_size``. ``temperature`` scales the noise (a mixture mapper's component choice
        excepted); 1 samples the prior the mapper was trained on or fitted, ``None`` the sampler's default
        (sampler.json; the training config's ``sampler.temperature``). Below 1 a mixture's draws sharpen: precision up,
        recall down (BENCHMARKS.md "Sampling temperature"); an IMLE mapper's got worse, not sharper.
        ``correction``: strength of the density correction (:mod:`glann.resample`): ``candidates`` codes are drawn
        per image (``None``: the sampler's default, 6) and one of them kept, with probability proportional to the
        estimated p_data / p_model at the code raised to ``correction``; more candidates correct more fully, at
        proportionally more mapping and search. It gives the clusters that IMLE under-samples their share back
        (BENCHMARKS.md "Density correction"). ``None``: the sampler's default (sampler.json; 0.5 unless the training
        config's ``sampler.correction`` said otherwise) when it has reference codes (every folder glann exports),
        else 0; ``0``: plain samples.
        ``output_type``: ``"np"`` uint8 (N, H, W, C), ``"tensor"`` float (N, C, H, W) in [0, 1] on the CPU,
        ``"pil"`` PIL images.
        """
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        temperature = self.sampling_temperature(temperature)
        if output_type not in ("np", "tensor", "pil"):
            raise ValueError(f"output_type must be 'np', 'tensor' or 'pil', got {output_type!r}")
        strength = self.correction_strength(correction)
        per_image = self.candidates_per_image(candidates)  # checked even when the correction is off
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        group = per_image if strength > 0 else 1
        if strength > 0:  # the choices get their own stream, seeded by one draw before the noise
            choices = torch.Generator().manual_seed(int(torch.randint(2 ** 62, (1,), generator=generator)))
        noise = self.noise(num_samples * group, generator=generator)
        if temperature != 1.0:
            noise = self.mapper.scale_noise(noise, temperature)
        if strength > 0:
            uniforms = torch.rand(num_samples, generator=choices, dtype=torch.float64)
        chunks, codes = [], []
        for s in tqdm(range(0, num_samples, batch_size), desc="sample", unit="batch", disable=not progress):
            if strength > 0:
                z = self._corrected_codes(noise[s * group:(s + batch_size) * group], uniforms[s:s + batch_size],
                                          temperature, strength, batch_size)
            else:
                z = self.mapper(noise[s:s + batch_size].to(self.device, self.dtype))
            codes.append(z.float().cpu())
            chunks.append(self.generator(z.to(self.device, self.dtype)).float().cpu())
        images, latents = torch.cat(chunks), torch.cat(codes)
        if output_type == "tensor":
            return SamplerOutput(images, latents)
        arr = to_uint8(images)
        if output_type == "np":
            return SamplerOutput(arr, latents)
        return SamplerOutput([Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr], latents)

    def sampling_temperature(self, temperature: float | None = None) -> float:
        """The noise scale a call with ``temperature`` uses (see :meth:`__call__`)."""
        return self.default_temperature if temperature is None else check_temperature(temperature, "temperature")

    def correction_strength(self, correction: float | None = None) -> float:
        """The density-correction strength a call with ``correction`` uses (see :meth:`__call__`)."""
        if correction is None:
            if self.reference is None and not self._warned_reference:
                log.warning("this sampler has no reference codes (a folder written before glann saved "
                            "%s): sampling without the density correction", REFERENCE_FILE)
                self._warned_reference = True
            return self.default_correction if self.reference is not None else 0.0
        strength = check_correction(correction, "correction")
        if strength > 0 and self.reference is None:
            raise ArtifactError(f"correction={correction} needs the training set's GLO codes, and this sampler has "
                                f"none (a folder written before glann saved {REFERENCE_FILE}, or a GlannSampler "
                                "built without reference=): pass correction=0, or retrain/re-export the sampler")
        return strength

    def candidates_per_image(self, candidates: int | None = None) -> int:
        """The codes per image a corrected call with ``candidates`` draws (see :meth:`__call__`)."""
        return self.default_candidates if candidates is None else check_candidates(candidates, "candidates")

    @torch.no_grad()
    def _map(self, noise: torch.Tensor, batch_size: int) -> torch.Tensor:
        """noise -> the mapper's codes, float32 on this sampler's device."""
        return torch.cat([self.mapper(noise[s:s + batch_size].to(self.device, self.dtype)).float()
                          for s in range(0, len(noise), batch_size)])

    def _model_reference(self, temperature: float, batch_size: int) -> torch.Tensor:
        """As many of the mapper's codes as there are reference codes, from fixed noise at ``temperature``."""
        assert self.reference is not None
        if temperature not in self._model_codes:
            noise = self.noise(len(self.reference), seed=resample.REFERENCE_SEED)
            if temperature != 1.0:
                noise = self.mapper.scale_noise(noise, temperature)
            self._model_codes[temperature] = self._map(noise, batch_size)
        return self._model_codes[temperature]

    def _corrected_codes(self, noise: torch.Tensor, uniforms: torch.Tensor, temperature: float, strength: float,
                         batch_size: int) -> torch.Tensor:
        """One code per image from its group of consecutive noise rows (len(noise) / len(uniforms) of them): the
        mapper's codes of the rows, one of them picked by ``uniforms`` with probability proportional to its density
        ratio ** ``strength``."""
        assert self.reference is not None
        return resample.resample(self._map(noise, batch_size), self.reference,
                                 self._model_reference(temperature, batch_size), strength, uniforms)

    def invert(self, images: Any, steps: int = 300, lr: float = 0.05, batch_size: int = 256, seed: int = 0,
               init: str | torch.Tensor = "mapper", restarts: int = 1, candidates: int = 4096, loss: Any = None,
               progress: bool = False) -> InversionResult:
        """Fit one unit-norm latent code per image with the generator frozen (:func:`glann.inversion.invert`).

        ``images``: float tensor (N, C, H, W) in [0, 1], or uint8 array (N, H, W, C) / (N, C, H, W); other sizes
        and grey <-> RGB are converted as the training data was (:func:`glann.data.conform_images`). ``init``:
        "mapper" (start each image at the closest, in pixels, of ``candidates`` decoded mapper outputs), "random"
        (``restarts`` random codes) or a tensor of codes. ``loss``: a LossConfig or its dict; default: the
        stage-1 loss recorded in sampler.json (lap1 defaults, with a warning, for folders without it).
        Returns an :class:`~glann.inversion.InversionResult` on the CPU."""
        x = self._conform(images)
        loss_fn = self.loss_fn(loss)
        if isinstance(init, str) and init == "mapper":
            if candidates <= 0:
                raise ValueError(f"candidates must be positive, got {candidates}")
            codes = self._map(self.noise(candidates, seed=seed + 1), batch_size).cpu()
            init = nearest_decoded(x, codes, self.decode(codes, batch_size), per_image=restarts)
        return invert(self.generator, x, loss_fn, steps=steps, lr=lr, batch_size=batch_size, seed=seed, init=init,
                      restarts=restarts, progress=progress)

    def loss_fn(self, loss: Any = None) -> nn.Module:
        """The stage-1 loss: ``loss`` (a LossConfig or its dict), else the one recorded in sampler.json."""
        if loss is None:
            loss = self.loss_config
        if loss is None:
            log.warning("this sampler folder records no stage-1 loss settings (written before glann recorded "
                        "them): inverting with the default loss, lap1 with lap_levels=4")
            loss = LossConfig()
        if isinstance(loss, dict):
            known = {f.name for f in fields(LossConfig)}
            loss = LossConfig(**{k: v for k, v in loss.items() if k in known})
        return build_loss(loss).to(self.device)

    def _conform(self, images: Any) -> torch.Tensor:
        """Any accepted image batch -> float (N, C, H, W) in [0, 1] of this sampler's image shape, on the CPU."""
        c, size, _ = self.image_shape
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            if images.ndim == 4 and tuple(images.shape[1:]) == self.image_shape:
                return images.detach().float().cpu()
            if images.ndim != 4:
                raise DataError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
            images = images.detach().cpu().clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
        arr = np.asarray(images.cpu() if isinstance(images, torch.Tensor) else images)
        if arr.dtype != np.uint8:
            raise DataError(f"images must be uint8 (or a float tensor in [0, 1]), got {arr.dtype}")
        if arr.ndim == 3:  # (N, H, W) grey
            arr = arr[:, None]
        elif arr.ndim == 4 and not (arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3)):
            arr = arr.transpose(0, 3, 1, 2)  # (N, H, W, C), the .npz convention
        return to_float(conform_images(arr, c, size), channels_last=False)

    @torch.no_grad()
    def interpolate(self, endpoints: torch.Tensor, steps: int = 8, space: str = "latent", output_type: str = "np",
                    batch_size: int = 500) -> SamplerOutput:
        """Spherical interpolation between consecutive endpoints, decoded: ``(K - 1) * steps`` images, one pair
        after another (``steps`` per pair, both ends included), so a grid with ``steps`` columns has one row per
        pair. ``space="latent"``: endpoints are latent codes (from :meth:`invert` or the mapper);
        ``space="noise"``: endpoints are noise vectors, interpolated, then mapped. The output's ``latents`` are
        the decoded codes."""
        if space not in ("latent", "noise"):
            raise ValueError(f"space must be 'latent' or 'noise', got {space!r}")
        if output_type not in ("np", "tensor", "pil"):
            raise ValueError(f"output_type must be 'np', 'tensor' or 'pil', got {output_type!r}")
        endpoints = torch.as_tensor(endpoints).detach().float().cpu()
        dim = self.generator.arch.latent_dim if space == "latent" else self.noise_dim
        if endpoints.ndim != 2 or endpoints.shape[1] != dim:
            raise ValueError(f"{space} endpoints must be (K, {dim}), got shape {tuple(endpoints.shape)}")
        path = slerp_path(endpoints, steps)
        if space == "noise":
            path = self._map(path, batch_size).cpu()
        images = self.decode(path, batch_size)
        if output_type == "tensor":
            return SamplerOutput(images, path)
        arr = to_uint8(images)
        if output_type == "np":
            return SamplerOutput(arr, path)
        return SamplerOutput([Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr], path)

