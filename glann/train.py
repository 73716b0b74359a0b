"""glann-train: Hydra entry point for the whole pipeline (GLO -> IMLE -> sampler).

    glann-train                                   # README main job: embedded MNIST subset, CPU, offline
    glann-train data=mnist data.root=../shared/data experiment=mnist_cpu
    glann-train -m imle.samples_per_latent=2,4 cache_dir=outputs/.stage_cache   # sweep, GLO trained once
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import cast

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from glann import distributed as gd
from glann import pipeline
from glann.cli import friendly_errors, run_app
from glann.config import TrainConfig, validate
from glann.errors import ConfigError
from glann.files import write_json
from glann.runtime import Preempted, StopFlag

log = logging.getLogger("glann")


def objective(conf: TrainConfig, results: dict) -> float:
    """The number glann-train returns, for Hydra sweepers (Optuna minimises it): ``conf.objective``, or with
    ``auto`` the eval FID when it was computed, else the final mean IMLE nearest-neighbour distance."""
    key = conf.objective
    if key == "auto":
        key = "eval/fid" if "eval/fid" in results else "imle/nn_dist"
    if key not in results:
        raise ConfigError(f"objective={key} is not among this run's metrics ({sorted(results)}); run the stage or "
                          "eval metric that computes it")
    return float(results[key])


@friendly_errors
def train(cfg: DictConfig) -> float:
    """Train the pipeline into the Hydra run folder; writes ``results.json`` and returns the run's objective."""
    conf = validate(cast(TrainConfig, OmegaConf.to_object(cfg)))
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with StopFlag() as stop, logging_redirect_tqdm():
        try:
            results = pipeline.run(conf, run_dir, stop)
        except Preempted as e:
            log.warning("%s. Re-run the same command (or resume_dir=%s) to continue.", e, run_dir)
            sys.exit(143)
    if gd.is_main():
        write_json(run_dir / "results.json", results)
        log.info("done: %s", json.dumps(results, default=str))
    gd.destroy()
    return objective(conf, results)


def main() -> None:
    run_app("train", train)


if __name__ == "__main__":
    main()
