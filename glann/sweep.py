"""Sweep tables: one row per multirun job (its overrides and metrics), sorted by FID, as CSV and Markdown.

Built automatically at the end of ``glann-train -m ...`` (a Hydra callback) and on demand with
``glann-eval sweep_dir=outputs/multirun/<time>``.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback

from glann.errors import ArtifactError
from glann.files import atomic_write

log = logging.getLogger(__name__)

# Sort keys, best first: lower FID is better; without FID, a lower IMLE NN distance.
SORT_KEYS = ("eval/fid", "fid", "imle/nn_dist")


def _job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                      key=lambda p: (len(p.name), p.name)):
        over_file = job / ".hydra" / "overrides.yaml"
        overrides = (yaml.safe_load(over_file.read_text()) or []) if over_file.is_file() else []
        row: dict[str, Any] = {"job": job.name, "overrides": " ".join(overrides)}
        for name in ("results.json", "metrics.json", "eval/metrics.json"):
            path = job / name
            if path.is_file():
                try:
                    metrics = json.loads(path.read_text())
                except json.JSONDecodeError:
                    continue
                row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        row["status"] = "done" if (job / "results.json").is_file() else "incomplete"
        rows.append(row)
    return rows


def build_table(sweep_dir: str | Path) -> Path:
    """Write ``sweep_table.csv`` and ``sweep_table.md`` into ``sweep_dir``; return the Markdown path."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ArtifactError(f"sweep_dir={sweep_dir} does not exist")
    rows = _job_rows(sweep_dir)
    if not rows:
        raise ArtifactError(f"sweep_dir={sweep_dir} holds no Hydra job folders (<job>/.hydra/)")
    key = next((k for k in SORT_KEYS if any(k in r for r in rows)), None)
    if key:
        rows.sort(key=lambda r: r.get(key, math.inf))
    columns = ["job", "overrides", "status"] + sorted({k for r in rows for k in r} - {"job", "overrides", "status"},
                                                       key=lambda k: (k not in SORT_KEYS, k))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(sweep_dir / "sweep_table.csv", lambda p: p.write_text(buf.getvalue()))

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v if v is not None else "")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    md = sweep_dir / "sweep_table.md"
    atomic_write(md, lambda p: p.write_text(f"Sorted by {key or 'job'}.\n\n" + "\n".join(lines) + "\n"))
    return md


class SweepTableCallback(Callback):
    """Hydra callback: tabulate the sweep when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            log.info("sweep table: %s", build_table(Path(config.hydra.sweep.dir)))
        except Exception as e:  # a table must never fail the sweep itself
            log.warning("could not build the sweep table: %s", e)
