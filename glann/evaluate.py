"""Evaluate a trained pipeline the way papers do: FID, KID, precision/recall on TF-Inception features,
GLANN's own baselines (reconstruction FID, GLO + Gaussian) and memorisation.

Reference features of a dataset split are computed once and cached (``<cache_dir>/<fingerprint>.npy``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from glann import artifacts
from glann.config import NO_INCEPTION, DataConfig, EvalOptions, check_eval_options, resolve_weights
from glann.data import ImageData, load_dataset
from glann.errors import ArtifactError, ConfigError
from glann.files import atomic_write, config_hash, write_json
from glann.images import save_grid, to_float, to_uint8
from glann.knn import nearest_neighbors
from glann.metrics import InceptionFeatures, frechet_distance, kid, load_stats, precision_recall, stats
from glann.modes import cached_classifier, mode_ids, mode_stats, predict_digits
from glann.runtime import resolve_device
from glann.sampler import GlannSampler

log = logging.getLogger(__name__)

def _cache_root(opts: EvalOptions) -> Path:
    return Path(opts.cache_dir).expanduser() if opts.cache_dir else Path.home() / ".cache" / "glann" / "inception"


def uint8_nchw(data: ImageData, idx: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(data.images[idx])


def reference_features(data: ImageData, extractor: InceptionFeatures, opts: EvalOptions) -> np.ndarray:
    n = min(opts.num_real, len(data))
    idx = np.sort(np.random.default_rng(opts.seed).permutation(len(data))[:n])  # random, not "first N"
    weights = resolve_weights(opts.inception_weights)
    wkey = f"{Path(weights).name}-{Path(weights).stat().st_size}" if weights else "torch-fidelity-default"
    key = config_hash([data.fingerprint, n, opts.seed, wkey])
    path = _cache_root(opts) / f"{data.name}_{key}.npy"
    if path.is_file():
        log.info("reference features: cached %s", path)
        return np.load(path)
    feats = extractor(uint8_nchw(data, idx), progress=opts.progress, desc=f"inception ({data.name})")

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.save(f, feats)

    atomic_write(path, write)
    return feats


def _sampler_dir_check(sampler_dir: Path) -> None:
    if not (Path(sampler_dir) / "sampler.json").is_file():
        raise ArtifactError(f"{sampler_dir} is not a sampler directory (no sampler.json)")


def glo_stage_of(sampler_dir: Path) -> Path:
    """The GLO stage next to a run's sampler folder (``<run>/glo``), for the baselines."""
    glo_dir = Path(sampler_dir).resolve().parent / "glo"
    if not (glo_dir / "latents.safetensors").is_file():
        raise ArtifactError(f"recon_fid and glo_gaussian need the run's GLO stage at {glo_dir} (latents.safetensors)")
    return glo_dir


def gaussian_latents(latents: torch.Tensor, num: int, seed: int) -> torch.Tensor:
    """'GLO + Gaussian' baseline: samples of a full-covariance Gaussian fitted to the GLO latents.

    GLO keeps every code on the unit sphere, and its generator never saw another norm; when the latents lie on
    the sphere, the samples are projected onto it as well (as the IMLE mapper's outputs are). Unprojected, the
    baseline also pays for norms the generator was never trained on.
    """
    z = latents.double()
    mean = z.mean(0)
    cov = torch.cov(z.T) + 1e-6 * torch.eye(z.shape[1], dtype=z.dtype)
    dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    torch.manual_seed(seed)
    samples = dist.sample((num,))
    if torch.allclose(z.norm(dim=1), torch.ones(len(z), dtype=z.dtype), atol=1e-3):
        samples = torch.nn.functional.normalize(samples, dim=1)
    return samples.float()


def memorization(samples: np.ndarray, train: ImageData, test: ImageData, out_dir: Path,
                 threshold_quantile: float = 0.01, chunk: int = 1024) -> dict:
    """Pixel-space L2 distance from each sample to its nearest training image, against the same for held-out
    test images. A sample is a near-copy when it is closer to the training set than 99% of test images are."""
    def flat(a: np.ndarray) -> torch.Tensor:
        return to_float(a, channels_last=False).reshape(len(a), -1)

    train_flat = flat(train.images)
    s_idx, s_dist = nearest_neighbors(train_flat, flat(samples), device="cpu")
    n_test = min(len(test), len(samples))
    _, t_dist = nearest_neighbors(train_flat, flat(test.images[:n_test]), device="cpu")
    threshold = float(torch.quantile(t_dist, threshold_quantile))
    near = (s_dist < threshold).float().mean().item()
    order = torch.argsort(s_dist)[:16]
    pairs = []
    for i in order.tolist():
        pairs += [samples[i], train.images[s_idx[i]]]
    figure = save_grid(to_float(np.stack(pairs), channels_last=False), Path(out_dir) / "memorization_closest_pairs.png",
                       nrow=8)
    return {"memorization/sample_nn_dist_median": float(s_dist.median()),
            "memorization/test_nn_dist_median": float(t_dist.median()),
            "memorization/near_copy_threshold": threshold,
            "memorization/near_copy_fraction": near,
            "memorization/figure": str(figure)}


def evaluate(sampler_dir: Path | None, data_cfg: DataConfig, opts: EvalOptions, out_dir: Path,
             train_cfg: DataConfig | None = None, images: np.ndarray | None = None) -> dict:
    """Compute ``opts.metrics`` for the sampler at ``sampler_dir`` (or for saved ``images``, uint8 (N, H, W, C))
    against ``data_cfg``, the reference split; writes ``metrics.json`` and figures into ``out_dir``.

    ``opts.num_samples`` samples are drawn with ``opts.seed`` (or the first ``num_samples`` of ``images`` are used).
    ``train_cfg`` is the training split, needed by ``memorization``. ``recon_fid`` and ``glo_gaussian`` need a
    sampler folder inside a run (they read the run's GLO stage). Returns the metrics as a flat dict.
    """
    check_eval_options(opts)
    out_dir = Path(out_dir)
    device = resolve_device(opts.device)
    sampler = None
    if images is None:
        if sampler_dir is None:
            raise ConfigError("give sampler_dir=<run>/sampler or images=<samples.npz>")
        sampler_dir = Path(sampler_dir)
        _sampler_dir_check(sampler_dir)
        sampler = GlannSampler.from_pretrained(sampler_dir, device=device)
        shape = sampler.image_shape
    else:
        needs_run = [m for m in opts.metrics if m in ("recon_fid", "glo_gaussian")]
        if needs_run:
            raise ConfigError(f"{needs_run} need a trained sampler_dir, not saved images")
        if len(images) < opts.num_samples:
            raise ConfigError(f"images holds {len(images)} samples, fewer than eval.num_samples={opts.num_samples}")
        h, w, c = images.shape[1:]
        shape = (c, h, w)
    reference = load_dataset(data_cfg, opts.seed)
    if reference.shape != shape:
        raise ConfigError(f"data {data_cfg.name} has images of shape {reference.shape}, the samples have {shape}; "
                          "set data.image_size/data.channels to match")
    train = None
    if "memorization" in opts.metrics:  # checked before any expensive work
        if train_cfg is None:
            raise ConfigError("memorization needs the training split (train_data)")
        train = load_dataset(train_cfg, opts.seed)
        if train.fingerprint == reference.fingerprint:
            raise ConfigError("memorization compares samples with held-out images, but the reference data is the "
                              "training set itself; use a dataset with a test split (e.g. data=mnist)")
    results: dict = {"num_samples": opts.num_samples}
    if opts.temperature != 1.0:
        results["temperature"] = opts.temperature
    if sampler is not None:
        samples = sampler(opts.num_samples, seed=opts.seed, batch_size=500, progress=opts.progress,
                          temperature=opts.temperature).images
    else:
        assert images is not None
        samples = np.ascontiguousarray(images[:opts.num_samples])
    save_grid(to_float(samples[:100]), out_dir / "samples.png")
    needs_inception = [m for m in opts.metrics if m not in NO_INCEPTION]
    if needs_inception:
        extractor = InceptionFeatures(opts.inception_weights, device, opts.batch_size)
        fake = None
        if any(m in opts.metrics for m in ("fid", "kid", "pr")):  # the baselines alone need no sample features
            fake = extractor(samples, progress=opts.progress, desc="inception (samples)")
        real = None
        if any(m in opts.metrics for m in ("kid", "pr")) or not opts.fid_stats:
            real = reference_features(reference, extractor, opts)
            results["num_real"] = len(real)
        ref_stats = load_stats(opts.fid_stats) if opts.fid_stats else stats(real)  # type: ignore[arg-type]

        def fid_of(features: np.ndarray) -> float:
            return frechet_distance(*stats(features), *ref_stats)

        if "fid" in opts.metrics:
            assert fake is not None
            results["fid"] = fid_of(fake)
        if "kid" in opts.metrics:
            assert fake is not None and real is not None
            results["kid"], results["kid_std"] = kid(fake, real, subset_size=min(1000, len(fake), len(real)))
        if "pr" in opts.metrics:
            assert fake is not None and real is not None
            results["precision"], results["recall"] = precision_recall(real, fake, k=3)
        if sampler is not None and sampler_dir is not None and ("recon_fid" in opts.metrics
                                                                or "glo_gaussian" in opts.metrics):
            glo_dir = glo_stage_of(sampler_dir)
            latents = artifacts.load_tensors(glo_dir / "latents.safetensors")["latents"]
            if "recon_fid" in opts.metrics:
                pick = torch.randperm(len(latents), generator=torch.Generator().manual_seed(opts.seed))
                recon = to_uint8(sampler.decode(latents[pick[:opts.num_samples]]))
                results["recon_fid"] = fid_of(extractor(recon, opts.progress, "inception (reconstructions)"))
            if "glo_gaussian" in opts.metrics:
                gauss = to_uint8(sampler.decode(gaussian_latents(latents, opts.num_samples, opts.seed)))
                save_grid(to_float(gauss[:100]), out_dir / "glo_gaussian_samples.png")
                results["glo_gaussian_fid"] = fid_of(extractor(gauss, opts.progress, "inception (GLO+Gaussian)"))
    if train is not None:
        results.update(memorization(samples.transpose(0, 3, 1, 2), train, reference, out_dir))
    if "modes" in opts.metrics:
        if shape != (3, 28, 28):
            raise ConfigError(f"modes needs stacked-MNIST samples (3x28x28 images), not {shape}")
        root = (train_cfg or data_cfg).root or "data"
        classifier = cached_classifier(root, opts.cache_dir)
        results.update(mode_stats(mode_ids(samples.transpose(0, 3, 1, 2), lambda x: predict_digits(classifier, x))))
    write_json(out_dir / "metrics.json", results)
    return results


def format_table(results: dict) -> str:
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in results.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"{'metric':<{width}}  value", "-" * (width + 8)] + [f"{k:<{width}}  {v}" for k, v in rows])
