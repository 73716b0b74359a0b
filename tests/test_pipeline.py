import json
import shutil

import numpy as np
import pytest
import torch
from conftest import compose_train

from glann import pipeline
from glann.artifacts import load_tensors
from glann.errors import ArtifactError
from glann.sampler import GlannSampler


def test_whole_pipeline_on_tiny_config(tiny_cfg, tmp_path):
    results = pipeline.run(tiny_cfg, tmp_path, progress=False)
    for path in ["glo/manifest.json", "glo/generator/model.safetensors", "glo/latents.safetensors",
                 "imle/manifest.json", "imle/mapper/config.json", "sampler/sampler.json", "samples.png"]:
        assert (tmp_path / path).is_file(), path
    sampler = GlannSampler.from_pretrained(results["sampler_dir"])
    images = sampler(5, seed=0).images
    assert images.shape == (5, 16, 16, 1) and images.dtype == np.uint8
    # the export carries the training codes, so the sampler draws density-corrected samples by default
    codes = load_tensors(tmp_path / "glo" / "latents.safetensors")["latents"]
    assert sampler.reference is not None and torch.equal(sampler.reference, codes.float())
    assert sampler.correction_strength() == tiny_cfg.sampler.correction == 0.5
    manifest = json.loads((tmp_path / "imle" / "manifest.json").read_text())
    assert manifest["inputs"]["glo_hash"] == json.loads((tmp_path / "glo" / "manifest.json").read_text())["config_hash"]


def test_rerun_skips_finished_stages_and_changed_imle_config_retrains_only_imle(tmp_path, caplog):
    cfg = compose_train("debug=tiny")
    pipeline.run(cfg, tmp_path, progress=False)
    glo_mtime = (tmp_path / "glo" / "generator" / "model.safetensors").stat().st_mtime_ns
    imle_mtime = (tmp_path / "imle" / "mapper" / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        pipeline.run(cfg, tmp_path, progress=False)
    assert "glo: reusing finished stage" in caplog.text and "imle: reusing finished stage" in caplog.text
    assert (tmp_path / "imle" / "mapper" / "model.safetensors").stat().st_mtime_ns == imle_mtime
    # New IMLE settings: the old IMLE checkpoint belongs to other settings and is refused, not mixed in;
    # once it is deleted, GLO is kept and IMLE retrains from scratch.
    cfg2 = compose_train("debug=tiny", "imle.samples_per_latent=3", "imle.rounds=3")
    with pytest.raises(ArtifactError, match="written with other settings"):
        pipeline.run(cfg2, tmp_path, progress=False)
    shutil.rmtree(tmp_path / "imle")
    pipeline.run(cfg2, tmp_path, progress=False)
    assert (tmp_path / "glo" / "generator" / "model.safetensors").stat().st_mtime_ns == glo_mtime
    rows = (tmp_path / "imle" / "stats.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["round"] == 3


def test_glo_resumes_from_its_checkpoint(tmp_path):
    cfg = compose_train("debug=tiny", "glo.epochs=2", "stages=[glo]")
    pipeline.run(cfg, tmp_path, progress=False)
    state = torch.load(tmp_path / "glo" / "state" / "last.pt", weights_only=True)
    assert state["epoch"] == 2
    # More epochs: the manifest no longer matches, training continues from epoch 2 (not from 0).
    cfg4 = compose_train("debug=tiny", "glo.epochs=4", "stages=[glo]")
    pipeline.run(cfg4, tmp_path, progress=False)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "glo" / "stats.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
    # Fewer epochs than the checkpoint holds would export a longer-trained model than the config says.
    with pytest.raises(ArtifactError, match="past glo.epochs=3"):
        pipeline.run(compose_train("debug=tiny", "glo.epochs=3", "stages=[glo]"), tmp_path, progress=False)


def test_shared_glo_cache_is_per_glann_version(tmp_path, monkeypatch, caplog):
    """A cached GLO stage is reused by runs of the same release; another release trains its own."""
    from glann import version

    cache = tmp_path / "cache"
    cfg = compose_train("debug=tiny", "stages=[glo]", f"cache_dir={cache}")
    pipeline.run(cfg, tmp_path / "a", progress=False)
    with caplog.at_level("INFO"):
        pipeline.run(cfg, tmp_path / "b", progress=False)
    assert "glo: reusing finished stage" in caplog.text
    assert (tmp_path / "a" / "glo").resolve() == (tmp_path / "b" / "glo").resolve()
    caplog.clear()
    monkeypatch.setattr(version, "__version__", version.__version__ + ".post1")
    with caplog.at_level("INFO"):
        pipeline.run(cfg, tmp_path / "c", progress=False)
    assert "glo: reusing" not in caplog.text
    assert (tmp_path / "c" / "glo").resolve() != (tmp_path / "a" / "glo").resolve()
    assert len([p for p in cache.glob("glo-*") if p.is_dir()]) == 2


def test_sampler_temperature_is_exported_as_the_samplers_default(tmp_path):
    cfg = compose_train("debug=tiny", "sampler.temperature=0.6")
    results = pipeline.run(cfg, tmp_path, progress=False)
    assert json.loads((tmp_path / "sampler" / "sampler.json").read_text())["temperature"] == 0.6
    sampler = GlannSampler.from_pretrained(results["sampler_dir"])
    assert sampler.sampling_temperature() == 0.6
    assert np.array_equal(sampler(6, seed=1).images, sampler(6, seed=1, temperature=0.6).images)
    assert not np.array_equal(sampler(6, seed=1).images, sampler(6, seed=1, temperature=1.0).images)
