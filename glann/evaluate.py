"""Evaluate a trained pipeline the way papers do: FID, KID, precision/recall on TF-Inception features,
GLANN's own baselines (reconstruction FID, GLO + Gaussian) and memorisation.

Reference features of a dataset split are computed once and cached (``<cache_dir>/<fingerprint>.npy``).
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

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


def reference_index(num_images: int, opts: EvalOptions) -> np.ndarray:
    """The images (sorted indices) whose reference features are computed: a seeded random ``num_real`` of them."""
    n = min(opts.num_real, num_images)
    return np.sort(np.random.default_rng(opts.seed).permutation(num_images)[:n])  # random, not "first N"


def reference_features(data: ImageData, extractor: InceptionFeatures, opts: EvalOptions) -> np.ndarray:
    idx = reference_index(len(data), opts)
    n = len(idx)
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


NEIGHBOUR_ROWS = 10


def neighbours_figure(samples: np.ndarray, train: ImageData | np.ndarray, out_dir: Path,
                      features: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, k: int = 8,
                      rows: int = NEIGHBOUR_ROWS) -> dict[str, Path]:
    """Memorisation at a glance: each row a sample (uint8 N x C x H x W), then its ``k`` nearest training images.

    Always by pixel L2 over all training images (``neighbours_pixel.png``); with ``features`` = (Inception features
    of the first ``rows`` samples, of training images, those images' indices) also by Inception-feature L2
    (``neighbours_inception.png``). The distance used is written in the figure's title."""

    images = train.images if isinstance(train, ImageData) else np.asarray(train)
    rows = min(rows, len(samples))
    k = min(k, len(images))
    shown = np.ascontiguousarray(samples[:rows])

    def flat(a: np.ndarray) -> torch.Tensor:
        return to_float(a, channels_last=False).reshape(len(a), -1)

    out = {"pixel": _neighbour_grid(shown, images, _knn(flat(images), flat(shown), k), Path(out_dir) /
                                    "neighbours_pixel.png",
                                    f"{k} nearest of {len(images)} training images by pixel L2 distance")}
    if features is not None:
        sample_feats, train_feats, train_idx = features
        nn = _knn(torch.from_numpy(np.asarray(train_feats)).float(),
                  torch.from_numpy(np.asarray(sample_feats[:rows])).float(), k)
        out["inception"] = _neighbour_grid(shown, images, np.asarray(train_idx)[nn], Path(out_dir) /
                                           "neighbours_inception.png",
                                           f"{k} nearest of {len(train_idx)} training images by Inception-feature "
                                           "(pool3) L2 distance")
    return out


def _knn(base: torch.Tensor, queries: torch.Tensor, k: int) -> np.ndarray:
    """(len(queries), k) indices of the nearest rows of ``base`` (exact L2), nearest first."""
    idx = []
    for s in range(0, len(queries), 256):
        d = torch.cdist(queries[s:s + 256], base)
        idx.append(d.topk(k, dim=1, largest=False).indices)
    return torch.cat(idx).numpy()


def _neighbour_grid(samples: np.ndarray, train: np.ndarray, nn: np.ndarray, path: Path, caption: str) -> Path:
    """One row per sample: the sample, a gap, then its neighbours; a title band above says what is shown."""
    from torchvision.utils import make_grid  # here: seconds to import (BENCHMARKS "App start-up")

    k = nn.shape[1]
    tiles = []
    for i in range(len(samples)):
        row = [samples[i], np.full_like(samples[i], 255)] + [train[j] for j in nn[i]]
        tiles += row
    grid = make_grid(to_float(np.stack(tiles), channels_last=False), nrow=k + 2, padding=2, pad_value=1.0)
    arr = to_uint8(grid[None])[0]
    body = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).convert("RGB")
    scale = max(1, 64 // samples.shape[-1])  # small images (MNIST) are enlarged so that the text fits
    body = body.resize((body.width * scale, body.height * scale), Image.Resampling.NEAREST)
    font = ImageFont.load_default()
    lines = ["each row: a sample | its " + caption]
    draw = ImageDraw.Draw(body)
    width = max(body.width, int(max(draw.textlength(line, font=font) for line in lines)) + 8)
    figure = Image.new("RGB", (width, body.height + 16 * len(lines) + 6), "white")
    figure.paste(body, (0, 16 * len(lines) + 6))
    draw = ImageDraw.Draw(figure)
    for i, line in enumerate(lines):
        draw.text((4, 4 + 16 * i), line, fill="black", font=font)
    buf = io.BytesIO()
    figure.save(buf, format="png")
    return atomic_write(Path(path), lambda p: p.write_bytes(buf.getvalue()))


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
    if "memorization" in opts.metrics or "neighbours" in opts.metrics:  # checked before any expensive work
        if train_cfg is None:
            raise ConfigError("memorization and neighbours need the training split (train_data)")
        train = load_dataset(train_cfg, opts.seed)
        if "memorization" in opts.metrics and train.fingerprint == reference.fingerprint:
            raise ConfigError("memorization compares samples with held-out images, but the reference data is the "
                              "training set itself; use a dataset with a test split (e.g. data=mnist)")
    results: dict = {"num_samples": opts.num_samples}
    if sampler is not None:
        results["temperature"] = sampler.sampling_temperature(opts.temperature)
        results["correction"] = sampler.correction_strength(opts.correction)
        if results["correction"] > 0:
            results["candidates"] = sampler.candidates_per_image(opts.candidates)
        samples = sampler(opts.num_samples, seed=opts.seed, batch_size=500, progress=opts.progress,
                          temperature=opts.temperature, correction=opts.correction, candidates=opts.candidates).images
    else:
        assert images is not None
        samples = np.ascontiguousarray(images[:opts.num_samples])
    save_grid(to_float(samples[:100]), out_dir / "samples.png")
    needs_inception = [m for m in opts.metrics if m not in NO_INCEPTION]
    neighbour_features = None
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
        if "neighbours" in opts.metrics:  # the Inception network is loaded anyway: a feature-distance figure too
            assert train is not None
            rows = min(NEIGHBOUR_ROWS, len(samples))
            shown = fake[:rows] if fake is not None else extractor(samples[:rows], progress=False)
            neighbour_features = (shown, reference_features(train, extractor, opts), reference_index(len(train), opts))
    if "memorization" in opts.metrics:
        assert train is not None
        results.update(memorization(samples.transpose(0, 3, 1, 2), train, reference, out_dir))
    if "neighbours" in opts.metrics:
        assert train is not None
        figures = neighbours_figure(samples.transpose(0, 3, 1, 2), train, out_dir, features=neighbour_features)
        results.update({f"neighbours/{kind}_figure": str(path) for kind, path in figures.items()})
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
