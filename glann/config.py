"""Config schemas: one dataclass per Hydra config group, registered in the ConfigStore.

Typos and wrong types fail when Hydra composes the config (before any data is loaded);
cross-field checks live in :func:`validate`, which every entry point calls first.
Everything outside ``train.py``/``sample.py``/this file takes these dataclasses, not Hydra objects.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, List, Optional

from glann.errors import ConfigError


@dataclass
class DataConfig:
    name: str = "embedded"  # embedded | mnist | fashion_mnist | cifar10 | celeba | folder | tiny
    root: Optional[str] = None  # dataset root (torchvision layout) or image folder
    download: bool = False  # let torchvision download when root lacks the files
    split: str = "train"
    image_size: Optional[int] = None  # resize to this square size; None keeps native size
    channels: Optional[int] = None  # 1 or 3; None keeps native channels
    center_crop: Optional[int] = None  # centre crop before resizing (CelebA: 140)
    limit: Optional[int] = None  # keep the first N images (after a seeded shuffle)
    on_corrupt: str = "skip"  # folder: unreadable image -> "skip" (warn + count) or "error"
    cache_dir: Optional[str] = None  # where folder/celeba arrays are cached (.npy, memory-mapped)
    num_tiny: int = 64  # tiny: number of synthetic images
    num_stacked: int = 60000  # stacked_mnist: number of 3-digit images


@dataclass
class GeneratorConfig:
    hidden_dim: int = 1024  # width of the first fully connected layer
    base_channels: int = 64  # channels before the last transposed conv; doubled per earlier stage
    batch_norm: bool = True


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
    grid_every: int = 1  # epochs between reconstruction grids (0: never)
    checkpoint_every: int = 1  # epochs between training-state checkpoints
    checkpoint_minutes: float = 10.0  # ... and at most this long between them (mid-epoch)


@dataclass
class LossConfig:
    name: str = "lap1"  # lap1 | vgg
    lap_levels: int = 4  # Laplacian pyramid levels (incl. the low-pass residual)
    vgg_weights: Optional[str] = None  # local VGG16 state dict; None: torchvision's ImageNet weights
    vgg_layers: List[int] = field(default_factory=lambda: [1, 2, 3])  # VGG16 blocks tapped
    vgg_weight: float = 1.0  # weight of the feature term against the pixel L1 term
    vgg_resize: Optional[int] = None  # resize images before VGG (None: native size)


@dataclass
class MapperConfig:
    hidden_dim: int = 256
    num_layers: int = 3  # linear layers
    project_to_sphere: bool = True  # map outputs onto the unit sphere, where GLO latents live


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


@dataclass
class SamplerConfig:
    grid_size: int = 100  # images in the final sample grid
    batch_size: int = 500
    seed: int = 0


@dataclass
class EvalOptions:
    metrics: List[str] = field(default_factory=list)  # fid kid pr recon_fid glo_gaussian memorization
    num_samples: int = 10000
    num_real: int = 10000  # reference images whose features are computed (and cached)
    seed: int = 0
    batch_size: int = 50
    inception_weights: Optional[str] = None  # local weights file; None: $GLANN_FID_WEIGHTS or download
    fid_stats: Optional[str] = None  # precomputed reference stats (.npz with mu, sigma) for FID
    cache_dir: Optional[str] = None  # reference features cache; None: ~/.cache/glann/inception
    device: str = "auto"
    progress: bool = True


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
    num_threads: Optional[int] = None  # torch CPU threads (None: torch default)
    run_name: str = "glann"
    resume_dir: Optional[str] = None  # continue/skip stages of an existing run folder
    cache_dir: Optional[str] = None  # content-addressed GLO stages shared by runs and sweep jobs; None: off
    stages: List[str] = field(default_factory=lambda: ["glo", "imle", "sampler"])
    eval: EvalOptions = field(default_factory=EvalOptions)  # metrics after training (none by default)


@dataclass
class SampleConfig:
    sampler_dir: Optional[str] = None  # required
    num_samples: int = 64
    seed: int = 0
    batch_size: int = 500
    output: Optional[str] = None  # *.npz file or a folder of PNGs; default samples.npz in the run dir
    grid: bool = True  # also write a grid PNG next to the output
    device: str = "auto"
    mode: str = "sample"  # sample | interpolate (one row of the grid per pair of random endpoints)
    interpolation_steps: int = 8  # images per pair, both endpoints included
    num_pairs: int = 8  # interpolate: number of pairs (rows)
    interpolation_space: str = "latent"  # latent: slerp between mapped codes | noise: slerp between noise vectors


@dataclass
class InvertConfig:
    sampler_dir: Optional[str] = None  # required: a run's sampler/ folder
    images: Optional[str] = None  # required: a folder of images, or an .npz with "images" (uint8 N x H x W x C)
    output: Optional[str] = None  # *.npz; default: inversion.npz in the run folder
    limit: Optional[int] = None  # invert only the first N images
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
    sampler_dir: Optional[str] = None  # a trained sampler folder to evaluate
    sweep_dir: Optional[str] = None  # or: a multirun folder to tabulate
    data: DataConfig = field(default_factory=DataConfig)  # reference split (FID/KID/PR, memorisation "test")
    train_data: DataConfig = field(default_factory=DataConfig)  # training split (memorisation)
    eval: EvalOptions = field(default_factory=lambda: EvalOptions(metrics=["fid", "kid", "pr"]))


STAGES = ("glo", "imle", "sampler")


def _positive(cfg: Any, prefix: str, names: List[str]) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is None or value <= 0:
            raise ConfigError(f"{prefix}{name} must be positive, got {value}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Cross-field checks; each error names the offending config key."""
    _positive(cfg.glo, "glo.", ["latent_dim", "epochs", "batch_size", "lr_generator", "lr_latent",
                                "lr_decay_every", "lr_decay", "checkpoint_every", "checkpoint_minutes"])
    _positive(cfg.glo.generator, "glo.generator.", ["hidden_dim", "base_channels"])
    _positive(cfg.imle, "imle.", ["noise_dim", "rounds", "epochs_per_round", "samples_per_latent",
                                  "batch_size", "lr"])
    _positive(cfg.imle.mapper, "imle.mapper.", ["hidden_dim", "num_layers"])
    if cfg.imle.lr_decay_every < 0:
        raise ConfigError(f"imle.lr_decay_every must be >= 0 (0: constant lr), got {cfg.imle.lr_decay_every}")
    if not 0.0 < cfg.imle.lr_decay <= 1.0:
        raise ConfigError(f"imle.lr_decay must be in (0, 1], got {cfg.imle.lr_decay}")
    _positive(cfg.sampler, "sampler.", ["grid_size", "batch_size"])
    _positive(cfg.loss, "loss.", ["lap_levels"])
    for key, value in (("glo.beta1", cfg.glo.beta1), ("glo.beta2", cfg.glo.beta2),
                       ("imle.beta1", cfg.imle.beta1), ("imle.beta2", cfg.imle.beta2)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key} must be in [0, 1), got {value}")
    if cfg.glo.latent_init not in ("pca", "random"):
        raise ConfigError(f"glo.latent_init must be 'pca' or 'random', got {cfg.glo.latent_init!r}")
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
    if cfg.data.image_size is not None and not _generator_size_ok(cfg.data.image_size):
        raise ConfigError(f"data.image_size={cfg.data.image_size} is not 4*2^k or 7*2^k (k>=1), "
                          "which the generator needs (e.g. 28, 32, 64, 128)")
    if cfg.data.limit is not None and cfg.data.limit <= 0:
        raise ConfigError(f"data.limit must be positive, got {cfg.data.limit}")
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
    if cfg.eval.metrics:
        from glann.evaluate import check_options

        check_options(cfg.eval)
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {cfg.device!r}")
    return cfg


def validate_sample(cfg: SampleConfig) -> SampleConfig:
    if not cfg.sampler_dir:
        raise ConfigError("sampler_dir is required: glann-sample sampler_dir=outputs/<run>/<time>/sampler")
    _positive(cfg, "", ["num_samples", "batch_size"])
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


def _generator_size_ok(size: int) -> bool:
    for base in (4, 7):
        s = size
        k = 0
        while s % 2 == 0 and s > base:
            s //= 2
            k += 1
        if s == base and k >= 1:
            return True
    return False


def to_dict(cfg: Any) -> Any:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg


def register_configs() -> None:
    """Register every schema as ``base_<group>`` so YAML options can extend it."""
    from hydra.core.config_store import ConfigStore

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
