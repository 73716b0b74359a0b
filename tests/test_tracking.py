"""Experiment tracking, read back with TensorBoard's own event reader (not by file size)."""
from __future__ import annotations

import sys

import pytest
import torch

from glann.errors import ConfigError
from glann.tracking import TensorBoardTracker, Tracker, build_tracker, flatten_hparams

pytest.importorskip("tensorboard")


def read_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def hparams_of(acc) -> tuple[dict, dict]:
    """(hparams, metric names) from the HParams plugin's experiment and session-start summaries."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    values = {}
    for key, v in start.session_start_info.hparams.items():
        kind = v.WhichOneof("kind")
        values[key] = getattr(v, kind)
    metrics = {m.name.tag for m in experiment.experiment.metric_infos}
    return values, metrics


def test_scalars_images_and_hparams_read_back(tmp_path):
    with build_tracker("tensorboard", tmp_path / "tb") as tracker:
        assert isinstance(tracker, TensorBoardTracker)
        for step in range(1, 6):
            tracker.scalars(step, {"glo/loss": 1.0 / step, "glo/lr": 1e-3})
        tracker.images("glo/reconstructions", torch.rand(6, 1, 16, 16), step=5)
        tracker.hparams({"imle": {"lr": 1e-3, "rounds": 20}, "loss": {"name": "lap1", "vgg_resize": None},
                         "deterministic": False}, {"eval/fid": 13.1, "glo/loss": 0.2, "bad": float("nan")})
    acc = read_events(tmp_path / "tb")
    loss = acc.Scalars("glo/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5]
    assert loss[-1].value == pytest.approx(0.2)
    image = acc.Images("glo/reconstructions")
    assert len(image) == 1 and image[0].step == 5
    # a 3x2 grid of 16 px images with 2 px padding: 3 * 18 + 2 wide, 2 * 18 + 2 high
    assert (image[0].width, image[0].height) == (56, 38)
    values, metrics = hparams_of(acc)
    assert values == {"imle.lr": pytest.approx(1e-3), "imle.rounds": 20, "loss.name": "lap1",
                      "loss.vgg_resize": "None", "deterministic": False}
    assert metrics == {"eval/fid", "glo/loss"}  # the NaN metric is left out
    assert acc.Scalars("eval/fid")[-1].value == pytest.approx(13.1)


def test_resume_with_purge_step_leaves_no_duplicate_steps(tmp_path):
    first = TensorBoardTracker(tmp_path)
    for step in range(10):  # the run logged steps 0..9, then died; its checkpoint was at step 6
        first.scalars(step, {"imle/nn_dist": 100.0 + step})
    first.close()
    second = TensorBoardTracker(tmp_path, purge_step=6)
    for step in range(6, 12):
        second.scalars(step, {"imle/nn_dist": float(step)})
    second.close()
    events = read_events(tmp_path).Scalars("imle/nn_dist")
    assert [e.step for e in events] == list(range(12))
    assert [e.value for e in events] == [100.0 + s for s in range(6)] + [float(s) for s in range(6, 12)]


def test_none_and_disabled_trackers_write_nothing(tmp_path):
    for tracker in (build_tracker("none", tmp_path / "a"), build_tracker("tensorboard", tmp_path / "b", enabled=False)):
        assert type(tracker) is Tracker
        tracker.scalars(0, {"x": 1.0})
        tracker.images("x", torch.rand(2, 1, 4, 4), 0)
        tracker.hparams({"a": 1}, {"x": 1.0})
        tracker.close()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bad_logger_name_and_missing_package(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="logger.name"):
        build_tracker("wandb", tmp_path)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'glann\[tensorboard\]'"):
        build_tracker("tensorboard", tmp_path)
    assert type(build_tracker("none", tmp_path)) is Tracker


def test_flatten_hparams():
    assert flatten_hparams({"a": {"b": 1, "c": [1, 2]}, "d": 0.5, "e": True}) == \
        {"a.b": 1, "a.c": "[1, 2]", "d": 0.5, "e": True}


def test_train_with_logger_tensorboard_writes_scalars_images_and_hparams_and_resumes_cleanly(tmp_path):
    from conftest import compose_train

    from glann import pipeline

    cfg = compose_train("debug=tiny", "logger=tensorboard", "logger.every_n_steps=2", "glo.epochs=2")
    pipeline.run(cfg, tmp_path, progress=False)
    glo = read_events(tmp_path / "tensorboard" / "glo")
    assert {"glo/loss", "glo/step_loss", "glo/images_per_s"} <= set(glo.Tags()["scalars"])
    assert [e.step for e in glo.Scalars("glo/loss")] == [4, 8]  # epochs end at steps 4 and 8 (4 batches each)
    assert glo.Tags()["images"] == ["glo/recon"]
    imle = read_events(tmp_path / "tensorboard" / "imle")
    assert "imle/nn_dist" in imle.Tags()["scalars"] and imle.Tags()["images"] == ["imle/samples"]
    hparams, metrics = hparams_of(read_events(tmp_path / "tensorboard"))
    assert hparams["glo.epochs"] == 2 and hparams["data.name"] == "tiny" and "imle/nn_dist" in metrics
    # Two more GLO epochs resume from the checkpoint: the series goes on, no step twice, none out of order.
    pipeline.run(compose_train("debug=tiny", "logger=tensorboard", "logger.every_n_steps=2", "glo.epochs=4",
                               "stages=[glo]"), tmp_path, progress=False)
    glo = read_events(tmp_path / "tensorboard" / "glo")
    assert [e.step for e in glo.Scalars("glo/loss")] == [4, 8, 12, 16]
    steps = [e.step for e in glo.Scalars("glo/step_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 16
