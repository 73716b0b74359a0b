import numpy as np
import pytest
import torch

from glann.errors import ArtifactError
from glann.nets import Generator, GeneratorArch, Mapper, MapperArch
from glann.sampler import GlannSampler


def test_save_load_gives_the_same_images(sampler, tmp_path):
    sampler.save_pretrained(tmp_path / "s")
    loaded = GlannSampler.from_pretrained(tmp_path / "s")
    a = sampler(12, seed=3).images
    b = loaded(12, seed=3).images
    assert a.dtype == np.uint8 and a.shape == (12, 16, 16, 1)
    assert np.array_equal(a, b)


def test_same_seed_same_images_whatever_the_batch_size(sampler):
    a = sampler(37, seed=7, batch_size=37, output_type="tensor").images
    b = sampler(37, seed=7, batch_size=5, output_type="tensor").images
    assert torch.allclose(a, b, atol=1e-6)
    c = sampler(37, seed=8, output_type="tensor").images
    assert not torch.allclose(a, c)


def test_output_types(sampler):
    t = sampler(3, output_type="tensor").images
    assert t.shape == (3, 1, 16, 16) and 0 <= t.min() and t.max() <= 1
    pil = sampler(2, output_type="pil").images
    assert len(pil) == 2 and pil[0].size == (16, 16)
    with pytest.raises(ValueError):
        sampler(2, output_type="jpeg")


@pytest.mark.parametrize("missing", ["mapper/model.safetensors", "generator/config.json", "sampler.json"])
def test_incomplete_sampler_dir_names_the_missing_part(sampler, tmp_path, missing):
    folder = sampler.save_pretrained(tmp_path / "s")
    (folder / missing).unlink()
    with pytest.raises(ArtifactError, match=missing.split("/")[0].replace(".json", "")):
        GlannSampler.from_pretrained(folder)


def test_latent_size_mismatch_between_stages_is_refused():
    mapper = Mapper(MapperArch(noise_dim=4, latent_dim=8))
    gen = Generator(GeneratorArch(latent_dim=16, image_size=16, hidden_dim=16, base_channels=4))
    with pytest.raises(ArtifactError, match="8-d latents"):
        GlannSampler(mapper, gen)
