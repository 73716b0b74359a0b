"""``imle.mapper.categories``: a discrete part of the IMLE prior, read from the first noise coordinate."""
import json
import statistics
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import compose_train

from glann.artifacts import load_network, save_network
from glann.errors import ConfigError
from glann.imle import map_noise, train_imle
from glann.nets import Generator, GeneratorArch, Mapper, MapperArch
from glann.sampler import GlannSampler
from glann.toy import mode_metrics, run_toy, sample_mixture, toy_config


def mapper(k: int, noise_dim: int = 3, sphere: bool = False) -> Mapper:
    torch.manual_seed(0)
    return Mapper(MapperArch(noise_dim=noise_dim, latent_dim=2, hidden_dim=32, project_to_sphere=sphere,
                             categories=k)).eval()


def test_categories_are_equally_likely_and_read_from_the_first_coordinate_only():
    m = mapper(8)
    noise = torch.randn(80_000, 3, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(m.category(noise), minlength=8)
    assert len(counts) == 8 and (counts - 10_000).abs().max() < 500  # binomial std ~94
    shuffled = torch.cat([noise[:, :1], noise[torch.randperm(len(noise)), 1:]], 1)
    assert torch.equal(m.category(shuffled), m.category(noise))
    ordered = m.category(torch.linspace(-4, 4, 1001).unsqueeze(1).expand(-1, 3))
    assert (ordered.diff() >= 0).all() and ordered[0] == 0 and ordered[-1] == 7


def test_a_category_boundary_is_a_jump_and_the_continuous_noise_is_smooth():
    m = mapper(8)
    boundary = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 / 8)).item()  # between categories 0 and 1
    rest = torch.tensor([0.3, -0.7])
    rows = torch.stack([torch.cat([torch.tensor([boundary + d]), rest]) for d in (-1e-4, 1e-4)])
    assert m.category(rows).tolist() == [0, 1]
    nudged = rows[:1].clone()
    nudged[0, 1] += 2e-4
    with torch.no_grad():
        across, within = m(rows), m(torch.cat([rows[:1], nudged]))
    jump = (across[0] - across[1]).norm().item()
    assert jump > 1e-2 and (within[0] - within[1]).norm().item() < 1e-3 * jump
    # without categories the same two rows are 2e-4 apart and map as close as the continuous pair does
    with torch.no_grad():
        plain = mapper(0)(rows)
    assert (plain[0] - plain[1]).norm().item() < 1e-3 * jump


def test_temperature_scales_the_continuous_noise_and_keeps_the_categories():
    m = mapper(4, noise_dim=4, sphere=True)
    noise = torch.randn(500, 4, generator=torch.Generator().manual_seed(2))
    cold = m.scale_noise(noise, 0.3)
    assert torch.equal(cold[:, 0], noise[:, 0]) and torch.allclose(cold[:, 1:], 0.3 * noise[:, 1:])
    assert torch.equal(mapper(0, noise_dim=4).scale_noise(noise, 0.3), 0.3 * noise)
    torch.manual_seed(0)
    gen = Generator(GeneratorArch(latent_dim=2, image_size=16, channels=1, hidden_dim=8, base_channels=4)).eval()
    sampler = GlannSampler(m, gen)
    drawn = sampler.noise(50, seed=3)
    with torch.no_grad():
        expected = gen(m(torch.cat([drawn[:, :1], 0.3 * drawn[:, 1:]], 1)))
    assert torch.allclose(sampler(50, seed=3, output_type="tensor", temperature=0.3).images, expected, atol=1e-6)


def test_a_mapper_with_categories_saves_and_loads_and_old_folders_still_load(tmp_path):
    m = mapper(5, sphere=True)
    save_network(tmp_path / "mapper", m)
    loaded = load_network(tmp_path / "mapper", kind=Mapper)
    noise = torch.randn(64, 3)
    with torch.no_grad():
        assert loaded.arch.categories == 5 and torch.equal(loaded(noise), m(noise))
    plain = mapper(0)
    save_network(tmp_path / "old", plain)
    cfg_file = tmp_path / "old" / "config.json"
    spec = json.loads(cfg_file.read_text())
    del spec["arch"]["categories"]  # a folder written before the setting existed
    cfg_file.write_text(json.dumps(spec))
    with torch.no_grad():
        assert torch.equal(load_network(tmp_path / "old", kind=Mapper)(noise), plain(noise))


@pytest.mark.parametrize("override,message", [
    ("imle.mapper.categories=-1", r"imle\.mapper\.categories must be an integer >= 0"),
    ("imle.mapper.categories=1", r"imle\.mapper\.categories=1 is one category"),
])
def test_bad_categories_name_the_setting(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_train("debug=tiny", override)
    with pytest.raises(ConfigError, match=r"imle\.noise_dim must be at least 2"):
        compose_train("debug=tiny", "imle.mapper.categories=4", "imle.noise_dim=1")
    with pytest.raises(ConfigError, match=r"imle\.mapper\.categories"):
        toy_config("rejection", categories=-3)


def test_categories_train_through_the_imle_stage_and_run_toy(tmp_path):
    cfg = toy_config("rejection", rounds=3, categories=6, noise_dim=3)
    assert cfg.mapper.categories == 6
    train_imle(sample_mixture("ring", 200), cfg, tmp_path, torch.device("cpu"), progress=False)
    trained = load_network(tmp_path / "mapper", kind=Mapper)
    assert trained.arch.categories == 6
    assert not torch.equal(trained.category_bias.weight, mapper(6).category_bias.weight)
    assert run_toy("ring", n=200, rounds=2, num_samples=100, categories=4, noise_dim=3)["modes"] == 8


def test_categories_leave_fewer_samples_between_the_ring_modes():
    """The effect in small (400 points, 60 rounds, 3 seeds each, ~15 s): with rejection matching, 16 categories put
    more samples within 3 std of a mode than the connected Gaussian prior does with the same continuous noise."""
    torch.set_num_threads(1)
    hq: dict[int, list[float]] = {0: [], 16: []}
    for k in hq:
        for seed in range(3):
            cfg = toy_config("rejection", rounds=60, categories=k, noise_dim=3, rejection_quantile=0.8)
            data = sample_mixture("ring", 400, seed)
            with tempfile.TemporaryDirectory() as tmp:
                train_imle(data, cfg, Path(tmp), torch.device("cpu"), seed=seed, progress=False)
                trained = load_network(Path(tmp) / "mapper", kind=Mapper)
            noise = torch.randn(1000, 3, generator=torch.Generator().manual_seed(seed + 1))
            hq[k].append(mode_metrics(map_noise(trained, noise, torch.device("cpu")), "ring")["high_quality_pct"])
    # measured: medians 12.8% against 1.4% (seeds 23.9 / 12.8 / 2.9 against 1.4 / 2.0 / 0.5); with the category
    # ignored by the forward pass, 2.3% against 1.4%
    assert statistics.median(hq[16]) > statistics.median(hq[0]) + 5, hq


def test_categories_enter_the_imle_digest_only_when_set():
    """Stages written before the setting existed keep their digest (tests/test_capacity.py pins those values);
    categories > 0 is another stage, which neither reuses nor resumes one trained without them."""
    from test_capacity import _imle_keys

    assert _imle_keys("imle.mapper.categories=0") == _imle_keys() == ("f305a78721bcc83c", "680dddcfeb1cd00d")
    with_k = _imle_keys("imle.mapper.categories=4")
    assert with_k[0] != _imle_keys()[0] and with_k[1] != _imle_keys()[1]
    assert with_k != _imle_keys("imle.mapper.categories=8")
