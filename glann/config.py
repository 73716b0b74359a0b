"""Config schemas: one dataclass per Hydra config group, registered in the ConfigStore.

Typos and wrong types fail when Hydra composes the config (before any data is loaded);
cross-field checks live in :func:`validate`, which every entry point calls first.
Everything outside ``train.py``/``sample.py``/this file takes these dataclasses, not Hydra objects.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

from glann.errors import ConfigError
from glann.nets import GeneratorConfig, MapperConfig, upsampling_plan


@dataclass
class DataConfig:
    name: str = "embedded"  # embedded | mnist | fashion_mnist | cifar10 | celeba | folder | tiny
    root: str | None = None  # dataset root (torchvision layout) or image folder
    download: bool = False  # let torchvision download when root lacks the files
    split: str = "train"
    image_size: int | None = None  # resize to this square size; None keeps native size
    channels: int | None = None  # 1 or 3; None keeps native channels
    center_crop: int | None = None  # centre crop before resizing (CelebA: 140)
    limit: int | None = None  # keep the first N images (after a seeded shuffle)
    on_corrupt: str = "skip"  # folder: unreadable image -> "skip" (warn + count) or "error"
    cache_dir: str | None = None  # where folder/celeba arrays are cached (.npy, memory-mapped)
    num_tiny: int = 64  # tiny: number of synthetic images
    num_stacked: int = 60000  # stacked_mnist: number of 3-digit images


@dataclass
class GLOConfig:
    latent_dim: int = 64
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    epochs: int = 25
    batch_size: int = 128
    lr_generator: float = 1e-3
    lr_latent: float = 1e-2
    beta1: float = 0.5
    beta2: float = 0.999
    lr_decay_every: int = 50  # epochs between lr decays (step decay)
    lr_decay: float = 0.5
    latent_init: str = "pca"  # pca | random
    latent_optimizer: str = "row_adam"  # row_adam (per-code bias correction) | sparse_adam (torch.optim.SparseAdam)
    latent_noise: float = 0.0  # std of Gaussian noise added to each code (then re-normalised) before the generator
    grid_every: int = 1  # epochs between reconstruction grids (0: never)
    checkpoint_every: int = 1  # epochs between training-state checkpoints
    checkpoint_minutes: float = 10.0  # ... and at most this long between them (mid-epoch)
    # How the generator's steps run (glann.runtime.Accel); fp32 / false / false run the plain fp32 step.
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast of the generator's forward pass (fp16 adds a GradScaler)
    channels_last: bool = False  # generator weights and activations in NHWC (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the generator (minutes of compilation first; for long GPU runs)


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class LossConfig:
    name: str = "lap1"  # lap1 | vgg
    lap_levels: int = 4  # Laplacian pyramid levels (incl. the low-pass residual)
    vgg_weights: str | None = None  # local VGG16 state dict; None: torchvision's ImageNet weights
    vgg_layers: list[int] = field(default_factory=lambda: [1, 2, 3])  # VGG16 blocks tapped
    vgg_weight: float = 1.0  # weight of the feature term against the pixel L1 term
    vgg_resize: int | None = None  # resize images before VGG (None: native size)


@dataclass
class IMLEConfig:
    noise_dim: int = 32
    mapper: MapperConfig = field(default_factory=MapperConfig)
    rounds: int = 20  # matching rounds
    epochs_per_round: int = 5  # staleness: epochs trained on one matching
    samples_per_latent: int = 2  # m: m*N noise samples drawn per round
    batch_size: int = 256
    lr: float = 1e-3
    lr_decay_every: int = 0  # rounds between lr decays (step decay); 0 keeps the lr constant
    lr_decay: float = 0.5
    beta1: float = 0.5
    beta2: float = 0.999
    knn_device: str = "auto"  # auto | cpu | cuda
    grid_every: int = 1  # rounds between sample grids (0: never)
    matching: str = "nearest"  # nearest | rejection (RS-IMLE) | adaptive (Adaptive IMLE) | capacity; glann/matching.py
    rejection_eps: float | None = None  # rejection: drop samples closer than this to any data latent
    # rejection: each round, the radius that rejects this fraction of the samples (the q-quantile of their distances
    # to the data): a radius that shrinks as the mapper converges. With rejection_eps too, the larger of the two.
    # rejection needs rejection_eps or rejection_quantile.
    rejection_quantile: float | None = None
    adaptive_gamma: float = 0.04  # adaptive: a re-matched point's radius becomes (1 - gamma) * its distance
    adaptive_resample_every: int = 10  # adaptive: re-match a point at the latest this many rounds after its match
    capacity: int = 1  # capacity: the most data points one generated sample may serve in a round
    capacity_k: int = 16  # capacity: each point's candidates, its capacity_k nearest samples
    seed: int | None = None  # the IMLE stage's seed (mapper init, noise); None: the run's seed
    ema: float = 0.0  # decay of a per-step moving average of the mapper's weights, which the sampler gets; 0: off


@dataclass
class SamplerConfig:
    grid_size: int = 100  # images in the final sample grid
    batch_size: int = 500
    seed: int = 0
    # density-correction strength the exported sampler uses by default (glann.resample; 0: off)
    correction: float = 0.5
    candidates: int = 6  # codes drawn per image when correcting, one kept (glann.resample)
    temperature: float = 1.0  # noise scale the exported sampler uses by default (1: the trained or fitted prior)


@dataclass
class EvalOptions:
    metrics: list[str] = field(default_factory=list)  # fid kid pr recon_fid glo_gaussian memorization
    num_samples: int = 10000
    num_real: int = 10000  # reference images whose features are computed (and cached)
    seed: int = 0
    batch_size: int = 50
    inception_weights: str | None = None  # local weights file; None: $GLANN_FID_WEIGHTS or download
    fid_stats: str | None = None  # precomputed reference stats (.npz with mu, sigma) for FID
    cache_dir: str | None = None  # reference features cache; None: ~/.cache/glann/inception
    device: str = "auto"
    progress: bool = True
    temperature: float | None = None  # noise scale when sampling (1: the trained prior); None: the sampler's default
    correction: float | None = None  # density-correction strength (glann.resample); None: the sampler's default
    candidates: int | None = None  # codes drawn per image when correcting; None: the sampler's default


@dataclass
class LoggerConfig:
    name: str = "none"  # none (stats.jsonl and PNG grids only) | tensorboard (also event files under <run>/tensorboard)
    every_n_steps: int = 50  # the training loss is logged every N optimiser steps


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    glo: GLOConfig = field(default_factory=GLOConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    imle: IMLEConfig = field(default_factory=IMLEConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False  # torch.use_deterministic_algorithms
    num_threads: int | None = None  # torch CPU threads (None: torch default)
    run_name: str = "glann"
    resume_dir: str | None = None  # continue/skip stages of an existing run folder
    cache_dir: str | None = None  # content-addressed GLO stages shared by runs and sweep jobs; None: off
    stages: list[str] = field(default_factory=lambda: ["glo", "imle", "sampler"])
    eval: EvalOptions = field(default_factory=EvalOptions)  # metrics after training (none by default)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # The metric glann-train returns (for sweepers); auto: eval/fid when computed, else imle/nn_dist.
    objective: str = "auto"


@dataclass
class SampleConfig:
    sampler_dir: str | None = None  # required
    num_samples: int = 64
    seed: int = 0
    batch_size: int = 500
    output: str | None = None  # *.npz file or a folder of PNGs; default samples.npz in the run dir
    grid: bool = True  # also write a grid PNG next to the output
    device: str = "auto"
    temperature: float | None = None  # noise scale (1: the trained prior); None: the sampler's default
    correction: float | None = None  # density-correction strength (glann.resample); None: the sampler's default
    candidates: int | None = None  # codes drawn per image when correcting; None: the sampler's default
    mode: str = "sample"  # sample | interpolate (one row of the grid per pair of random endpoints)
    interpolation_steps: int = 8  # images per pair, both endpoints included
    num_pairs: int = 8  # interpolate: number of pairs (rows)
    interpolation_space: str = "latent"  # latent: slerp between mapped codes | noise: slerp between noise vectors


@dataclass
class InvertConfig:
    sampler_dir: str | None = None  # required: a run's sampler/ folder
    images: str | None = None  # required: a folder of images, or an .npz with "images" (uint8 N x H x W x C)
    output: str | None = None  # *.npz; default: inversion.npz in the run folder
    limit: int | None = None  # invert only the first N images
    steps: int = 100  # Adam steps per code
    lr: float = 0.05
    batch_size: int = 256  # images optimised together
    init: str = "mapper"  # mapper: the closest of `candidates` mapped samples | random: `restarts` random codes
    restarts: int = 1  # starting codes per image; the best is kept
    candidates: int = 4096  # init=mapper: mapped samples to start from
    seed: int = 0
    grid_size: int = 32  # originals over reconstructions in <output>_grid.png (0: no grid)
    device: str = "auto"


@dataclass
class EvalConfig:
    sampler_dir: str | None = None  # a trained sampler folder to evaluate
    images: str | None = None  # or: saved samples (.npz, uint8 (N, H, W, C) under "images") to score
    sweep_dir: str | None = None  # or: a multirun folder to tabulate
    data: DataConfig = field(default_factory=DataConfig)  # reference split (FID/KID/PR, memorisation "test")
    train_data: DataConfig = field(default_factory=DataConfig)  # training split (memorisation)
    eval: EvalOptions = field(default_factory=lambda: EvalOptions(metrics=["fid", "kid", "pr"]))


STAGES = ("glo", "imle", "sampler")


def _positive(cfg: Any, prefix: str, names: list[str]) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is None or value <= 0:
            raise ConfigError(f"{prefix}{name} must be positive, got {value}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Cross-field checks; each error names the offending config key."""
    _positive(cfg.glo, "glo.", ["latent_dim", "epochs", "batch_size", "lr_generator", "lr_latent",
                                "lr_decay_every", "lr_decay", "checkpoint_every", "checkpoint_minutes"])
    _positive(cfg.glo.generator, "glo.generator.", ["hidden_dim", "base_channels"])
    _positive(cfg.imle, "imle.", ["noise_dim", "epochs_per_round", "samples_per_latent", "batch_size", "lr"])
    if cfg.imle.rounds is None or cfg.imle.rounds < 0 or (cfg.imle.rounds == 0 and not cfg.imle.mapper.mixture):
        raise ConfigError(f"imle.rounds must be positive (0 only with imle.mapper.mixture > 0: the mixture alone), got "
                          f"{cfg.imle.rounds}")
    _positive(cfg.imle.mapper, "imle.mapper.", ["hidden_dim", "num_layers"])
    if cfg.imle.lr_decay_every < 0:
        raise ConfigError(f"imle.lr_decay_every must be >= 0 (0: constant lr), got {cfg.imle.lr_decay_every}")
    if not 0.0 < cfg.imle.lr_decay <= 1.0:
        raise ConfigError(f"imle.lr_decay must be in (0, 1], got {cfg.imle.lr_decay}")
    check_matching(cfg.imle)
    check_categories(cfg.imle)
    check_mixture(cfg.imle, cfg.glo.latent_dim)
    _positive(cfg.sampler, "sampler.", ["grid_size", "batch_size"])
    check_correction(cfg.sampler.correction, "sampler.correction")
    check_candidates(cfg.sampler.candidates, "sampler.candidates")
    check_temperature(cfg.sampler.temperature, "sampler.temperature")
    _positive(cfg.loss, "loss.", ["lap_levels"])
    for key, value in (("glo.beta1", cfg.glo.beta1), ("glo.beta2", cfg.glo.beta2),
                       ("imle.beta1", cfg.imle.beta1), ("imle.beta2", cfg.imle.beta2)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key} must be in [0, 1), got {value}")
    if cfg.glo.precision not in PRECISIONS:
        raise ConfigError(f"glo.precision must be one of {list(PRECISIONS)}, got {cfg.glo.precision!r}")
    if cfg.glo.latent_init not in ("pca", "random"):
        raise ConfigError(f"glo.latent_init must be 'pca' or 'random', got {cfg.glo.latent_init!r}")
    check_latent_noise(cfg.glo.latent_noise)
    check_ema(cfg.imle.ema)
    if cfg.glo.latent_optimizer not in ("row_adam", "sparse_adam"):
        raise ConfigError(f"glo.latent_optimizer must be 'row_adam' or 'sparse_adam', got {cfg.glo.latent_optimizer!r}")
    if cfg.loss.name not in ("lap1", "vgg"):
        raise ConfigError(f"loss.name must be 'lap1' or 'vgg', got {cfg.loss.name!r}")
    if cfg.loss.name == "vgg" and not set(cfg.loss.vgg_layers) <= {1, 2, 3, 4, 5}:
        raise ConfigError(f"loss.vgg_layers must be VGG16 blocks 1-5, got {list(cfg.loss.vgg_layers)}")
    if cfg.data.on_corrupt not in ("skip", "error"):
        raise ConfigError(f"data.on_corrupt must be 'skip' or 'error', got {cfg.data.on_corrupt!r}")
    if cfg.data.channels not in (None, 1, 3):
        raise ConfigError(f"data.channels must be 1 or 3, got {cfg.data.channels}")
    if cfg.data.image_size is not None:
        try:
            upsampling_plan(cfg.data.image_size)
        except ValueError as e:
            raise ConfigError(f"data.image_size={cfg.data.image_size}: the generator's {e}") from None
    if cfg.data.limit is not None and cfg.data.limit <= 0:
        raise ConfigError(f"data.limit must be positive, got {cfg.data.limit}")
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
    if cfg.eval.metrics:
        check_eval_options(cfg.eval)
    if cfg.logger.name not in ("none", "tensorboard"):
        raise ConfigError(f"logger.name must be 'none' or 'tensorboard', got {cfg.logger.name!r}")
    _positive(cfg.logger, "logger.", ["every_n_steps"])
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {cfg.device!r}")
    return cfg


def validate_sample(cfg: SampleConfig) -> SampleConfig:
    if not cfg.sampler_dir:
        raise ConfigError("sampler_dir is required: glann-sample sampler_dir=outputs/<run>/<time>/sampler")
    _positive(cfg, "", ["num_samples", "batch_size"])
    if cfg.temperature is not None:
        check_temperature(cfg.temperature, "temperature")
    if cfg.correction is not None:
        check_correction(cfg.correction, "correction")
    if cfg.candidates is not None:
        check_candidates(cfg.candidates, "candidates")
    if cfg.mode not in ("sample", "interpolate"):
        raise ConfigError(f"mode must be 'sample' or 'interpolate', got {cfg.mode!r}")
    if cfg.mode == "interpolate":
        if cfg.interpolation_steps < 2:
            raise ConfigError(f"interpolation_steps must be at least 2 (both endpoints), got {cfg.interpolation_steps}")
        _positive(cfg, "", ["num_pairs"])
        if cfg.interpolation_space not in ("latent", "noise"):
            raise ConfigError(f"interpolation_space must be 'latent' or 'noise', got {cfg.interpolation_space!r}")
    return cfg


def validate_invert(cfg: InvertConfig) -> InvertConfig:
    if not cfg.sampler_dir:
        raise ConfigError("sampler_dir is required: glann-invert sampler_dir=outputs/<run>/<time>/sampler images=...")
    if not cfg.images:
        raise ConfigError("images is required: a folder of images or an .npz holding an 'images' array")
    _positive(cfg, "", ["steps", "lr", "batch_size", "restarts", "candidates"])
    if cfg.limit is not None and cfg.limit <= 0:
        raise ConfigError(f"limit must be positive, got {cfg.limit}")
    if cfg.grid_size < 0:
        raise ConfigError(f"grid_size must be >= 0, got {cfg.grid_size}")
    if cfg.init not in ("mapper", "random"):
        raise ConfigError(f"init must be 'mapper' or 'random', got {cfg.init!r}")
    if cfg.output and not cfg.output.endswith(".npz"):
        raise ConfigError(f"output must be an .npz file, got {cfg.output}")
    return cfg


MATCHING_MODES = ("nearest", "rejection", "adaptive", "capacity")


def check_mode(mode: str) -> str:
    if mode not in MATCHING_MODES:
        raise ConfigError(f"imle.matching must be one of {list(MATCHING_MODES)}, got {mode!r}")
    return mode


def check_eps(eps: Any) -> float:
    if eps is None or isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
            or eps <= 0:
        raise ConfigError(f"imle.rejection_eps must be a finite number > 0 (a distance in latent space), got {eps}")
    return float(eps)


def check_latent_noise(sigma: Any) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise ConfigError(f"glo.latent_noise must be a finite number >= 0 (the std of the noise on each code "
                          f"coordinate; 0: off), got {sigma}")
    return float(sigma)


def check_ema(decay: Any) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise ConfigError(f"imle.ema must be in [0, 1) (the moving average's decay per step, e.g. 0.999; 0: off), "
                          f"got {decay}")
    return float(decay)


def check_quantile(q: Any) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q < 1.0:
        raise ConfigError(f"imle.rejection_quantile must be in (0, 1) (the fraction of samples each round rejects), "
                          f"got {q}")
    return float(q)


def check_gamma(gamma: Any) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 < gamma < 1.0:
        raise ConfigError(f"imle.adaptive_gamma must be in (0, 1), got {gamma}")
    return float(gamma)


def check_interval(every: Any) -> int:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"imle.adaptive_resample_every must be an integer >= 1 (rounds), got {every}")
    return every


# Settings added after stages were already being written. A stage's digest and resume key leave each out while it
# has the value that reproduces the older behaviour, so stages trained before it existed are still reused and resumed.
_LATER_SETTINGS: dict[str, Callable[[dict], tuple[str, ...]]] = {
    "glo": lambda d: ("latent_noise",) if d.get("latent_noise") == 0 else (),
    "imle": lambda d: (("capacity", "capacity_k") if d.get("matching") != "capacity" else ())
    + (("seed",) if d.get("seed") is None else ()) + (("ema",) if d.get("ema") == 0 else ())
    + (("mapper.categories",) if d.get("mapper", {}).get("categories") == 0 else ())
    + (("mapper.mixture",) if d.get("mapper", {}).get("mixture") == 0 else ()),
}


def stage_settings(group: str, cfg: Any) -> dict:
    """``asdict`` of a config group, without the later settings that do not change what the stage computes (a dotted
    name, ``mapper.categories``, is a key of a nested group)."""
    d = asdict(cfg)
    for key in _LATER_SETTINGS[group](d) if group in _LATER_SETTINGS else ():
        *parents, leaf = key.split(".")
        inner = d
        for p in parents:
            inner = inner[p]
        del inner[leaf]
    return d


def check_count(value: Any, key: str, what: str) -> int:
    """An integer >= 1; the error names ``imle.<key>``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"imle.{key} must be an integer >= 1 ({what}), got {value}")
    return value


def check_categories(cfg: Any) -> Any:
    """Check an IMLE config's ``mapper.categories`` against its ``noise_dim``; return the config."""
    k = cfg.mapper.categories
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"imle.mapper.categories must be an integer >= 0 (0: off), got {k!r}")
    if k == 1:
        raise ConfigError("imle.mapper.categories=1 is one category: use 0 (off) or at least 2")
    if k and cfg.noise_dim < 2:
        raise ConfigError(f"imle.mapper.categories={k} takes the first noise coordinate for the category, so "
                          f"imle.noise_dim must be at least 2 (got {cfg.noise_dim})")
    return cfg


def check_mixture(cfg: Any, latent_dim: int) -> Any:
    """Check an IMLE config's ``mapper.mixture`` and set its ``noise_dim`` to what a mixture mapper draws
    (``latent_dim + 1``: the component, then the draw inside it); return the config."""
    k = cfg.mapper.mixture
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"imle.mapper.mixture must be an integer >= 0 (components; 0: off), got {k!r}")
    if k and cfg.mapper.categories:
        raise ConfigError("imle.mapper.mixture and imle.mapper.categories both pick a discrete part of the prior: "
                          "set one of them to 0")
    if k:
        cfg.noise_dim = latent_dim + 1
    return cfg


def check_matching(cfg: Any) -> Any:
    """Check an IMLE config's matching settings (only those its ``matching`` mode uses); return it."""
    mode = check_mode(getattr(cfg, "matching", "nearest"))
    if mode == "rejection":
        quantile = getattr(cfg, "rejection_quantile", None)
        if quantile is not None:
            check_quantile(quantile)
        if quantile is None or cfg.rejection_eps is not None:
            check_eps(cfg.rejection_eps)
    elif mode == "adaptive":
        check_gamma(cfg.adaptive_gamma)
        check_interval(cfg.adaptive_resample_every)
    elif mode == "capacity":
        check_count(cfg.capacity, "capacity", "data points one sample may serve per round")
        check_count(cfg.capacity_k, "capacity_k", "nearest samples each data point may take")
    return cfg


def check_temperature(value: Any, key: str) -> float:
    """A sampling temperature (noise scale) must be a finite number > 0; the error names ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key} must be a finite number > 0 (1: the trained noise scale), got {value}")
    return float(value)


def check_correction(value: Any, key: str) -> float:
    """A density-correction strength must be a finite number >= 0; the error names ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key} must be a finite number >= 0 (0: off, 0.5: the default), got {value}")
    return float(value)


def check_candidates(value: Any, key: str) -> int:
    """The density correction's codes per image must be an integer >= 2 (it keeps one of them); the error names
    ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ConfigError(f"{key} must be an integer >= 2 (the density correction keeps one of that many codes per "
                          f"image; for plain samples set the correction to 0), got {value!r}")
    return value


# -- evaluation options: pure config checks, run before any expensive work -----------------------------

METRICS = ("fid", "kid", "pr", "recon_fid", "glo_gaussian", "memorization", "modes", "neighbours")
# Fewest samples each metric can be computed from (KID subsets, PR k-NN, a full-rank-ish covariance).
MIN_SAMPLES = {"fid": 10, "kid": 2, "pr": 4, "recon_fid": 10, "glo_gaussian": 10, "memorization": 1, "modes": 1,
               "neighbours": 1}
NO_INCEPTION = ("memorization", "modes", "neighbours")  # metrics computed without Inception features
WEIGHTS_ENV = "GLANN_FID_WEIGHTS"


def resolve_weights(path: str | None = None) -> str | None:
    """The FID Inception weights file to use (``path`` or ``$GLANN_FID_WEIGHTS``); None means torch-fidelity's
    own download."""
    path = path or os.environ.get(WEIGHTS_ENV)
    if path and not Path(path).expanduser().is_file():
        raise ConfigError(f"Inception weights {path} not found: give the path to "
                          "inception-2015-12-05-fid-weights-no-classifier.pth (or pt_inception-2015-12-05-*.pth)")
    return str(Path(path).expanduser()) if path else None


def check_eval_options(opts: EvalOptions) -> None:
    unknown = [m for m in opts.metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"metrics: unknown metric(s) {unknown}; choose from {list(METRICS)}")
    for m in opts.metrics:
        if opts.num_samples < MIN_SAMPLES[m]:
            raise ConfigError(f"num_samples={opts.num_samples} is too small for {m} (needs >= {MIN_SAMPLES[m]})")
    if opts.num_samples <= 0 or opts.num_real <= 0:
        raise ConfigError("num_samples and num_real must be positive")
    if opts.temperature is not None:
        check_temperature(opts.temperature, "eval.temperature")
    if opts.correction is not None:
        check_correction(opts.correction, "eval.correction")
    if opts.candidates is not None:
        check_candidates(opts.candidates, "eval.candidates")
    if opts.fid_stats and not Path(opts.fid_stats).expanduser().is_file():
        raise ConfigError(f"eval.fid_stats={opts.fid_stats}: no such file")
    if any(m not in NO_INCEPTION for m in opts.metrics):
        resolve_weights(opts.inception_weights)


def register_configs() -> None:
    """Register every schema as ``base_<group>`` so YAML options can extend it."""
    cs = ConfigStore.instance()
    cs.store(name="base_train", node=TrainConfig)
    cs.store(name="base_sample", node=SampleConfig)
    cs.store(name="base_invert", node=InvertConfig)
    cs.store(name="base_eval", node=EvalConfig)
    cs.store(group="data", name="base_data", node=DataConfig)
    cs.store(group="glo", name="base_glo", node=GLOConfig)
    cs.store(group="loss", name="base_loss", node=LossConfig)
    cs.store(group="imle", name="base_imle", node=IMLEConfig)
    cs.store(group="sampler", name="base_sampler", node=SamplerConfig)
    cs.store(group="eval", name="base_eval_options", node=EvalOptions)
    cs.store(group="logger", name="base_logger", node=LoggerConfig)
