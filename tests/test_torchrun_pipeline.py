"""The whole pipeline on several processes, as users launch it (slow: real subprocesses, gloo on the CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

from glann.sampler import GlannSampler

pytestmark = pytest.mark.slow

TINY = ["debug=tiny", "device=cpu"]


def torchrun(*args: str, nproc: int = 2) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                             "-m", "glann.train", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_ranks_train_one_pipeline_into_one_run_folder(tmp_path):
    """No hydra.run.dir given: both ranks must agree on the time-stamped folder (glann_now)."""
    out = tmp_path / "outputs"
    p = torchrun(*TINY, "glo.epochs=3", "cache_dir=null", f"hydra.run.dir={out}/${{glann_now:%Y-%m-%d_%H-%M-%S}}")
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    (run,) = list(out.iterdir())  # one run folder, not one per rank
    for stage in ("glo", "imle"):
        manifest = json.loads((run / stage / "manifest.json").read_text())
        assert manifest["world_size"] == 2
    rows = [json.loads(line) for line in (run / "glo" / "stats.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # written once (rank 0), not once per rank
    images = GlannSampler.from_pretrained(run / "sampler")(4, seed=0).images
    assert images.shape == (4, 16, 16, 1)
    assert json.loads((run / "results.json").read_text())["imle/nn_dist"] > 0
    # one account of the run in the shared log: each rank announces itself, then rank 0 alone logs progress
    logged = (run / "train.log").read_text() + err
    assert "rank 0 of 2" in logged and "rank 1 of 2" in logged
    for epoch in (1, 2, 3):
        assert (run / "train.log").read_text().count(f"glo: epoch {epoch}/3 loss") == 1


def test_a_two_rank_run_killed_resumes_on_one_process(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "cache_dir=null", "glo.grid_every=0", f"hydra.run.dir={run}"]
    p = torchrun(*args, "glo.epochs=400")
    stats = run / "glo" / "stats.jsonl"
    deadline = time.time() + 300
    while not (stats.exists() and stats.read_text().count("\n") >= 3) and time.time() < deadline:
        time.sleep(0.1)
    p.kill()  # SIGKILL the launcher...
    subprocess.run(["pkill", "-9", "-f", f"hydra.run.dir={run}"], check=False)  # ...and its ranks
    p.communicate(timeout=60)
    state = torch.load(run / "glo" / "state" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and 3 <= state["epoch"] < 400
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    res = subprocess.run([sys.executable, "-m", "glann.train", *args, "glo.epochs=8"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    epochs = [json.loads(line)["epoch"] for line in stats.read_text().splitlines()]
    assert epochs == list(range(1, 9))  # went on from the 2-rank checkpoint, no epoch twice
    assert json.loads((run / "glo" / "manifest.json").read_text())["world_size"] == 1
    assert (run / "sampler" / "sampler.json").is_file()


def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    res = subprocess.run([sys.executable, "-m", "glann.train", "-m", "hydra/launcher=submitit_local",
                          "hydra.launcher.timeout_min=10", *TINY, "imle.lr=0.001,0.002", f"hydra.sweep.dir={sweep}",
                          f"cache_dir={tmp_path / 'cache'}"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "sampler" / "sampler.json").is_file(), list((sweep / job).iterdir())
    assert (sweep / "sweep_table.md").is_file()
