"""Runs that survive: atomic saves, safe loading, resume equality, preemption, NaN, stage reuse."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, compose_train, run_cli, run_clis
from safetensors.torch import load_file

from glann import artifacts, glo, pipeline
from glann.errors import ArtifactError, TrainingError
from glann.runtime import Preempted, StopFlag


def test_atomic_write_keeps_the_old_file_when_the_disk_fills(tmp_path):
    path = tmp_path / "state.pt"
    artifacts.save_state(path, {"step": 1})

    def disk_full(p):
        p.write_bytes(b"partial data")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        artifacts.atomic_write(path, disk_full)
    assert artifacts.load_state(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temp file left behind


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_fails_to_load_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    _Evil.marker = marker
    path = tmp_path / "last.pt"
    torch.save({"generator": evil}, path)
    with pytest.raises(ArtifactError, match="cannot load checkpoint"):
        artifacts.load_state(path)
    assert not marker.exists()


def test_truncated_checkpoint_and_weights_are_clear_errors(tmp_path):
    path = tmp_path / "last.pt"
    artifacts.save_state(path, {"w": torch.randn(1000)})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ArtifactError, match="delete it to restart"):
        artifacts.load_state(path)
    weights = tmp_path / "t.safetensors"
    artifacts.save_tensors(weights, {"z": torch.randn(100, 4)})
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ArtifactError, match="corrupt tensor file"):
        artifacts.load_tensors(weights)


def test_truncated_stage_checkpoint_stops_the_pipeline_with_its_path(tmp_path):
    cfg = compose_train("debug=tiny", "stages=[glo]")
    pipeline.run(cfg, tmp_path, progress=False)
    state = tmp_path / "glo" / "state" / "last.pt"
    state.write_bytes(state.read_bytes()[:1000])
    (tmp_path / "glo" / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=str(state)):
        pipeline.run(cfg, tmp_path, progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_build = glo.build_loss
    calls = {"n": 0}

    class Exploding(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pred, target):
            calls["n"] += 1
            out = self.inner(pred, target)
            return out * float("nan") if calls["n"] > 4 else out  # 4 batches per epoch: epoch 2 diverges

    def exploding_loss(cfg):
        return Exploding(real_build(cfg))

    monkeypatch.setattr(glo, "build_loss", exploding_loss)
    cfg = compose_train("debug=tiny", "glo.epochs=3", "stages=[glo]")
    with pytest.raises(TrainingError, match="epoch 1, batch 0.*last good checkpoint"):
        pipeline.run(cfg, tmp_path, progress=False)
    state = artifacts.load_state(tmp_path / "glo" / "state" / "last.pt")
    assert state["epoch"] == 1 and torch.isfinite(state["latents"]).all()
    assert not (tmp_path / "glo" / "manifest.json").exists()


class StopAfter(StopFlag):
    """Acts as if SIGTERM arrived after ``polls`` checks."""

    def __init__(self, polls):
        super().__init__()
        self.polls = polls

    def __bool__(self):
        self.polls -= 1
        return self.polls < 0


def _weights(run_dir):
    out = {}
    for part in ("generator", "mapper"):
        for k, v in load_file(str(run_dir / "sampler" / part / "model.safetensors")).items():
            out[f"{part}.{k}"] = v
    out["latents"] = load_file(str(run_dir / "glo" / "latents.safetensors"))["latents"]
    return out


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path):
    overrides = ("debug=tiny", "deterministic=true", "glo.epochs=3", "imle.rounds=3")
    pipeline.run(compose_train(*overrides), tmp_path / "a", progress=False)
    cfg = compose_train(*overrides)
    # Stop mid-epoch in GLO (the 7th poll: 5 in epoch 0, then after batch 1 of epoch 1), then mid-round in
    # IMLE, then finish.
    with pytest.raises(Preempted):
        pipeline.run(cfg, tmp_path / "b", stop=StopAfter(6), progress=False)
    state = torch.load(tmp_path / "b" / "glo" / "state" / "last.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (1, 2)
    with pytest.raises(Preempted):
        pipeline.run(cfg, tmp_path / "b", stop=StopAfter(10), progress=False)  # IMLE round 1
    assert (tmp_path / "b" / "glo" / "manifest.json").exists()
    assert not (tmp_path / "b" / "imle" / "manifest.json").exists()
    pipeline.run(cfg, tmp_path / "b", progress=False)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_cleanly_and_the_rerun_completes(tmp_path):
    args = ["debug=tiny", "glo.epochs=100", "glo.grid_every=0", f"hydra.run.dir={tmp_path}", "cache_dir=null"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "glann.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stats = tmp_path / "glo" / "stats.jsonl"
    deadline = time.time() + 120
    while not (stats.exists() and stats.read_text().count("\n") >= 3) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    state = artifacts.load_state(tmp_path / "glo" / "state" / "last.pt")
    assert 3 <= state["epoch"] < 100
    res = run_cli("train", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    epochs = [json.loads(line)["epoch"] for line in stats.read_text().splitlines()]
    assert epochs[-1] == 100 and len(set(epochs)) == len(epochs)  # resumed, no epoch trained twice
    assert (tmp_path / "sampler" / "sampler.json").is_file()


@pytest.mark.slow
def test_parallel_jobs_share_one_glo_training(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "glann.train", "debug=tiny", "glo.epochs=30",
                               f"imle.samples_per_latent={m}", f"hydra.run.dir={tmp_path / str(m)}",
                               f"cache_dir={cache}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for m in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    (glo_dir,) = [p for p in cache.iterdir() if p.is_dir()]
    assert len((glo_dir / "stats.jsonl").read_text().splitlines()) == 30  # trained exactly once
    logs = [(tmp_path / str(m) / "train.log").read_text() for m in (1, 2)]
    assert sum("glo: reusing finished stage" in log for log in logs) == 1
    for m in (1, 2):
        assert (tmp_path / str(m) / "glo").resolve() == glo_dir.resolve()


@pytest.mark.slow
def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    sample, train = run_clis(("sample", f"sampler_dir={tmp_path}", f"output={blocker / 'out.npz'}",
                              f"hydra.run.dir={tmp_path / 'h'}"),
                             ("train", "debug=tiny", f"hydra.run.dir={blocker / 'run'}"))
    assert sample.returncode != 0 and "is not a directory" in sample.stderr and "Traceback" not in sample.stderr
    assert train.returncode != 0 and "file.txt" in train.stderr and "Traceback" not in train.stderr
