"""Experiment tracking: what ``stats.jsonl`` and the PNG grids hold, also written for TensorBoard.

    tracker = build_tracker("tensorboard", run_dir / "tensorboard" / "glo", purge_step=step0)
    tracker.scalars(step, {"glo/loss": 0.12})
    tracker.images("glo/reconstructions", recon, step)      # float (N, C, H, W) in [0, 1] -> one grid
    tracker.hparams({"imle.lr": 1e-3}, {"eval/fid": 13.1})   # HParams: a sweep's jobs side by side
    tracker.close()

``Tracker`` does nothing (``logger=none``, and every rank but 0 under torchrun); ``TensorBoardTracker`` writes
event files with ``torch.utils.tensorboard.SummaryWriter``.

Resuming: TensorBoard drops every event with step >= s when a writer is opened with ``purge_step=s`` (it writes
a SessionLog.START at s, and the reader discards the earlier events from s on). A stage that resumes at step s
passes ``purge_step=s`` so a restarted run leaves no duplicated or out-of-order steps. The purge ignores tags,
so two series with unrelated step counters (GLO epochs, IMLE rounds) need their own log folders.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from glann.errors import ConfigError

TRACKERS = ("none", "tensorboard")
EXTRA_HINT = "pip install 'glann[tensorboard]'"


class Tracker:
    """The no-op tracker: the interface every tracker implements."""

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Log scalars (slash-grouped names such as ``glo/loss``) at ``step``."""

    def images(self, tag: str, images: torch.Tensor, step: int) -> None:
        """Log float images (N, C, H, W) in [0, 1] as one grid image under ``tag``."""

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log the run's hyper-parameters (nested dicts are flattened with dots) with its final metrics."""

    def flush(self) -> None:
        """Write what is buffered."""

    def close(self) -> None:
        """Flush and release the tracker."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def flatten_hparams(hparams: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"imle.lr": 0.001, ...}`` with values TensorBoard's HParams accepts
    (bool, int, float, str); None, lists and other values become their string form."""
    flat: dict[str, Any] = {}
    for key, value in hparams.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, f"{name}."))
        elif isinstance(value, (bool, str)):
            flat[name] = value
        elif isinstance(value, numbers.Integral):
            flat[name] = int(value)
        elif isinstance(value, numbers.Real):
            flat[name] = float(value)
        else:
            flat[name] = str(value)
    return flat


def _finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


class TensorBoardTracker(Tracker):
    """Writes TensorBoard event files into ``log_dir`` (created if missing).

    ``purge_step``: the first step this writer will log after a resume; TensorBoard then hides the events an
    earlier, interrupted writer logged at that step or later.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None, flush_secs: int = 30):
        _require_tensorboard()
        # Imported here: tensorboard is an optional dependency (the `tensorboard` extra).
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step, flush_secs=flush_secs)
        self._last_step = -1 if purge_step is None else purge_step - 1
        self._scalar_tags: set[str] = set()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(key, float(value), global_step=int(step))
                self._scalar_tags.add(key)
        self._last_step = max(self._last_step, int(step))

    def images(self, tag: str, images: torch.Tensor, step: int) -> None:
        images = images.detach().float().cpu().clamp(0, 1)
        if images.ndim != 4:
            raise ValueError(f"images for {tag!r} must be (N, C, H, W), got shape {tuple(images.shape)}")
        from torchvision.utils import make_grid  # here: seconds to import (BENCHMARKS "App start-up")

        nrow = max(1, int(math.ceil(math.sqrt(len(images)))))
        grid = make_grid(images, nrow=nrow, padding=2, pad_value=1.0)
        self.writer.add_image(tag, grid, global_step=int(step), dataformats="CHW")
        self._last_step = max(self._last_step, int(step))

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int | None = None) -> None:
        """Written into this writer's own folder (``SummaryWriter.add_hparams`` would open a sub-folder per call).
        The HParams dashboard reads a metric's value from the scalar series of that name (its last point): a metric
        this writer has not logged as a scalar yet is logged once, at ``step`` (default: the last step logged)."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        flat = flatten_hparams(hparams)
        values = _finite_metrics(metrics)
        exp, ssi, sei = hparams_summary(flat, values)
        step = self._last_step if step is None else int(step)
        step = max(step, 0)
        file_writer = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary, global_step=step)
        for key, value in values.items():
            if key not in self._scalar_tags:
                self.writer.add_scalar(key, value, global_step=step)
                self._scalar_tags.add(key)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(f"logger=tensorboard needs the tensorboard package: {EXTRA_HINT}") from None


def build_tracker(name: str, log_dir: str | Path, enabled: bool = True, purge_step: int | None = None) -> Tracker:
    """The tracker named by ``logger.name`` (``none`` | ``tensorboard``) writing into ``log_dir``.

    ``enabled=False`` (every rank but 0) gives the no-op tracker whatever the name, after checking the name."""
    if name not in TRACKERS:
        raise ConfigError(f"logger.name must be one of {list(TRACKERS)}, got {name!r}")
    if name == "tensorboard":
        _require_tensorboard()  # every rank fails alike on a missing package, not only rank 0
        if enabled:
            return TensorBoardTracker(log_dir, purge_step=purge_step)
    return Tracker()
