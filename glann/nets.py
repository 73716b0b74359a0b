"""Networks: the GLO generator (latent -> image) and the IMLE mapper (noise -> latent).

Each network is built from a small config dataclass that is saved next to its weights, so loading
needs no Hydra and no pickled classes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GeneratorConfig:
    """The generator's user-set widths (the ``glo.generator`` config group)."""

    hidden_dim: int = 1024  # width of the first fully connected layer
    base_channels: int = 64  # channels before the last transposed conv; doubled per earlier stage
    batch_norm: bool = True


@dataclass
class GeneratorArch(GeneratorConfig):
    """Everything that builds a :class:`Generator`: its config plus the shapes the data and latents fix.
    Saved as ``config.json`` beside the weights."""

    latent_dim: int = 64
    image_size: int = 28
    channels: int = 1

    @classmethod
    def of(cls, cfg: GeneratorConfig, latent_dim: int, image_shape: tuple[int, int, int]) -> GeneratorArch:
        c, h, _ = image_shape
        return cls(**asdict(cfg), latent_dim=latent_dim, image_size=h, channels=c)


@dataclass
class MapperConfig:
    """The IMLE mapper's user-set shape (the ``imle.mapper`` config group)."""

    hidden_dim: int = 256
    num_layers: int = 3  # linear layers
    project_to_sphere: bool = True  # map outputs onto the unit sphere, where GLO latents live
    categories: int = 0  # > 0: the first noise coordinate picks one of this many equally likely categories (0: off)
    # > 0: the mapper starts from a Gaussian mixture of this many components fitted to the GLO codes; the first noise
    # coordinate picks a component by its weight, the other latent_dim coordinates place the code in it (0: off)
    mixture: int = 0


@dataclass
class MapperArch(MapperConfig):
    """Everything that builds a :class:`Mapper`; saved as ``config.json`` beside the weights."""

    noise_dim: int = 32
    latent_dim: int = 64

    @classmethod
    def of(cls, cfg: MapperConfig, noise_dim: int, latent_dim: int) -> MapperArch:
        return cls(**asdict(cfg), noise_dim=noise_dim, latent_dim=latent_dim)


def upsampling_plan(image_size: int) -> tuple[int, int]:
    """Return (start resolution, number of stride-2 upsamplings) for a square image size.

    28 -> (7, 2), as in the GLANN MNIST generator; 32 -> (4, 3); 64 -> (4, 4), as in DCGAN.
    """
    for base in (7, 4):
        s, k = image_size, 0
        while s % 2 == 0 and s > base:
            s, k = s // 2, k + 1
        if s == base and k >= 1:
            return base, k
    raise ValueError(f"image_size {image_size} must be 4*2^k or 7*2^k with k >= 1 (e.g. 28, 32, 64, 128)")


class Generator(nn.Module):
    """Linear(latent -> hidden) -> Linear(-> C0 x r0 x r0) -> k stride-2 transposed convs -> sigmoid.

    For 28 px this is the GLANN paper's MNIST generator: 64 -> 1024 -> 128x7x7 -> 64x14x14 -> 1x28x28.
    Outputs are in [0, 1].
    """

    def __init__(self, arch: GeneratorArch):
        super().__init__()
        self.arch = arch
        r0, k = upsampling_plan(arch.image_size)
        c0 = arch.base_channels * 2 ** (k - 1)
        self.start_shape = (c0, r0, r0)
        norm1d = nn.BatchNorm1d if arch.batch_norm else (lambda n: nn.Identity())
        norm2d = nn.BatchNorm2d if arch.batch_norm else (lambda n: nn.Identity())
        self.fc = nn.Sequential(
            nn.Linear(arch.latent_dim, arch.hidden_dim), norm1d(arch.hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(arch.hidden_dim, c0 * r0 * r0), norm1d(c0 * r0 * r0), nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        c = c0
        for _ in range(k - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=not arch.batch_norm), norm2d(c // 2),
                       nn.ReLU(inplace=True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, arch.channels, 4, 2, 1), nn.Sigmoid()]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], *self.start_shape)
        return self.deconv(h)


class Mapper(nn.Module):
    """IMLE mapper: an MLP from Gaussian noise to the GLO latent space (optionally onto its sphere).

    With ``categories`` = K > 0 the prior has a discrete part. The first noise coordinate picks one of K equally
    likely categories (its normal CDF cut into K equal slices), the other coordinates are the continuous noise, and
    each category adds its own learned vector to the first layer's pre-activations: equivalent to feeding a one-hot
    category beside the noise. A continuous map from a connected Gaussian must pass through the space between
    separated modes, and the samples it puts there are never data-like; a category boundary is a jump instead, so
    different categories can settle on different modes with nothing in between (BENCHMARKS.md, "Categories").
    The noise a sampler draws is unchanged (standard normal, ``noise_dim`` coordinates).

    With ``mixture`` = K > 0 the mapper starts from a Gaussian mixture fitted to the GLO codes (full covariances; see
    :mod:`glann.mixture`), which IMLE then corrects. Noise has ``latent_dim + 1`` coordinates: the first picks a
    component by its weight (its normal CDF against the cumulative weights), the others are the standard normal that
    the component's Cholesky factor turns into a draw ``b``. The MLP maps ``b`` to a residual, ``b + MLP(b)``, whose
    last layer starts at zero, so before any IMLE round the mapper samples the mixture itself.
    """

    mixture_cdf: torch.Tensor  # buffers of a mixture mapper: (K,) cumulative weights,
    mixture_means: torch.Tensor  # (K, d) means,
    mixture_chol: torch.Tensor  # (K, d, d) Cholesky factors of the covariances

    def __init__(self, arch: MapperArch):
        super().__init__()
        self.arch = arch
        k, m, d = arch.categories, arch.mixture, arch.latent_dim
        if m and (k or arch.noise_dim != d + 1):
            raise ValueError(f"a mixture mapper takes latent_dim + 1 = {d + 1} noise coordinates and no categories, "
                             f"got noise_dim={arch.noise_dim}, categories={k}")
        first = d if m else arch.noise_dim - (1 if k else 0)
        dims = [first] + [arch.hidden_dim] * (arch.num_layers - 1) + [d]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.net = nn.Sequential(*layers)
        self.category_bias = nn.Embedding(k, dims[1]) if k else None
        if self.category_bias is not None:  # unit scale: categories start at clearly different outputs
            nn.init.normal_(self.category_bias.weight, std=1.0)
        if m:  # the mixture (set by set_mixture) is a buffer: saved with the weights, never trained
            self.register_buffer("mixture_cdf", torch.linspace(1 / m, 1, m))
            self.register_buffer("mixture_means", torch.zeros(m, d))
            self.register_buffer("mixture_chol", torch.eye(d).repeat(m, 1, 1))
            last = self.net[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)  # the residual starts at 0: the untrained mapper samples the mixture itself
            nn.init.zeros_(last.bias)

    def set_mixture(self, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor) -> None:
        """Install a fitted Gaussian mixture: ``weights`` (K,), ``means`` (K, d), full ``covariances`` (K, d, d)."""
        m, d = self.arch.mixture, self.arch.latent_dim
        if weights.shape != (m,) or means.shape != (m, d) or covariances.shape != (m, d, d):
            raise ValueError(f"a {m}-component mixture in {d} dimensions needs weights ({m},), means ({m}, {d}) and "
                             f"covariances ({m}, {d}, {d}); got {tuple(weights.shape)}, {tuple(means.shape)}, "
                             f"{tuple(covariances.shape)}")
        w = weights.double() / weights.double().sum()
        self.mixture_cdf.copy_(torch.cumsum(w, 0))
        self.mixture_means.copy_(means)
        self.mixture_chol.copy_(torch.linalg.cholesky(covariances.double()))

    def component(self, noise: torch.Tensor) -> torch.Tensor:
        """Each noise row's mixture component: Phi(noise[:, 0]) against the cumulative weights."""
        u = torch.special.ndtr(noise[:, 0].float()).contiguous()
        return torch.searchsorted(self.mixture_cdf, u).clamp_(max=self.arch.mixture - 1)

    def mixture_codes(self, noise: torch.Tensor) -> torch.Tensor:
        """The mixture's draw for each noise row: mean + Cholesky factor x the other coordinates (before the residual
        and the projection onto the sphere)."""
        k = self.component(noise)
        eps = noise[:, 1:].to(self.mixture_chol.dtype)
        return self.mixture_means[k] + torch.bmm(self.mixture_chol[k], eps.unsqueeze(2)).squeeze(2)

    def category(self, noise: torch.Tensor) -> torch.Tensor:
        """Each noise row's category in [0, K): Phi(noise[:, 0]) cut into K equal slices, so all are equally likely."""
        u = torch.special.ndtr(noise[:, 0].float())
        return (u * self.arch.categories).long().clamp_(0, self.arch.categories - 1)

    def scale_noise(self, noise: torch.Tensor, temperature: float) -> torch.Tensor:
        """``noise`` at ``temperature``: the continuous coordinates scaled, the category (or mixture component)
        coordinate left alone (so every category keeps its probability)."""
        if self.category_bias is None and not self.arch.mixture:
            return noise * temperature
        return torch.cat([noise[:, :1], noise[:, 1:] * temperature], 1)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        if self.arch.mixture:
            base = self.mixture_codes(noise)
            out = base + self.net(base)
        elif self.category_bias is None:
            out = self.net(noise)
        else:
            h = self.net[0](noise[:, 1:]) + self.category_bias(self.category(noise))
            out = self.net[1:](h)
        return F.normalize(out, dim=1) if self.arch.project_to_sphere else out


# The only classes an artifact may name; loading never imports a class path read from a file.
REGISTRY = {"Generator": (Generator, GeneratorArch), "Mapper": (Mapper, MapperArch)}


def arch_dict(module: Generator | Mapper) -> dict:
    return {"class": type(module).__name__, "arch": asdict(module.arch)}


def build(spec: dict) -> nn.Module:
    name = spec.get("class")
    if name not in REGISTRY:
        raise ValueError(f"unknown network class {name!r}; known: {sorted(REGISTRY)}")
    cls, arch_cls = REGISTRY[name]
    return cls(arch_cls(**spec["arch"]))
