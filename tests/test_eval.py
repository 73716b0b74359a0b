"""Metrics against closed forms and known answers; glann-eval end to end on a tiny run; sweep tables."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import REPO, compose_train

from glann import pipeline
from glann.config import DataConfig, EvalOptions, check_eval_options
from glann.errors import ArtifactError, ConfigError, DataError
from glann.evaluate import evaluate, gaussian_latents
from glann.images import read_npz
from glann.metrics import fid_from_features, frechet_distance, kid, precision_recall, trace_sqrt_product
from glann.sampler import GlannSampler
from glann.sweep import build_table

WEIGHTS = REPO.parent / "shared" / "models" / "inception-2015-12-05-fid-weights-no-classifier.pth"
needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason="FID Inception weights not in ../shared/models")


def test_trace_sqrt_product_agrees_with_scipy_sqrtm_and_handles_singular_covariances():
    from scipy import linalg

    rng = np.random.default_rng(1)
    full1, full2 = np.cov(rng.normal(size=(400, 40)), rowvar=False), np.cov(rng.normal(size=(400, 40)) @
                                                                            rng.normal(size=(40, 40)), rowvar=False)
    assert trace_sqrt_product(full1, full2) == pytest.approx(np.trace(linalg.sqrtm(full1 @ full2).real), rel=1e-9)
    # Fewer samples than features: both covariances singular (rank 9 of 64). The eigenvalues of S1 S2 are real and
    # >= 0, so the trace of its square root is the sum of their square roots.
    sing1, sing2 = np.cov(rng.normal(size=(10, 64)), rowvar=False), np.cov(rng.normal(size=(10, 64)), rowvar=False)
    eig = np.linalg.eigvals(sing1 @ sing2).real
    assert trace_sqrt_product(sing1, sing2) == pytest.approx(np.sqrt(np.clip(eig, 0, None)).sum(), rel=1e-6)
    assert np.isfinite(frechet_distance(np.zeros(64), sing1, np.ones(64), sing2))


def test_frechet_distance_matches_the_gaussian_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(closed, rel=1e-9)
    # From samples of the two Gaussians the estimate converges to the closed form.
    f1 = mu1 + rng.normal(size=(200000, d)) * np.sqrt(s1)
    f2 = mu2 + rng.normal(size=(200000, d)) * np.sqrt(s2)
    assert fid_from_features(f1, f2) == pytest.approx(closed, rel=0.02)


def test_a_set_against_itself_is_perfect():
    f = np.random.default_rng(1).normal(size=(600, 16))
    assert abs(fid_from_features(f, f)) < 1e-6
    same, _ = kid(f, f, subsets=10, subset_size=200)
    shifted, _ = kid(f, f + 0.5, subsets=10, subset_size=200)
    assert abs(same) < 0.05 * shifted
    assert precision_recall(f, f, k=3) == (1.0, 1.0)


def test_precision_and_recall_see_a_dropped_mode():
    rng = np.random.default_rng(2)
    real = np.concatenate([rng.normal(0, 1, (500, 4)), rng.normal(12, 1, (500, 4))])
    one_mode = rng.normal(0, 1, (1000, 4))  # sharp but covers half the data
    p, r = precision_recall(real, one_mode, k=3)
    assert p > 0.9 and 0.4 < r < 0.6


def test_glo_gaussian_baseline_fits_the_latent_covariance():
    z = torch.randn(5000, 3) @ torch.tensor([[2.0, 0, 0], [0.5, 1, 0], [0, 0, 0.3]]) + torch.tensor([1.0, -1, 0])
    s = gaussian_latents(z, 20000, seed=0)
    assert torch.allclose(s.mean(0), z.mean(0), atol=0.05)
    assert torch.allclose(torch.cov(s.T), torch.cov(z.T), rtol=0.05, atol=0.02)


def test_glo_gaussian_baseline_stays_on_the_sphere_of_glo_latents():
    z = torch.nn.functional.normalize(torch.randn(4000, 8) + torch.tensor([2.0] + [0.0] * 7), dim=1)
    s = gaussian_latents(z, 5000, seed=0)
    assert torch.allclose(s.norm(dim=1), torch.ones(5000), atol=1e-5)
    m = z.mean(0)  # still spread around the latents' mean direction like the latents themselves
    assert abs((s @ m).mean() - (z @ m).mean()) < 0.03


@pytest.mark.parametrize("opts,match", [
    (EvalOptions(metrics=["fid", "is"]), "unknown metric"),
    (EvalOptions(metrics=["fid"], num_samples=3), "too small for fid"),
])
def test_bad_eval_options(opts, match):
    with pytest.raises(ConfigError, match=match):
        check_eval_options(opts)


@pytest.mark.slow
@needs_weights
def test_evaluate_a_tiny_run_end_to_end(tmp_path):
    run = tmp_path / "run"
    pipeline.run(compose_train("debug=tiny"), run, progress=False)
    opts = EvalOptions(metrics=["fid", "kid", "pr", "recon_fid", "glo_gaussian", "memorization"], num_samples=12,
                       num_real=12, inception_weights=str(WEIGHTS), cache_dir=str(tmp_path / "cache"), progress=False)
    data = DataConfig(name="tiny", num_tiny=64, image_size=16)
    with pytest.raises(ConfigError, match="reference data is the training set"):
        evaluate(run / "sampler", data, opts, tmp_path / "eval0", train_cfg=data)
    held_out = DataConfig(name="tiny", num_tiny=48, image_size=16)  # a different set of tiny images
    results = evaluate(run / "sampler", held_out, opts, tmp_path / "eval", train_cfg=data)
    for key in ("fid", "kid", "precision", "recall", "recon_fid", "glo_gaussian_fid",
                "memorization/near_copy_fraction"):
        assert np.isfinite(results[key]), key
    assert results["fid"] > 0 and 0 <= results["precision"] <= 1
    assert (results["correction"], results["candidates"], results["temperature"]) == (0.5, 6, 1.0)  # the defaults
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["fid"] == pytest.approx(results["fid"])
    assert (tmp_path / "eval" / "memorization_closest_pairs.png").is_file()
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1  # reference features cached for next time
    with pytest.raises(ArtifactError, match="not a sampler directory"):
        evaluate(run / "glo", data, opts, tmp_path / "eval2")
    # Saved samples (glann-eval images=...) score exactly as the sampler that drew them.
    np.savez(tmp_path / "samples.npz", images=GlannSampler.from_pretrained(run / "sampler")(12, seed=opts.seed).images)
    # (KID and precision/recall tell samples apart as well as FID and skip its 2048 x 2048 eigendecompositions.)
    sample_opts = replace(opts, metrics=["kid", "pr"])
    saved = evaluate(None, held_out, sample_opts, tmp_path / "eval3", images=read_npz(tmp_path / "samples.npz"))
    assert saved["kid"] == pytest.approx(results["kid"])
    assert (saved["precision"], saved["recall"]) == (results["precision"], results["recall"])
    wide = evaluate(run / "sampler", held_out, replace(sample_opts, candidates=12), tmp_path / "eval5")
    assert wide["candidates"] == 12 and wide["kid"] != pytest.approx(results["kid"])  # other samples
    plain = evaluate(run / "sampler", held_out, replace(sample_opts, correction=0.0), tmp_path / "eval6")
    assert plain["correction"] == 0 and "candidates" not in plain
    with pytest.raises(ConfigError, match="need a trained sampler_dir"):
        evaluate(None, held_out, opts, tmp_path / "eval4", images=read_npz(tmp_path / "samples.npz"))


def test_read_npz_refuses_what_is_not_an_image_array(tmp_path):
    np.savez(tmp_path / "other.npz", pixels=np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(DataError, match="no 'images' array.*pixels"):
        read_npz(tmp_path / "other.npz")
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(DataError, match="must be uint8"):
        read_npz(tmp_path / "float.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        read_npz(tmp_path / "junk.npz")
    images = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
    np.savez(tmp_path / "ok.npz", images=images)
    assert np.array_equal(read_npz(tmp_path / "ok.npz"), images)


def test_sweep_table_sorted_by_fid(tmp_path):
    for job, fid, over in (("0", 30.0, "imle.lr=0.1"), ("1", 12.5, "imle.lr=0.01"), ("2", None, "imle.lr=1")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- {over}\n")
        if fid is not None:
            (tmp_path / job / "results.json").write_text(json.dumps({"eval/fid": fid, "imle/nn_dist": 0.5}))
    md = build_table(tmp_path)
    lines = md.read_text().splitlines()
    assert "Sorted by eval/fid" in lines[0]
    body = [line for line in lines if line.startswith("| ") and "overrides" not in line]
    assert [line.split("|")[1].strip() for line in body] == ["1", "0", "2"]
    assert "incomplete" in body[-1]
    rows = (tmp_path / "sweep_table.csv").read_text().splitlines()
    assert rows[0].startswith("job,overrides,status,eval/fid") and len(rows) == 4
