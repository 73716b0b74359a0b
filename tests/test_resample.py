"""Density correction (glann.resample): the k-NN ratio, the weighted draw, and the sampler around them."""
import logging
import math

import numpy as np
import pytest
import torch

from glann import resample
from glann.config import EvalOptions, SampleConfig, check_eval_options, validate_sample
from glann.errors import ArtifactError, ConfigError
from glann.files import read_json
from glann.sampler import REFERENCE_FILE, GlannSampler


def two_clusters(n: int, share_a: float, seed: int, dim: int = 8) -> torch.Tensor:
    """n points: a share ``share_a`` around +3 e_0, the rest around -3 e_0 (unit spread)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    in_a = torch.rand(n, generator=g) < share_a
    x[:, 0] += torch.where(in_a, 3.0, -3.0)
    return x


def test_ratio_recovers_the_cluster_weights():
    data = two_clusters(4000, 0.8, seed=0)  # p_data: 80 / 20
    model = two_clusters(4000, 0.5, seed=1)  # p_model: 50 / 50
    codes = two_clusters(2000, 0.5, seed=2)
    ratio = resample.density_ratio(codes, data, model, k=30)
    in_a = codes[:, 0] > 0
    # the true ratios are 0.8/0.5 = 1.6 and 0.2/0.5 = 0.4; a k=30 count is a noisy but unbiased-ish estimate
    assert 1.35 < ratio[in_a].median() < 1.9
    assert 0.3 < ratio[~in_a].median() < 0.55
    # the same distribution on both sides: ratios around 1
    same = resample.density_ratio(codes, model, two_clusters(4000, 0.5, seed=3), k=30)
    assert 0.85 < same.median() < 1.2


def test_ratio_needs_equal_reference_sets():
    with pytest.raises(ValueError, match="equally large"):
        resample.density_ratio(torch.zeros(3, 2), torch.zeros(5, 2), torch.zeros(4, 2))


def test_pick_chooses_columns_in_proportion():
    ratio = torch.tensor([[4.0, 1.0, 1.0, 1.0, 1.0, 1.0]]).repeat(20000, 1)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def share_of_first(strength):
        pick = resample.pick(ratio, strength, u)
        assert pick.min() >= 0 and pick.max() <= 5
        return (pick == 0).double().mean().item()

    assert abs(share_of_first(1.0) - 4 / 9) < 0.015
    assert abs(share_of_first(0.5) - 2 / 7) < 0.015
    assert abs(share_of_first(0.0) - 1 / 6) < 0.015
    # the uniforms decide: u just below a column's cumulative share picks it, the top of [0, 1) the last column
    assert resample.pick(torch.tensor([[1.0, 1.0]] * 3), 1.0, torch.tensor([0.0, 0.49, 0.999])).tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="uniforms"):
        resample.pick(ratio[:5], 1.0, u[:4])


def test_subsample_reference_keeps_at_most_max_codes_in_order():
    codes = torch.arange(100.0).unsqueeze(1).repeat(1, 3)
    sub = resample.subsample_reference(codes, max_codes=30)
    assert sub.shape == (30, 3) and torch.all(sub[1:, 0] > sub[:-1, 0])
    assert torch.equal(resample.subsample_reference(codes, max_codes=30), sub)
    assert torch.equal(resample.subsample_reference(codes[:20], max_codes=30), codes[:20])


@pytest.fixture
def referenced(sampler):
    """The tiny sampler, with reference codes where only half of its noise space maps: the mapper's codes of noise
    whose first coordinate is positive."""
    noise = torch.randn(800, 4, generator=torch.Generator().manual_seed(11)).abs()
    with torch.no_grad():
        reference = sampler.mapper(noise)
    return GlannSampler(sampler.mapper, sampler.generator, reference=reference)


def distance_to_reference(sampler, strength, candidates=resample.DEFAULT_CANDIDATES):
    """Mean distance from 300 (corrected) codes of ``sampler`` to the nearest of its reference codes."""
    noise = sampler.noise(300 * candidates, seed=0)
    u = torch.rand(300, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    codes = sampler._corrected_codes(noise, u, 1.0, strength, 500) if strength else sampler._map(noise[:300], 500)
    return torch.cdist(codes, sampler.reference).min(1).values.mean().item()


def test_correction_moves_samples_towards_the_reference(referenced):
    off, half, full = (distance_to_reference(referenced, s) for s in (0.0, 0.5, 1.0))
    assert full < half < off
    assert full < 0.85 * off


@pytest.mark.parametrize("strength", [0.0, 1.0])
def test_samples_come_with_the_codes_they_decode(referenced, strength):
    out = referenced(20, seed=4, correction=strength, output_type="tensor")
    assert out.latents.shape == (20, referenced.mapper.arch.latent_dim)
    assert torch.allclose(referenced.decode(out.latents), out.images, atol=1e-6)
    if strength == 0:  # plain samples: the mapper's codes of the seed's noise
        assert torch.allclose(out.latents, referenced.mapper(referenced.noise(20, seed=4)), atol=1e-6)
    else:  # corrected: each kept code is one of its candidates, so they differ from the plain codes
        assert not torch.allclose(out.latents, referenced(20, seed=4, correction=0.0).latents)


def test_more_candidates_correct_more_fully(referenced):
    """With more codes to choose from, the kept ones sit closer to where the reference codes are."""
    two, six, many = (distance_to_reference(referenced, 1.0, c) for c in (2, 6, 24))
    assert many < six < two < distance_to_reference(referenced, 0.0)
    default = referenced(24, seed=4, output_type="tensor").images
    assert referenced.candidates_per_image() == resample.DEFAULT_CANDIDATES
    assert torch.equal(default, referenced(24, seed=4, output_type="tensor",
                                           candidates=resample.DEFAULT_CANDIDATES).images)
    assert not torch.allclose(default, referenced(24, seed=4, output_type="tensor", candidates=12).images)
    plain = referenced(24, seed=4, output_type="tensor", correction=0).images  # no correction: candidates unused
    assert torch.equal(plain, referenced(24, seed=4, output_type="tensor", correction=0, candidates=12).images)


def test_default_is_corrected_when_the_sampler_has_reference_codes(referenced, sampler):
    assert referenced.correction_strength() == resample.DEFAULT_STRENGTH
    assert sampler.correction_strength() == 0.0
    a = referenced(24, seed=4, output_type="tensor").images
    assert torch.equal(a, referenced(24, seed=4, output_type="tensor", correction=0.5).images)
    assert torch.allclose(a, referenced(24, seed=4, batch_size=5, output_type="tensor").images, atol=1e-6)  # any batch
    # size (to float rounding, as test_sampler: the matmul blocking differs with the batch and the thread count)
    plain = referenced(24, seed=4, output_type="tensor", correction=0).images
    assert torch.equal(plain, sampler(24, seed=4, output_type="tensor").images)  # 0: the uncorrected sampler
    assert not torch.allclose(a, plain)
    assert not torch.allclose(a, referenced(24, seed=5, output_type="tensor").images)
    cold = referenced(24, seed=4, output_type="tensor", temperature=0.5).images  # its own model reference
    assert cold.shape == a.shape and not torch.allclose(cold, a)


def test_reference_codes_round_trip_through_the_folder(referenced, tmp_path):
    folder = referenced.save_pretrained(tmp_path / "s")
    assert read_json(folder / "sampler.json")["reference_codes"] == len(referenced.reference)
    loaded = GlannSampler.from_pretrained(folder)
    assert torch.equal(loaded.reference, referenced.reference)
    assert np.array_equal(loaded(10, seed=1).images, referenced(10, seed=1).images)
    gentle = GlannSampler(referenced.mapper, referenced.generator, referenced.reference, correction=0.25)
    loaded = GlannSampler.from_pretrained(gentle.save_pretrained(tmp_path / "gentle"))
    assert loaded.correction_strength() == 0.25  # the exported default travels with the folder
    assert np.array_equal(loaded(10, seed=1).images, referenced(10, seed=1, correction=0.25).images)
    wide = GlannSampler(referenced.mapper, referenced.generator, referenced.reference, candidates=12)
    loaded = GlannSampler.from_pretrained(wide.save_pretrained(tmp_path / "wide"))
    assert read_json(tmp_path / "wide" / "sampler.json")["candidates"] == loaded.candidates_per_image() == 12
    assert np.array_equal(loaded(10, seed=1).images, referenced(10, seed=1, candidates=12).images)
    (folder / REFERENCE_FILE).unlink()
    with pytest.raises(ArtifactError, match=REFERENCE_FILE):
        GlannSampler.from_pretrained(folder)


def test_a_sampler_without_reference_codes_says_so(sampler, caplog):
    with caplog.at_level(logging.WARNING, logger="glann.sampler"):
        sampler(3)
    assert "no reference codes" in caplog.text
    with pytest.raises(ArtifactError, match="correction=0"):
        sampler(3, correction=0.5)


@pytest.mark.parametrize("bad", [-0.5, math.inf, math.nan, True])
def test_bad_strengths_are_refused_everywhere(referenced, bad):
    with pytest.raises(ConfigError, match="correction must be"):
        referenced(2, correction=bad)
    with pytest.raises(ConfigError, match="^correction must be"):
        validate_sample(SampleConfig(sampler_dir="x", correction=bad))
    with pytest.raises(ConfigError, match="eval.correction"):
        check_eval_options(EvalOptions(metrics=["memorization"], correction=bad))


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, True, "6"])
def test_bad_candidate_counts_are_refused_everywhere(referenced, tiny_cfg, bad):
    from dataclasses import replace

    from glann.config import validate

    with pytest.raises(ConfigError, match="^candidates must be an integer >= 2"):
        referenced(2, candidates=bad)
    with pytest.raises(ConfigError, match="^candidates must be"):
        referenced(2, correction=0, candidates=bad)  # refused even where the correction is off
    with pytest.raises(ConfigError, match="^candidates must be"):
        GlannSampler(referenced.mapper, referenced.generator, referenced.reference, candidates=bad)
    with pytest.raises(ConfigError, match="^candidates must be"):
        validate_sample(SampleConfig(sampler_dir="x", candidates=bad))
    with pytest.raises(ConfigError, match="eval.candidates"):
        check_eval_options(EvalOptions(metrics=["memorization"], candidates=bad))
    with pytest.raises(ConfigError, match="sampler.candidates"):
        validate(replace(tiny_cfg, sampler=replace(tiny_cfg.sampler, candidates=bad)))


def test_reference_codes_must_fit_the_mapper(sampler):
    with pytest.raises(ArtifactError, match="reference codes"):
        GlannSampler(sampler.mapper, sampler.generator, reference=torch.zeros(5, 3))


def test_training_config_sets_the_exported_default(tiny_cfg):
    from dataclasses import replace

    from glann.config import validate

    with pytest.raises(ConfigError, match="sampler.correction"):
        validate(replace(tiny_cfg, sampler=replace(tiny_cfg.sampler, correction=-1.0)))
    assert validate(replace(tiny_cfg, sampler=replace(tiny_cfg.sampler, correction=0.0))).sampler.correction == 0
