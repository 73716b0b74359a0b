"""hparams_search=imle_optuna: a 3-trial Optuna search on the tiny config (slow: three short trainings)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import REPO

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

@pytest.mark.slow
def test_three_trial_optuna_search_on_the_tiny_config(tmp_path):
    res = subprocess.run([sys.executable, "-m", "glann.train", "hparams_search=imle_optuna", "debug=tiny",
                          "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}", f"cache_dir={tmp_path / 'cache'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna" and set(best["best_params"]) == \
        {"imle.samples_per_latent", "imle.epochs_per_round", "imle.lr"}
    assert best["best_value"] > 0
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1", "2"]
    overrides = [yaml.safe_load((tmp_path / "sweep" / j / ".hydra" / "overrides.yaml").read_text()) for j in jobs]
    lrs = {next(o for o in ov if o.startswith("imle.lr=")) for ov in overrides}
    assert len(lrs) == 3  # three different settings were tried
    assert len(list((tmp_path / "cache").glob("glo-*/manifest.json"))) == 1  # GLO trained once, shared by the trials
