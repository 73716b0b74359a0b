import math

import pytest
import torch

from glann.config import EvalOptions, SampleConfig, validate_sample
from glann.config import check_eval_options as check_options
from glann.errors import ConfigError


def test_temperature_one_gives_todays_images(sampler):
    noise = torch.randn(20, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = sampler.generator(sampler.mapper(noise))  # what __call__ computed before temperature existed
    assert torch.equal(sampler(20, seed=5, output_type="tensor").images, expected)
    assert torch.equal(sampler(20, seed=5, output_type="tensor", temperature=1.0).images, expected)


def test_lower_temperature_gives_less_diverse_samples(sampler):
    def spread(t):
        imgs = sampler(400, seed=1, output_type="tensor", temperature=t).images.flatten(1)
        return imgs.std(0).mean().item()

    s_cold, s_mid, s_one = spread(0.1), spread(0.5), spread(1.0)
    assert s_cold < s_mid < s_one
    assert s_cold < 0.3 * s_one
    # temperature scales the noise, so t -> 0 collapses onto the image of the zero noise vector
    tiny = sampler(5, seed=2, output_type="tensor", temperature=1e-6).images
    with torch.no_grad():
        zero = sampler.generator(sampler.mapper(torch.zeros(1, 4)))
    assert torch.allclose(tiny, zero.expand_as(tiny), atol=1e-4)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_temperature_must_be_positive(sampler, bad):
    with pytest.raises(ValueError, match="temperature"):
        sampler(2, temperature=bad)


def test_temperature_settings_are_validated():
    with pytest.raises(ConfigError, match="^temperature must be"):
        validate_sample(SampleConfig(sampler_dir="x", temperature=0.0))
    assert validate_sample(SampleConfig(sampler_dir="x", temperature=0.7)).temperature == 0.7
    with pytest.raises(ConfigError, match="eval.temperature"):
        check_options(EvalOptions(metrics=["memorization"], temperature=-2.0))
    check_options(EvalOptions(metrics=["memorization"], temperature=0.8))


def test_the_sampler_default_temperature_is_used_saved_and_overridable(sampler, tmp_path):
    from glann.sampler import GlannSampler

    cold = GlannSampler(sampler.mapper, sampler.generator, temperature=0.5)
    at_half = sampler(12, seed=3, output_type="tensor", temperature=0.5).images
    assert torch.equal(cold(12, seed=3, output_type="tensor").images, at_half)
    assert not torch.allclose(at_half, sampler(12, seed=3, output_type="tensor").images)
    assert torch.equal(cold(12, seed=3, output_type="tensor", temperature=1.0).images,
                       sampler(12, seed=3, output_type="tensor").images)
    loaded = GlannSampler.from_pretrained(cold.save_pretrained(tmp_path / "s"))
    assert loaded.default_temperature == 0.5
    assert torch.equal(loaded(12, seed=3, output_type="tensor").images, at_half)


def test_a_sampler_json_without_a_temperature_loads_at_one(sampler, tmp_path):
    import json

    from glann.sampler import GlannSampler

    folder = GlannSampler(sampler.mapper, sampler.generator, temperature=0.3).save_pretrained(tmp_path / "s")
    meta = json.loads((folder / "sampler.json").read_text())
    assert meta["temperature"] == 0.3
    del meta["temperature"]  # a folder written before sampler.temperature existed
    (folder / "sampler.json").write_text(json.dumps(meta))
    assert GlannSampler.from_pretrained(folder).default_temperature == 1.0


@pytest.mark.parametrize("bad", [0.0, -0.5, math.inf])
def test_a_bad_default_temperature_is_refused(sampler, bad):
    from glann.config import TrainConfig, validate
    from glann.sampler import GlannSampler

    with pytest.raises(ConfigError, match="^temperature must be"):
        GlannSampler(sampler.mapper, sampler.generator, temperature=bad)
    cfg = TrainConfig()
    cfg.sampler.temperature = bad
    with pytest.raises(ConfigError, match="^sampler.temperature must be"):
        validate(cfg)


def test_interpolation_endpoints_are_drawn_at_the_temperature(sampler):
    from glann.sample import interpolation_images
    from glann.sampler import to_uint8

    conf = SampleConfig(sampler_dir="x", mode="interpolate", num_pairs=2, interpolation_steps=3, seed=4,
                        temperature=0.4)
    images = interpolation_images(sampler, conf)
    noise = sampler.noise(4, seed=4) * 0.4
    with torch.no_grad():
        ends = sampler.generator(sampler.mapper(noise)).float()
    first_of_each_pair = images[[0, 3]]  # rows: pair 0 (steps 0..2), pair 1 (steps 3..5)
    assert (first_of_each_pair.astype(int) - to_uint8(ends[[0, 2]]).astype(int)).__abs__().max() <= 1
    assert not (interpolation_images(sampler, SampleConfig(sampler_dir="x", mode="interpolate", num_pairs=2,
                                                           interpolation_steps=3, seed=4)) == images).all()
