"""Inversion (codes fitted to images with the generator frozen), slerp and GlannSampler.interpolate/invert."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from glann.config import DataConfig, GeneratorConfig, GLOConfig, LossConfig
from glann.data import conform_images, load_dataset
from glann.errors import DataError
from glann.glo import load_glo, train_glo
from glann.inversion import invert, random_codes, slerp, slerp_path
from glann.losses import Lap1Loss
from glann.sampler import GlannSampler


@pytest.fixture(scope="module")
def tiny_glo(tmp_path_factory):
    """A GLO trained for a few seconds on 32 synthetic 16 px images (as tests/test_glo.py trains it; higher
    learning rates and more steps, so that its codes matter: random codes reconstruct twice as badly)."""
    out = tmp_path_factory.mktemp("glo")
    data = load_dataset(DataConfig(name="tiny", num_tiny=32, image_size=16))
    cfg = GLOConfig(latent_dim=8, epochs=30, batch_size=8, lr_generator=3e-3, lr_latent=5e-2, grid_every=0,
                    generator=GeneratorConfig(hidden_dim=32, base_channels=8))
    train_glo(data, cfg, LossConfig(lap_levels=3), out, torch.device("cpu"), progress=False)
    gen, z = load_glo(out)
    return gen, z, data



def test_inversion_recovers_a_training_images_own_code(tiny_glo):
    gen, z, data = tiny_glo
    idx = torch.arange(0, 32, 2)
    x = data.batch(idx)
    loss = Lap1Loss(3)
    result = invert(gen, x, loss, steps=100, lr=0.05, batch_size=16, seed=0, restarts=4, progress=False)
    own = z[idx]
    random = random_codes(len(idx), 8, seed=123)
    assert torch.allclose(result.latents.norm(dim=1), torch.ones(len(idx)), atol=1e-5)
    cos_fit = (result.latents * own).sum(1)
    cos_random = (random * own).sum(1)
    assert cos_fit.mean() > cos_random.mean() + 0.5, (cos_fit, cos_random)
    with torch.no_grad():
        loss_random = loss(gen(random), x)
        loss_own = loss(gen(own), x)
    assert result.losses.mean() < 0.7 * loss_random.mean()
    assert result.losses.mean() < 1.2 * loss_own.mean()
    assert torch.allclose(result.losses, loss(result.reconstructions, x), atol=1e-5)


def test_inversion_is_seeded_batch_size_free_and_leaves_the_generator_alone(tiny_glo):
    gen, _, data = tiny_glo
    x = data.batch(torch.arange(6))
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    gen.train()
    a = invert(gen, x, Lap1Loss(3), steps=20, batch_size=6, seed=1, progress=False)
    b = invert(gen, x, Lap1Loss(3), steps=20, batch_size=4, seed=1, progress=False)
    c = invert(gen, x, Lap1Loss(3), steps=20, batch_size=6, seed=2, progress=False)
    assert torch.allclose(a.latents, b.latents, atol=1e-4)
    assert not torch.allclose(a.latents, c.latents, atol=1e-2)
    assert gen.training and all(p.requires_grad for p in gen.parameters())
    assert all(torch.equal(v, gen.state_dict()[k]) for k, v in before.items())  # incl. BatchNorm statistics
    gen.eval()


def test_invert_rejects_bad_arguments(tiny_glo):
    gen, _, data = tiny_glo
    x = data.batch(torch.arange(2))
    with pytest.raises(ValueError, match="generator makes"):
        invert(gen, torch.rand(2, 3, 16, 16), Lap1Loss(3), steps=1, progress=False)
    with pytest.raises(ValueError, match="init must be"):
        invert(gen, x, Lap1Loss(3), steps=1, init=torch.randn(3, 8), progress=False)
    with pytest.raises(ValueError, match="steps must be positive"):
        invert(gen, x, Lap1Loss(3), steps=0, progress=False)


def test_slerp_endpoints_are_exact_and_unit_codes_stay_on_the_sphere():
    a, b = random_codes(5, 8, seed=0), random_codes(5, 8, seed=1)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    mid = slerp(a, b, torch.full((5,), 0.5))
    assert torch.allclose(mid.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose((mid * a).sum(1), (mid * b).sum(1), atol=1e-5)  # halfway in angle
    assert torch.allclose(slerp(a, a, 0.3), a, atol=1e-6)  # parallel rows: no division by zero
    path = slerp_path(torch.stack([a[0], b[0], a[1]]), steps=4)
    assert path.shape == (8, 8)
    assert torch.equal(path[0], a[0]) and torch.equal(path[3], b[0]) and torch.equal(path[7], a[1])


def test_interpolation_endpoints_equal_the_decoded_endpoints(sampler):
    codes = random_codes(3, 8, seed=5)
    out = sampler.interpolate(codes, steps=5, output_type="tensor")
    assert out.images.shape == (10, 1, 16, 16) and out.latents.shape == (10, 8)
    ends = sampler.decode(codes)
    for row, k in ((0, 0), (4, 1), (5, 1), (9, 2)):
        assert torch.allclose(out.images[row], ends[k], atol=1e-6), row
    assert not torch.allclose(out.images[2], ends[0], atol=1e-3)
    noise = sampler.noise(2, seed=3)  # noise-space endpoints decode to what sampling that noise gives
    walk = sampler.interpolate(noise, steps=3, space="noise", output_type="tensor").images
    sampled = sampler(2, seed=3, output_type="tensor").images
    assert torch.allclose(walk[0], sampled[0], atol=1e-6) and torch.allclose(walk[2], sampled[1], atol=1e-6)
    assert sampler.interpolate(codes, steps=2).images.dtype == np.uint8


@pytest.mark.parametrize("endpoints, steps, match", [(1, 4, "at least 2 endpoints"), (2, 1, "at least 2 steps")])
def test_interpolation_needs_two_endpoints_and_two_steps(sampler, endpoints, steps, match):
    with pytest.raises(ValueError, match=match):
        sampler.interpolate(random_codes(endpoints, 8), steps=steps)
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        sampler.interpolate(random_codes(2, 8), space="noise")


def test_sampler_records_the_loss_and_converts_images(sampler, tmp_path, caplog):
    folder = sampler.save_pretrained(tmp_path / "with", loss={"name": "lap1", "lap_levels": 2})
    loaded = GlannSampler.from_pretrained(folder)
    assert loaded.loss_config == {"name": "lap1", "lap_levels": 2} and loaded.loss_fn().levels == 2
    rgb = np.random.default_rng(0).integers(0, 256, size=(3, 20, 24, 3), dtype=np.uint8)  # NHWC, other size
    with caplog.at_level(logging.WARNING):
        result = loaded.invert(rgb, steps=3, candidates=16)
    assert "records no stage-1 loss" not in caplog.text
    assert result.latents.shape == (3, 8) and result.reconstructions.shape == (3, 1, 16, 16)
    old = GlannSampler.from_pretrained(sampler.save_pretrained(tmp_path / "old"))
    assert old.loss_config is None
    with caplog.at_level(logging.WARNING):
        assert old.loss_fn().levels == 4
    assert "records no stage-1 loss settings" in caplog.text and "lap1" in caplog.text
    with pytest.raises(DataError, match="uint8"):
        loaded.invert(rgb.astype(np.int32), steps=1)


def test_conform_images_converts_like_the_training_data():
    grey = np.full((2, 1, 8, 8), 200, dtype=np.uint8)
    rgb = conform_images(grey, 3, 8)
    assert rgb.shape == (2, 3, 8, 8) and (rgb == 200).all()
    back = conform_images(rgb, 1, 4)
    assert back.shape == (2, 1, 4, 4) and (back == 200).all()
    wide = np.zeros((1, 1, 8, 12), dtype=np.uint8)
    wide[..., 2:10] = 255  # the centre square is white, the side strips black: a centre crop keeps only white
    assert (conform_images(wide, 1, 4) == 255).all()
    with pytest.raises(DataError, match="2 channels"):
        conform_images(np.zeros((1, 2, 8, 8), dtype=np.uint8), 1, 8)
    with pytest.raises(DataError, match="uint8"):
        conform_images(np.zeros((1, 1, 8, 8), dtype=np.float32), 1, 8)
