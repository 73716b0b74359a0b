"""Shared entry-point plumbing for the Hydra apps: config location, resolvers, one-line errors."""
from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from glann.config import register_configs
from glann.distributed import run_stamp
from glann.errors import GlannError
from glann.files import writable_problem

log = logging.getLogger("glann")


def config_dir() -> str:
    """``glann/conf`` when installed from a wheel, else the checkout's top-level ``conf/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"glann's conf/ folder was not found next to {here}; pass --config-path")


def _run_dir(resume_dir, default):
    return resume_dir if resume_dir not in (None, "", "None") else default


def setup() -> None:
    register_configs()
    if not OmegaConf.has_resolver("glann_run_dir"):
        OmegaConf.register_new_resolver("glann_run_dir", _run_dir)
    if not OmegaConf.has_resolver("glann_now"):  # ${now:} with one start time for all ranks of a torchrun job
        OmegaConf.register_new_resolver("glann_now", run_stamp, use_cache=True)


def run_app(config_name: str, task: Callable) -> None:
    """Entry point shared by the apps: register schemas, check the output folder, hand over to Hydra."""
    setup()
    run_stamp()  # under torchrun: starts the process group and agrees on the run folder's time stamp
    check_output_dirs(sys.argv[1:])
    hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)(task)()


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_output_dirs(argv: list[str], default: str = "outputs") -> None:
    """Fail with one line, before Hydra creates anything, when the run/sweep folder cannot be written."""
    targets = [a.split("=", 1)[1] for a in argv if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))] or [default]
    for target in targets:
        problem = writable_problem(Path(target))
        if problem:
            print(f"glann: error: output folder {target}: {problem}", file=sys.stderr)
            sys.exit(1)


def friendly_errors(fn: Callable) -> Callable:
    """GlannError -> one line on stderr and exit 1 (full traceback with HYDRA_FULL_ERROR=1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GlannError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            log.error("%s: %s", type(e).__name__, e)
            if _in_multirun():  # let Hydra record the failed job and go on with the rest of the sweep
                raise
            print(f"glann: error: {e}", file=sys.stderr)
            sys.exit(1)

    return wrapper
