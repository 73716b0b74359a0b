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
