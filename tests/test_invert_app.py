"""glann-invert and glann-sample mode=interpolate as a user runs them; bad input gives one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_cli

from glann.errors import DataError
from glann.invert_app import read_images
from glann.nets import Generator, GeneratorArch, Mapper, MapperArch
from glann.sampler import GlannSampler


@pytest.fixture(scope="module")
def sampler_dir(tmp_path_factory):
    """A small untrained sampler (16 px grey images) with its loss settings recorded."""
    torch.manual_seed(0)
    gen = Generator(GeneratorArch(latent_dim=8, image_size=16, channels=1, hidden_dim=16, base_channels=4))
    gen.train()
    gen(torch.randn(32, 8))
    sampler = GlannSampler(Mapper(MapperArch(noise_dim=4, latent_dim=8, hidden_dim=16)), gen.eval())
    return sampler.save_pretrained(tmp_path_factory.mktemp("s") / "sampler", loss={"name": "lap1", "lap_levels": 3})


def write_pngs(folder, count, size=(20, 24), mode="RGB"):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        shape = (size[0], size[1], 3) if mode == "RGB" else size
        Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(folder / f"{i:02d}.png")
    return folder


@pytest.mark.slow  # a Hydra app in a subprocess
def test_invert_a_folder_writes_codes_reconstructions_losses_and_a_grid(sampler_dir, tmp_path):
    images = write_pngs(tmp_path / "imgs", 5)  # RGB 20x24: converted to grey 16x16 as training data would be
    (images / "notes.txt").write_text("not an image")
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "inv.npz"
    res = run_cli("invert_app", f"sampler_dir={sampler_dir}", f"images={images}", f"output={out}", "steps=5",
                  "candidates=32", f"hydra.run.dir={tmp_path / 'h'}")
    assert res.returncode == 0, res.stderr[-3000:]
    with np.load(out) as z:
        latents, recon, losses = z["latents"], z["images"], z["losses"]
    assert latents.shape == (5, 8) and np.allclose(np.linalg.norm(latents, axis=1), 1, atol=1e-5)
    assert recon.shape == (5, 16, 16, 1) and recon.dtype == np.uint8
    assert losses.shape == (5,) and np.isfinite(losses).all()
    from PIL import Image

    grid = Image.open(tmp_path / "inv_grid.png")
    assert grid.size == (5 * 18 + 2, 2 * 18 + 2)  # one row of 5 originals above one row of 5 reconstructions


@pytest.mark.parametrize("make, needle", [
    (lambda d: write_pngs(d / "empty", 0), "holds no image files"),
    (lambda d: (d / "bad").mkdir() or (d / "bad" / "x.png").write_bytes(b"junk") and d / "bad", "no readable images"),
    (lambda d: np.savez(d / "k.npz", pictures=np.zeros((2, 8, 8), np.uint8)) or d / "k.npz", "no 'images' array"),
    (lambda d: np.savez(d / "f.npz", images=np.zeros((2, 8, 8, 1), np.float32)) or d / "f.npz", "must be uint8"),
    (lambda d: np.savez(d / "c.npz", images=np.zeros((2, 8, 8, 2), np.uint8)) or d / "c.npz", "2 channels"),
    (lambda d: d / "missing.npz", "does not exist"),
])
def test_bad_images_are_one_line_data_errors(tmp_path, make, needle):
    path = make(tmp_path)
    with pytest.raises(DataError, match=needle) as info:
        read_images(path, 1, 16)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_npz_layouts_are_read_and_conformed(tmp_path):
    nhwc = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=nhwc)
    np.savez(tmp_path / "b.npz", images=nhwc.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "c.npz", images=nhwc[..., 0])
    a, b, c = (read_images(tmp_path / f"{k}.npz", 1, 16) for k in "abc")
    assert a.shape == (3, 1, 16, 16) and np.array_equal(a, b)
    assert c.shape == (3, 1, 16, 16)


@pytest.mark.slow  # a Hydra app in a subprocess
def test_invert_cli_errors_are_one_line(sampler_dir, tmp_path):
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 16, 16, 1), np.float64))
    res = run_cli("invert_app", f"sampler_dir={sampler_dir}", f"images={tmp_path / 'f.npz'}",
                  f"hydra.run.dir={tmp_path / 'h'}")
    assert res.returncode == 1 and "must be uint8" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("changes, needle", [
    (dict(images=None), "images is required"), (dict(sampler_dir=None), "sampler_dir is required"),
    (dict(steps=0), "steps must be positive"), (dict(init="pca"), "init must be"), (dict(output="x.png"), ".npz"),
])
def test_invert_config_errors_name_the_key(changes, needle):
    from glann.config import InvertConfig, validate_invert
    from glann.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        validate_invert(InvertConfig(**{"sampler_dir": "s", "images": "i", **changes}))


@pytest.mark.parametrize("changes, needle", [
    (dict(interpolation_steps=1), "interpolation_steps must be at least 2"), (dict(num_pairs=0), "num_pairs"),
    (dict(interpolation_space="pixel"), "interpolation_space"), (dict(mode="walk"), "mode must be"),
])
def test_interpolate_config_errors_name_the_key(changes, needle):
    from glann.config import SampleConfig, validate_sample
    from glann.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        validate_sample(SampleConfig(**{"sampler_dir": "s", "mode": "interpolate", **changes}))


@pytest.mark.slow  # a Hydra app in a subprocess
def test_sample_mode_interpolate_writes_one_row_per_pair(sampler_dir, tmp_path):
    out = tmp_path / "walk.npz"
    res = run_cli("sample", f"sampler_dir={sampler_dir}", "mode=interpolate", "num_pairs=3", "interpolation_steps=5",
                  f"output={out}", f"hydra.run.dir={tmp_path / 'h'}")
    assert res.returncode == 0, res.stderr[-3000:]
    with np.load(out) as z:
        images = z["images"]
    assert images.shape == (15, 16, 16, 1)
    sampler = GlannSampler.from_pretrained(sampler_dir)
    with torch.no_grad():
        ends = sampler.mapper(sampler.noise(6, seed=0))  # pair i runs from code 2i to code 2i+1
    expected = sampler.interpolate(ends[2:4], steps=5).images
    assert np.abs(images[5:10].astype(int) - expected.astype(int)).max() <= 1
    from PIL import Image

    assert Image.open(tmp_path / "walk_grid.png").size == (5 * 18 + 2, 3 * 18 + 2)
