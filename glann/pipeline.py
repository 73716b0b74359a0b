"""The chain: data -> glo -> imle -> sampler, as a loop over stages.

Each stage reads its inputs from disk and writes its own folder. Its *digest* hashes everything that determines
its result (its config groups, its input's digest, the seed): a stage whose manifest carries the same digest is
skipped; one with ``state/last.pt`` resumes, if the checkpoint was written under the same settings (everything but
the settings in ``resumable``, which only extend or re-log training).

With ``cache_dir`` set, shareable stages (GLO) live in a content-addressed cache (``<cache>/glo-<digest>``) shared
by every run with the same data, GLO/loss config and glann version; a file lock makes parallel sweep jobs train
such a stage once.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from glann import artifacts, version
from glann import distributed as gd
from glann.config import TrainConfig, stage_settings
from glann.data import TORCHVISION_SETS, ImageData, load_dataset
from glann.distributed import World, check_ranks, init_world
from glann.errors import ArtifactError
from glann.evaluate import evaluate
from glann.files import config_hash, remove_stale_temps
from glann.glo import load_glo, train_glo
from glann.images import save_grid
from glann.imle import train_imle
from glann.nets import Generator, Mapper
from glann.runtime import NO_STOP, Preempted, StopFlag, seed_everything
from glann.sampler import GlannSampler
from glann.tracking import Tracker, build_tracker, flatten_hparams

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What every stage of one pipeline run shares."""

    cfg: TrainConfig
    run_dir: Path
    data: ImageData
    device: torch.device
    stop: StopFlag
    progress: bool
    folders: dict[str, Path]  # finished or current stage folders, by stage name
    world: World  # this process's rank (torchrun / submitit); rank 0 writes every file


@dataclass(frozen=True)
class StageSpec:
    """One trainable stage of the chain."""

    name: str  # folder, config group, metric prefix
    groups: tuple[str, ...]  # config groups that determine the result (the first is the stage's own)
    input: str  # "data" or the upstream stage's name
    resumable: frozenset[str]  # own-group settings a checkpoint may differ in (train longer, log differently)
    shareable: bool  # may live in the content-addressed stage cache
    train: Callable[[Run, Path, str], dict]  # (run, stage folder, resume key) -> metrics

    def digest(self, cfg: TrainConfig, input_digest: str, shared: bool) -> str:
        fields: dict[str, Any] = {g: stage_settings(g, getattr(cfg, g)) for g in self.groups}
        fields[self.input] = input_digest
        fields["seed"] = cfg.seed
        if shared:  # a shared cache outlives upgrades: another glann release trains (and caches) its own stage
            fields["glann"] = version.__version__
        return config_hash(fields)

    def resume_key(self, cfg: TrainConfig, input_digest: str) -> str:
        own, *others = self.groups
        fields = {k: v for k, v in stage_settings(own, getattr(cfg, own)).items() if k not in self.resumable}
        fields.update({g: stage_settings(g, getattr(cfg, g)) for g in others})
        return config_hash({"fields": fields, "inputs": (input_digest,), "seed": cfg.seed})


def _tracker(run: Run, stage: str) -> Callable[[int], Tracker]:
    """The stage's tracker, opened at its first step (each stage logs into its own folder: a resumed stage purges
    the steps after its checkpoint, which must not touch another stage's series)."""
    log_dir = run.run_dir / "tensorboard" / stage
    return lambda step: build_tracker(run.cfg.logger.name, log_dir, purge_step=step)


def _train_glo(run: Run, folder: Path, resume_key: str) -> dict:
    return train_glo(run.data, run.cfg.glo, run.cfg.loss, folder, run.device, run.cfg.seed, run.stop, run.progress,
                     resume_key=resume_key, tracker=_tracker(run, "glo"), log_every=run.cfg.logger.every_n_steps,
                     world=run.world)


def _train_imle(run: Run, folder: Path, resume_key: str) -> dict:
    generator, latents = load_glo(run.folders["glo"], run.device)
    seed = run.cfg.seed if run.cfg.imle.seed is None else run.cfg.imle.seed
    return train_imle(latents, run.cfg.imle, folder, run.device, seed, generator, run.stop, run.progress,
                      resume_key=resume_key, tracker=_tracker(run, "imle"), log_every=run.cfg.logger.every_n_steps,
                      world=run.world)


STAGES = (
    StageSpec("glo", ("glo", "loss"), "data", frozenset({"epochs", "grid_every", "checkpoint_every",
                                                         "checkpoint_minutes", "channels_last", "compile"}), True,
              _train_glo),
    StageSpec("imle", ("imle",), "glo", frozenset({"rounds", "grid_every", "knn_device"}), False, _train_imle),
)


def run(cfg: TrainConfig, run_dir: Path, stop: StopFlag = NO_STOP, progress: bool = True) -> dict:
    """Run the pipeline in ``run_dir``: each stage in ``cfg.stages`` is trained, resumed or reused, then the sampler
    is exported (``run_dir/sampler``, plus ``samples.png``) and, with ``cfg.eval.metrics``, evaluated.

    Returns the metrics of every stage (``glo/*``, ``imle/*``, ``eval/*``) and ``sampler_dir``. Raises
    :class:`~glann.runtime.Preempted` when ``stop`` is set (state saved; re-run to resume).

    Under torchrun (or a multi-task submitit job) every rank calls this with the same ``run_dir``: all ranks train
    (GLO and IMLE under DDP, see :mod:`glann.glo_dist` and ``glann.knn.nearest_neighbors_distributed``), rank 0
    alone writes files, and the others wait for its artifacts before they read them.
    """
    run_dir = Path(run_dir)
    seed_everything(cfg.seed, cfg.deterministic)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    world = init_world(cfg.device)
    device = world.device
    main = world.is_main
    log.info("run folder %s, device %s%s", run_dir, device,
             f", rank {world.rank} of {world.world_size}" if world.distributed else "")
    if not main:  # one account of the run: rank 0 logs progress; the others announce themselves, then warnings only
        logging.getLogger("glann").setLevel(logging.WARNING)
    build_tracker(cfg.logger.name, run_dir, enabled=False)  # a missing tracker package fails before any work
    data = load_dataset(cfg.data, cfg.seed)
    check_ranks(world, len(data))
    if main:
        remove_stale_temps(run_dir, recursive=False)
        for sub in ("sampler", "eval"):
            remove_stale_temps(run_dir / sub)
    ctx = Run(cfg, run_dir, data, device, stop, progress, folders={}, world=world)
    results: dict = {}
    digests = {"data": data.fingerprint}
    for spec in STAGES:
        shared = spec.shareable and bool(cfg.cache_dir)
        digest = digests[spec.name] = spec.digest(cfg, digests[spec.input], shared)
        # Rank 0 makes the folder (and the cache link); every rank then uses the path it made.
        made = stage_folder(run_dir, spec.name, digest, cfg.cache_dir if shared else None) if main else None
        folder = gd.broadcast_object(made)
        assert folder is not None
        ctx.folders[spec.name] = folder
        if spec.name not in cfg.stages:
            continue
        # Rank 0 holds the cache lock for the job; the other ranks wait for it at the barrier.
        with _acquire(FileLock(str(folder) + ".lock"), stop, folder) if shared and main else nullcontext():
            gd.barrier()
            if main:
                remove_stale_temps(folder)
            manifest = artifacts.completed(folder, digest)
            if manifest:
                log.info("%s: reusing finished stage %s (config hash %s)", spec.name, folder, digest)
                results.update(_own(spec.name, manifest.get("metrics", {})))
                continue
            if spec.input != "data":
                _require(ctx.folders[spec.input], digests[spec.input], spec.input)
            t0 = time.time()
            metrics = spec.train(ctx, folder, spec.resume_key(cfg, digests[spec.input]))
            results.update(metrics)
            inputs = ({"data": data.fingerprint, "data_name": data.name} if spec.input == "data" else
                      {spec.input: str(ctx.folders[spec.input]), f"{spec.input}_hash": digests[spec.input]})
            shape = {"num_images": len(data), "image_shape": list(data.shape)} if spec.input == "data" else {}
            if main:
                artifacts.write_manifest(folder, digest, inputs, **shape, seconds=round(time.time() - t0, 1),
                                         world_size=world.world_size, metrics=_own(spec.name, metrics))
            gd.barrier()

    if "sampler" in cfg.stages and main:  # export and evaluation: rank 0 alone
        for spec in STAGES:
            _require(ctx.folders[spec.name], digests[spec.name], spec.name)
        results.update(export_sampler(cfg, run_dir, ctx.folders, device))
    if main:
        with build_tracker(cfg.logger.name, run_dir / "tensorboard") as tracker:  # HParams: sweep jobs side by side
            tracker.hparams(flatten_hparams(asdict(cfg)), {k: v for k, v in results.items() if isinstance(v, float)})
    gd.barrier()
    return results


def export_sampler(cfg: TrainConfig, run_dir: Path, folders: dict[str, Path], device: torch.device) -> dict:
    """Write the self-contained ``run_dir/sampler`` folder and ``samples.png``; evaluate it if asked."""
    # the training codes go with the sampler: its density correction compares the mapper's codes with them
    latents = artifacts.load_tensors(folders["glo"] / "latents.safetensors")["latents"]
    sampler = GlannSampler(artifacts.load_network(folders["imle"] / "mapper", device, Mapper),
                           artifacts.load_network(folders["glo"] / "generator", device, Generator), reference=latents,
                           correction=cfg.sampler.correction, candidates=cfg.sampler.candidates,
                           temperature=cfg.sampler.temperature)
    sampler_dir = sampler.save_pretrained(run_dir / "sampler", loss=asdict(cfg.loss))  # inversion reuses the loss
    images = sampler(cfg.sampler.grid_size, seed=cfg.sampler.seed, batch_size=cfg.sampler.batch_size,
                     output_type="tensor").images
    grid = save_grid(images, run_dir / "samples.png")
    log.info("sampler: wrote %s and %s", sampler_dir, grid)
    results: dict = {"sampler_dir": str(sampler_dir)}
    if cfg.eval.metrics:
        reference = replace(cfg.data, split="test") if cfg.data.name in TORCHVISION_SETS else cfg.data
        metrics = evaluate(sampler_dir, reference, cfg.eval, run_dir / "eval", train_cfg=cfg.data)
        results.update({f"eval/{k}": v for k, v in metrics.items()})
    return results


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


def _own(name: str, metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith(f"{name}/")}


@contextmanager
def _acquire(lock: FileLock, stop: StopFlag, what: Path) -> Iterator[FileLock]:
    """Hold ``lock``; while another job trains the stage, wait (and say so), giving up on SIGTERM."""
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
    if not artifacts.completed(stage_dir, digest):
        raise ArtifactError(f"{name} stage in {stage_dir} is missing or was trained with another config; "
                            f"add '{name}' to stages to (re)train it")
