"""glann-eval: sample-quality metrics for a trained pipeline, or a table of a sweep.

    glann-eval sampler_dir=outputs/mnist_cpu/<time>/sampler data=mnist data.root=../shared/data \
        eval.metrics=[fid,kid,pr,recon_fid,glo_gaussian,memorization] eval.num_samples=10000
    glann-eval sweep_dir=outputs/multirun/<time>

Prints a table and writes ``metrics.json`` (and figures) into the eval run folder.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from glann.cli import friendly_errors, run_app
from glann.config import EvalConfig
from glann.errors import ConfigError
from glann.evaluate import evaluate, format_table
from glann.images import read_npz
from glann.sweep import build_table

log = logging.getLogger("glann")


@friendly_errors
def run_eval(cfg: DictConfig) -> dict:
    conf = cast(EvalConfig, OmegaConf.to_object(cfg))
    if conf.sweep_dir:
        table = build_table(conf.sweep_dir)
        print(table.read_text())
        return {"sweep_table": str(table)}
    if not conf.sampler_dir and not conf.images:
        raise ConfigError("give sampler_dir=<run>/sampler, images=<samples.npz> or sweep_dir=<multirun folder>")
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    images = read_npz(Path(conf.images)) if conf.images else None
    sampler_dir = Path(conf.sampler_dir) if conf.sampler_dir else None
    results = evaluate(sampler_dir, conf.data, conf.eval, out_dir, conf.train_data, images=images)
    print(format_table(results))
    log.info("metrics: %s", out_dir / "metrics.json")
    return results


def main() -> None:
    run_app("eval", run_eval)


if __name__ == "__main__":
    main()
