"""The chain: data -> glo -> imle -> sampler. Each stage reads artifacts from disk and writes its own folder;
a stage whose manifest matches its config hash is skipped, one with ``state/last.pt`` resumes.

With ``cache_dir`` set, GLO stages live in a content-addressed cache (``<cache>/glo-<hash>``) shared by
every run with the same data, GLO/loss config and glann version; a file lock makes parallel sweep jobs train
it once.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch
from filelock import FileLock

import glann
from glann import artifacts
from glann.config import TrainConfig
from glann.data import TORCHVISION_SETS, load_dataset
from glann.glo import load_glo, train_glo
from glann.imle import train_imle
from glann.runtime import NO_STOP, StopFlag, resolve_device, save_grid, seed_everything
from glann.sampler import GlannSampler

log = logging.getLogger(__name__)


def stage_folder(run_dir: Path, name: str, digest: str, cache_dir: str | None) -> Path:
    """The stage's own folder; with a cache, ``run_dir/<name>`` is a link to ``<cache>/<name>-<digest>``."""
    local = run_dir / name
    if not cache_dir:
        return local
    shared = Path(cache_dir).expanduser().resolve() / f"{name}-{digest}"
    shared.mkdir(parents=True, exist_ok=True)
    if local.is_symlink() and local.resolve() != shared:
        local.unlink()
    if not local.exists() and not local.is_symlink():
        local.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(shared, local, target_is_directory=True)
    return shared


def run(cfg: TrainConfig, run_dir: Path, stop: StopFlag = NO_STOP, progress: bool = True) -> dict:
    run_dir = Path(run_dir)
    seed_everything(cfg.seed, cfg.deterministic)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    log.info("run folder %s, device %s", run_dir, device)
    data = load_dataset(cfg.data, cfg.seed)
    results: dict = {}
    artifacts.remove_stale_temps(run_dir, recursive=False)
    for sub in ("sampler", "eval"):
        artifacts.remove_stale_temps(run_dir / sub)

    glo_fields = {"glo": asdict(cfg.glo), "loss": asdict(cfg.loss), "data": data.fingerprint, "seed": cfg.seed}
    if cfg.cache_dir:  # a shared cache outlives upgrades: another glann release trains (and caches) its own stage
        glo_fields["glann"] = glann.__version__
    glo_key = artifacts.config_hash(glo_fields)
    glo_dir = stage_folder(run_dir, "glo", glo_key, cfg.cache_dir)
    if "glo" in cfg.stages:
        with _acquire(FileLock(str(glo_dir) + ".lock"), stop, glo_dir) if cfg.cache_dir else nullcontext():
            artifacts.remove_stale_temps(glo_dir)
            manifest = artifacts.completed(glo_dir, glo_key)
            if manifest:
                log.info("glo: reusing finished stage %s (config hash %s)", glo_dir, glo_key)
                results.update(manifest.get("metrics", {}))
            else:
                t0 = time.time()
                results.update(train_glo(data, cfg.glo, cfg.loss, glo_dir, device, cfg.seed, stop, progress,
                                         resume_key=resume_key("glo", cfg, data.fingerprint)))
                artifacts.write_manifest(glo_dir, glo_key, {"data": data.fingerprint, "data_name": data.name},
                                         num_images=len(data), image_shape=list(data.shape),
                                         seconds=round(time.time() - t0, 1), metrics=results)

    imle_key = artifacts.config_hash({"imle": asdict(cfg.imle), "glo": glo_key, "seed": cfg.seed})
    imle_dir = run_dir / "imle"
    if "imle" in cfg.stages:
        artifacts.remove_stale_temps(imle_dir)
        manifest = artifacts.completed(imle_dir, imle_key)
        if manifest:
            log.info("imle: reusing finished stage %s (config hash %s)", imle_dir, imle_key)
            results.update({k: v for k, v in manifest.get("metrics", {}).items() if k.startswith("imle/")})
        else:
            _require(glo_dir, glo_key, "glo")
            generator, latents = load_glo(glo_dir, device)
            t0 = time.time()
            results.update(train_imle(latents, cfg.imle, imle_dir, device, cfg.seed, generator, stop, progress,
                                      resume_key=resume_key("imle", cfg, glo_key)))
            artifacts.write_manifest(imle_dir, imle_key, {"glo": str(glo_dir), "glo_hash": glo_key},
                                     seconds=round(time.time() - t0, 1),
                                     metrics={k: v for k, v in results.items() if k.startswith("imle/")})

    if "sampler" in cfg.stages:
        _require(glo_dir, glo_key, "glo")
        _require(imle_dir, imle_key, "imle")
        sampler = GlannSampler(artifacts.load_network(imle_dir / "mapper", device),
                               artifacts.load_network(glo_dir / "generator", device))
        sampler_dir = sampler.save_pretrained(run_dir / "sampler")
        images = sampler(cfg.sampler.grid_size, seed=cfg.sampler.seed, batch_size=cfg.sampler.batch_size,
                         output_type="tensor").images
        grid = save_grid(images, run_dir / "samples.png")
        log.info("sampler: wrote %s and %s", sampler_dir, grid)
        results["sampler_dir"] = str(sampler_dir)
        if cfg.eval.metrics:
            from glann.evaluate import evaluate

            reference = replace(cfg.data, split="test") if cfg.data.name in TORCHVISION_SETS else cfg.data
            metrics = evaluate(sampler_dir, reference, cfg.eval, run_dir / "eval", train_cfg=cfg.data)
            results.update({f"eval/{k}": v for k, v in metrics.items()})
    return results


# Settings that change what a stage computes but not the trajectory so far: a checkpoint written under other
# values of these can be resumed (train for more epochs/rounds, log differently).
_RESUMABLE_CHANGES = {"glo": {"epochs", "grid_every", "checkpoint_every", "checkpoint_minutes"},
                      "imle": {"rounds", "grid_every", "knn_device"}}


def resume_key(stage: str, cfg: TrainConfig, *inputs: str) -> str:
    fields = {k: v for k, v in asdict(getattr(cfg, stage)).items() if k not in _RESUMABLE_CHANGES[stage]}
    if stage == "glo":
        fields["loss"] = asdict(cfg.loss)
    return artifacts.config_hash({"fields": fields, "inputs": inputs, "seed": cfg.seed})


@contextmanager
def _acquire(lock: FileLock, stop: StopFlag, what: Path):
    """Hold ``lock``; while another job trains the stage, wait (and say so), giving up on SIGTERM."""
    from filelock import Timeout

    from glann.runtime import Preempted

    waited = False
    while True:
        try:
            lock.acquire(timeout=1.0)
            break
        except Timeout:
            if not waited:
                log.info("waiting for another job to finish %s", what)
                waited = True
            if stop:
                raise Preempted(f"stopped while waiting for {what}") from None
    try:
        yield lock
    finally:
        lock.release()


def _require(stage_dir: Path, digest: str, name: str) -> None:
    from glann.errors import ArtifactError

    if not artifacts.completed(stage_dir, digest):
        raise ArtifactError(f"{name} stage in {stage_dir} is missing or was trained with another config; "
                            f"add '{name}' to stages to (re)train it")

