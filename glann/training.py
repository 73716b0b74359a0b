"""The one training loop every stage runs: resume, checkpoints, NaN handling, stats, lr schedule, progress.

A stage (``glann.glo.GLOStage``, ``glann.imle.IMLEStage``) says *what* one epoch (GLO) or round (IMLE) computes;
:func:`fit` says *how* a stage is trained, the same way for all of them:

    resume from state/last.pt (same settings, or refuse)  ->  for each unit (epoch/round):
        set the lr (step decay)  ->  stage.begin(unit)  ->  stage.step(unit, i) for each step (NaN: stop, keep the
        last good checkpoint; SIGTERM: checkpoint and stop)  ->  stage.end(unit): one stats.jsonl row  ->  grids
        ->  checkpoint
    ->  stage.export(): the stage's artifacts

Training state (weights, optimisers, RNG, position) and exported artifacts are kept apart: only the stage itself
reads ``state/last.pt``; the next stage reads what ``export`` wrote.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from glann import artifacts
from glann import distributed as gd
from glann.distributed import World
from glann.errors import ArtifactError, TrainingError
from glann.images import save_grid
from glann.runtime import NO_STOP, CheckpointTimer, Preempted, Stats, StopFlag, rng_state, set_rng_state, step_decay
from glann.tracking import Tracker

log = logging.getLogger(__name__)


class Stage(Protocol):
    """What :func:`fit` needs from a stage. ``unit`` names one pass ("epoch" for GLO, "round" for IMLE)."""

    name: str  # "glo" | "imle": folder, config group and metric prefix
    unit: str  # "epoch" | "round"
    num_units: int  # epochs / rounds to train
    count_key: str  # the config key that sets num_units ("epochs" / "rounds")
    mid_unit_checkpoints: bool  # can a checkpoint be taken between two steps of a unit?

    def optimizers(self) -> list[tuple[torch.optim.Optimizer, float]]:
        """Each optimiser with its base learning rate (the schedule scales it per unit)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def init_fresh(self) -> None:
        """Initialise what a fresh (not resumed) run starts from (e.g. GLO's PCA latents)."""
        ...

    def steps_in(self, unit: int) -> int:
        """Number of optimisation steps in ``unit`` (known before it starts)."""
        ...

    def begin(self, unit: int) -> None:
        """Per-unit work before its steps (IMLE: the nearest-neighbour matching)."""
        ...

    def step(self, unit: int, i: int) -> tuple[float, int]:
        """Step ``i`` of ``unit``: returns (loss, number of examples). A non-finite loss must update nothing."""
        ...

    def end(self, unit: int) -> dict[str, float]:
        """Metrics of the unit just finished, named ``<stage>/<metric>``."""
        ...

    def snapshot(self, unit: int) -> dict[str, tuple[torch.Tensor, int]]:
        """Images to look at after ``unit``: {name: (float images (N, C, H, W) in [0, 1], images per row)}."""
        ...

    def export(self) -> None:
        """Write the stage's artifacts (networks, latents) into its folder."""
        ...


@dataclass
class Schedule:
    """When the loop decays learning rates, writes grids and checkpoints (in units of epochs/rounds)."""

    lr_decay_every: int = 0  # 0: constant lr
    lr_decay: float = 1.0
    grid_every: int = 1  # 0: never
    checkpoint_every: int = 1
    checkpoint_minutes: float = 10.0  # mid-unit checkpoints, where the stage allows them
    lr_hint: str = "the learning rate"  # the settings a NaN message tells the user to lower


@dataclass
class LoopOptions:
    stop: StopFlag = NO_STOP
    progress: bool = True
    resume_key: str = ""  # the settings a checkpoint must share to be resumed
    # Opens the stage's experiment tracker at the first step it will write (a resumed stage drops what was logged
    # after its checkpoint); None: stats.jsonl and grids only.
    tracker: Callable[[int], Tracker] | None = None
    log_every: int = 50  # optimiser steps between step-level loss points in the tracker
    world: World = field(default_factory=World)  # this process's rank; only rank 0 writes files

    def stopping(self) -> bool:
        """SIGTERM seen here or (several ranks) on any rank: every rank stops at the same step."""
        return gd.any_rank(bool(self.stop)) if self.world.distributed else bool(self.stop)


def fit(stage: Stage, out_dir: Path, schedule: Schedule, opts: LoopOptions = LoopOptions()) -> dict[str, float]:
    """Train (or resume) ``stage`` in ``out_dir`` and export its artifacts; returns the last unit's metrics."""
    out_dir = Path(out_dir)
    state_path = out_dir / "state" / "last.pt"
    stats = Stats(out_dir / "stats.jsonl")
    main = opts.world.is_main
    unit, start_step = _resume(stage, state_path, opts.resume_key, opts.world.world_size)
    if main:
        stats.rewind(stage.unit, unit)
    timer = CheckpointTimer(schedule.checkpoint_minutes)

    def checkpoint(at_unit: int, at_step: int) -> None:
        if main:  # the state is the same on every rank (replicated latents, DDP-synchronised weights)
            artifacts.save_state(state_path, {**stage.state_dict(), stage.unit: at_unit, "batch": at_step,
                                              "rng": rng_state(), "resume_key": opts.resume_key,
                                              "world_size": opts.world.world_size})
        timer.reset()

    global_step = sum(stage.steps_in(u) for u in range(unit)) + start_step
    total_steps = sum(stage.steps_in(u) for u in range(stage.num_units))
    bar = tqdm(total=total_steps, initial=global_step, desc=stage.name, unit="step",
               disable=not (opts.progress and main), dynamic_ncols=True, mininterval=1.0)
    with opts.tracker(global_step + 1) if opts.tracker and main else Tracker() as tracker:  # its first step
        row = _loop(stage, out_dir, schedule, opts, unit, start_step, global_step, stats, timer, checkpoint, bar,
                    tracker)
    bar.close()
    if main:
        stage.export()
    gd.barrier()  # the other ranks read what rank 0 exported only once it is there
    return {k: v for k, v in row.items() if k.startswith(f"{stage.name}/")}


def _loop(stage: Stage, out_dir: Path, schedule: Schedule, opts: LoopOptions, unit: int, start_step: int,
          global_step: int, stats: Stats, timer: CheckpointTimer, checkpoint: Callable[[int, int], None], bar: tqdm,
          tracker: Tracker) -> dict[str, float]:
    """The units from ``unit`` (step ``start_step``) on; returns the last unit's stats row."""
    state_path = out_dir / "state" / "last.pt"
    row: dict[str, float] = {}
    while unit < stage.num_units:
        for opt, base_lr in stage.optimizers():
            for group in opt.param_groups:
                group["lr"] = step_decay(base_lr, schedule.lr_decay, schedule.lr_decay_every, unit)
        t0 = time.perf_counter()
        stage.begin(unit)
        loss_sum, seen = 0.0, 0
        for i in range(start_step, stage.steps_in(unit)):
            loss, count = stage.step(unit, i)
            if not math.isfinite(loss):
                kept = state_path if state_path.is_file() else "(none)"
                raise TrainingError(f"{stage.name}: loss became {loss} at {stage.unit} {unit}, batch {i}; the last "
                                    f"good checkpoint {kept} is kept. Lower {schedule.lr_hint} and re-run to resume")
            loss_sum += loss * count
            seen += count
            global_step += 1
            bar.update(1)
            if opts.log_every and global_step % opts.log_every == 0:
                tracker.scalars(global_step, {f"{stage.name}/step_loss": loss})
            stopping = opts.stopping()
            if stopping or (stage.mid_unit_checkpoints and timer.due()):
                if stage.mid_unit_checkpoints:
                    checkpoint(unit, i + 1)
                if stopping:
                    where = (f"state saved to {state_path}" if stage.mid_unit_checkpoints else
                             f"resuming restarts this {stage.unit} from {state_path}")
                    raise Preempted(f"{stage.name}: stopped at {stage.unit} {unit}, batch {i + 1}; {where}")
        start_step = 0
        if opts.world.distributed:  # the unit's loss over every rank's images (a ratio of means is one of sums)
            loss_sum, seen = gd.all_reduce_mean(torch.tensor([loss_sum, seen], dtype=torch.float64)).tolist()
        seconds = time.perf_counter() - t0
        row = {stage.unit: unit + 1, f"{stage.name}/loss": loss_sum / max(seen, 1), **stage.end(unit),
               f"{stage.name}/{stage.unit}_seconds": seconds}
        unit += 1
        if opts.world.is_main:
            stats.write(**row)
        tracker.scalars(global_step, row)
        log.info("%s: %s %d/%d loss %.5f (%.1fs)", stage.name, stage.unit, unit, stage.num_units,
                 row[f"{stage.name}/loss"], seconds)
        bar.set_postfix({stage.unit: unit, "loss": f"{row[f'{stage.name}/loss']:.4f}"})
        if opts.world.is_main and schedule.grid_every and (unit % schedule.grid_every == 0 or unit == stage.num_units):
            for name, (images, nrow) in stage.snapshot(unit).items():
                save_grid(images, out_dir / "grids" / f"{name}_{unit:04d}.png", nrow=nrow)
                tracker.images(f"{stage.name}/{name}", images, global_step)
        stopping = opts.stopping()
        if unit % schedule.checkpoint_every == 0 or unit == stage.num_units or stopping:
            checkpoint(unit, 0)
        if stopping:
            raise Preempted(f"{stage.name}: stopped after {stage.unit} {unit}; state saved to {state_path}")
    return row


def _resume(stage: Stage, state_path: Path, resume_key: str, world_size: int = 1) -> tuple[int, int]:
    """Load ``state_path`` into ``stage`` if it exists (returning its unit and step), else start fresh.

    Checkpoints do not depend on the world size: one written by N ranks resumes on M. A step counts global batches
    of (per-rank batch x ranks) images, so a mid-unit position is rescaled to the same number of images done."""
    if not state_path.is_file():
        stage.init_fresh()
        return 0, 0
    state = artifacts.load_state(state_path)
    artifacts.check_resume_key(state, resume_key, state_path)
    try:
        stage.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ArtifactError(f"checkpoint {state_path} is from an incompatible config: {e}") from None
    unit, step = state[stage.unit], state.get("batch", 0)
    saved_world = int(state.get("world_size", 1))
    if step and saved_world != world_size:
        step = step * saved_world // world_size
        log.info("%s: checkpoint of %d rank(s) resumed on %d: %s %d continues at step %d", stage.name, saved_world,
                 world_size, stage.unit, unit, step)
    if unit > stage.num_units:
        key = f"{stage.name}.{stage.count_key}"
        raise ArtifactError(f"checkpoint {state_path} is at {stage.unit} {unit}, past {key}={stage.num_units}; raise "
                            f"{key} or use a new run folder")
    set_rng_state(state["rng"])
    log.info("%s: resuming from %s at %s %d, step %d", stage.name, state_path, stage.unit, unit, step)
    return unit, step
