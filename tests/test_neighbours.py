"""Nearest-neighbour figures (glann-eval eval.metrics=[..., neighbours]): samples beside their closest training
images."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, compose_train
from PIL import Image

from glann import pipeline
from glann.config import DataConfig, EvalOptions
from glann.config import check_eval_options as check_options
from glann.evaluate import _knn, evaluate, neighbours_figure

WEIGHTS = Path(os.environ.get("GLANN_FID_WEIGHTS")
               or REPO.parent / "shared" / "models" / "inception-2015-12-05-fid-weights-no-classifier.pth")


def test_each_row_is_a_sample_then_its_nearest_training_images(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(40, 1, 8, 8), dtype=np.uint8)
    samples = train[[7, 3, 21]].copy()
    samples[1, 0, 0, 0] ^= 1  # a near copy still finds its original first
    figures = neighbours_figure(samples, train, tmp_path, k=4)
    assert list(figures) == ["pixel"]
    import torch

    nn = _knn(torch.from_numpy(train).reshape(40, -1).float(), torch.from_numpy(samples).reshape(3, -1).float(), 4)
    assert nn[:, 0].tolist() == [7, 3, 21]
    figure = np.asarray(Image.open(figures["pixel"]).convert("L"))
    scale = 64 // 8
    body_h, body_w = 3 * 10 + 2, 6 * 10 + 2  # 3 rows of (sample, gap, 4 neighbours), 8 px tiles + 2 px padding
    assert figure.shape[0] == body_h * scale + 22 and figure.shape[1] >= body_w * scale
    assert (figure[:22] < 128).any()  # the caption is drawn in the title band
    body = figure[22:22 + body_h * scale, :body_w * scale][::scale, ::scale]
    tile = body[2:10, 2:10]  # the first sample, and beside it (after the gap) its nearest neighbour
    assert np.array_equal(tile, samples[0, 0]) and np.array_equal(body[2:10, 22:30], train[7, 0])


def test_features_give_a_second_figure_by_feature_distance(tmp_path):
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, size=(30, 3, 8, 8), dtype=np.uint8)
    feats = rng.normal(size=(30, 5))
    subset = np.arange(0, 30, 2)  # features exist for every second training image
    figures = neighbours_figure(train[:2], train, tmp_path, features=(feats[[4, 6]], feats[subset], subset), k=3)
    assert sorted(figures) == ["inception", "pixel"]
    assert all(p.is_file() for p in figures.values())


def test_neighbours_needs_no_inception_weights():
    check_options(EvalOptions(metrics=["neighbours"], num_samples=1, inception_weights="/nonexistent.pth"))


def test_evaluate_writes_the_neighbours_figure(tmp_path):
    run = tmp_path / "run"
    pipeline.run(compose_train("debug=tiny"), run, progress=False)
    opts = EvalOptions(metrics=["neighbours"], num_samples=12, progress=False, device="cpu")
    data = DataConfig(name="tiny", num_tiny=64, image_size=16)
    results = evaluate(run / "sampler", data, opts, tmp_path / "eval", train_cfg=data)
    assert Path(results["neighbours/pixel_figure"]).is_file()
    assert "neighbours/inception_figure" not in results


@pytest.mark.slow
@pytest.mark.skipif(not WEIGHTS.is_file(), reason="no FID Inception weights in ../shared/models or $GLANN_FID_WEIGHTS")
def test_evaluate_with_inception_writes_both_figures(tmp_path):
    run = tmp_path / "run"
    pipeline.run(compose_train("debug=tiny"), run, progress=False)
    opts = EvalOptions(metrics=["fid", "neighbours"], num_samples=12, num_real=24, inception_weights=str(WEIGHTS),
                       cache_dir=str(tmp_path / "cache"), progress=False, device="cpu")
    data = DataConfig(name="tiny", num_tiny=64, image_size=16)
    results = evaluate(run / "sampler", data, opts, tmp_path / "eval", train_cfg=data)
    assert Path(results["neighbours/inception_figure"]).is_file()
