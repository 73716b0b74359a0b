"""``imle.mapper.mixture``: the mapper starts from a Gaussian mixture fitted to the codes; IMLE trains a residual."""
import json

import pytest
import torch
from conftest import compose_train

from glann import pipeline
from glann.artifacts import load_network, load_tensors, save_network
from glann.config import stage_settings
from glann.errors import ConfigError
from glann.imle import map_noise
from glann.mixture import fit_mixture
from glann.nets import Mapper, MapperArch
from glann.sampler import GlannSampler
from glann.toy import run_toy, toy_config

WEIGHTS = torch.tensor([0.5, 0.3, 0.2])
CENTRES = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, -4.0, 1.0]])
SCALES = torch.tensor([0.5, 0.2, 1.0])


def three_clusters(n: int = 6000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(WEIGHTS, n, replacement=True, generator=g)
    return CENTRES[labels] + SCALES[labels, None] * torch.randn(n, 4, generator=g), labels


def mixture_mapper(k: int = 3, d: int = 4, sphere: bool = False) -> Mapper:
    torch.manual_seed(0)
    return Mapper(MapperArch(noise_dim=d + 1, latent_dim=d, hidden_dim=16, project_to_sphere=sphere, mixture=k)).eval()


def test_the_fitted_mixture_finds_the_clusters_and_the_mapper_samples_it():
    data, _ = three_clusters()
    fitted = fit_mixture(data, 3, seed=0)
    order = torch.cdist(CENTRES.double(), fitted.means).argmin(1)  # fitted component of each true cluster
    assert sorted(order.tolist()) == [0, 1, 2] and fitted.converged
    assert torch.allclose(fitted.weights[order].float(), WEIGHTS, atol=0.02)
    assert torch.allclose(fitted.means[order].float(), CENTRES, atol=0.1)
    m = mixture_mapper()
    m.set_mixture(fitted.weights, fitted.means, fitted.covariances)
    noise = torch.randn(40_000, 5, generator=torch.Generator().manual_seed(1))
    comp = m.component(noise)
    freq = torch.bincount(comp, minlength=3).double() / len(noise)
    assert torch.allclose(freq[order].float(), WEIGHTS, atol=0.01)  # picked by weight
    with torch.no_grad():
        codes = m(noise)
    for true, k in enumerate(order.tolist()):  # each component draws its cluster's mean and spread
        drawn = codes[comp == k]
        assert torch.allclose(drawn.mean(0), CENTRES[true], atol=0.05)
        assert torch.allclose(drawn.std(0), SCALES[true].expand(4), rtol=0.05)


def test_before_any_round_the_mapper_is_the_mixture_and_temperature_keeps_the_weights():
    data, _ = three_clusters(2000)
    m = mixture_mapper(sphere=True)
    fitted = fit_mixture(data, 3)
    m.set_mixture(fitted.weights, fitted.means, fitted.covariances)
    noise = torch.randn(300, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(m(noise), torch.nn.functional.normalize(m.mixture_codes(noise), dim=1), atol=1e-6)
    cold = m.scale_noise(noise, 0.3)
    assert torch.equal(m.component(cold), m.component(noise)) and torch.allclose(cold[:, 1:], 0.3 * noise[:, 1:])
    with pytest.raises(ValueError, match="needs weights"):
        m.set_mixture(fitted.weights[:2], fitted.means[:2], fitted.covariances[:2])
    with pytest.raises(ValueError, match="latent_dim \\+ 1 = 5 noise coordinates"):
        Mapper(MapperArch(noise_dim=4, latent_dim=4, mixture=3))


def test_a_mixture_mapper_saves_and_loads_with_its_mixture(tmp_path):
    data, _ = three_clusters(2000)
    m = mixture_mapper()
    fitted = fit_mixture(data, 3)
    m.set_mixture(fitted.weights, fitted.means, fitted.covariances)
    save_network(tmp_path / "mapper", m)
    loaded = load_network(tmp_path / "mapper", kind=Mapper)
    noise = torch.randn(64, 5)
    with torch.no_grad():
        assert loaded.arch.mixture == 3 and torch.equal(loaded(noise), m(noise))
    spec = json.loads((tmp_path / "mapper" / "config.json").read_text())
    assert spec["arch"]["mixture"] == 3 and spec["arch"]["noise_dim"] == 5


@pytest.mark.parametrize("overrides,message", [
    (["imle.mapper.mixture=-1"], r"imle\.mapper\.mixture must be an integer >= 0"),
    (["imle.mapper.mixture=4", "imle.mapper.categories=4"], r"mixture and imle\.mapper\.categories"),
])
def test_bad_mixture_settings_name_the_setting(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose_train("debug=tiny", *overrides)
    with pytest.raises(ConfigError, match=r"imle\.mapper\.mixture=50 components for 40 codes"):
        fit_mixture(torch.randn(40, 3), 50)
    with pytest.raises(ConfigError, match=r"imle\.mapper\.mixture"):
        toy_config("nearest", mixture=-2)


def test_the_mixture_sets_the_noise_and_enters_the_digest_only_when_set():
    from test_capacity import _imle_keys

    cfg = compose_train("debug=tiny", "imle.mapper.mixture=4")
    assert cfg.imle.noise_dim == cfg.glo.latent_dim + 1
    assert "mixture" not in stage_settings("imle", compose_train("debug=tiny").imle)["mapper"]
    assert _imle_keys("imle.mapper.mixture=0") == _imle_keys() == ("f305a78721bcc83c", "680dddcfeb1cd00d")
    with_k = _imle_keys("imle.mapper.mixture=4")
    assert with_k[0] != _imle_keys()[0] and with_k != _imle_keys("imle.mapper.mixture=8")


def test_a_mixture_covers_every_toy_mode_with_few_samples_between():
    """IMLE from the plain Gaussian leaves most samples between the ring's modes (the toy section of BENCHMARKS.md);
    from a mixture of more components than modes, the samples sit on the modes from the first round."""
    torch.set_num_threads(1)
    plain = run_toy("ring", n=1000, rounds=10, matching="nearest")
    mixed = run_toy("ring", n=1000, rounds=10, matching="nearest", mixture=16)
    assert mixed["modes_covered"] == 8 and mixed["high_quality_pct"] > 90 and mixed["data_recall_pct"] > 95, mixed
    assert plain["high_quality_pct"] < 50, plain


def test_a_run_with_a_mixture_trains_a_residual_and_exports_a_sampler(tmp_path):
    cfg = compose_train("debug=tiny", "imle.mapper.mixture=3", "imle.rounds=3")
    pipeline.run(cfg, tmp_path / "run", progress=False)
    sampler = GlannSampler.from_pretrained(tmp_path / "run" / "sampler")
    assert sampler.noise_dim == cfg.glo.latent_dim + 1 and sampler.mapper.arch.mixture == 3
    codes = load_tensors(tmp_path / "run" / "glo" / "latents.safetensors")["latents"]
    fitted = fit_mixture(codes, 3, seed=cfg.imle.seed if cfg.imle.seed is not None else cfg.seed)
    assert torch.allclose(sampler.mapper.mixture_means.double(), fitted.means, atol=1e-4)  # fitted on the codes
    last = sampler.mapper.net[-1]
    assert last.weight.abs().sum() > 0  # IMLE trained the residual
    noise = sampler.noise(32, seed=0)
    with torch.no_grad():
        assert not torch.allclose(sampler.mapper(noise),
                                  torch.nn.functional.normalize(sampler.mapper.mixture_codes(noise), dim=1))
    images = sampler(8, seed=0).images
    assert images.shape[0] == 8 and images.dtype.name == "uint8"
    assert sampler(8, seed=0, temperature=0.5).images.shape == images.shape
    assert map_noise(sampler.mapper, noise, torch.device("cpu")).shape == (32, cfg.glo.latent_dim)


def test_zero_rounds_export_the_fitted_mixture_itself(tmp_path):
    with pytest.raises(ConfigError, match=r"imle\.rounds must be positive \(0 only with imle\.mapper\.mixture"):
        compose_train("debug=tiny", "imle.rounds=0")
    cfg = compose_train("debug=tiny", "imle.mapper.mixture=3", "imle.rounds=0")
    results = pipeline.run(cfg, tmp_path / "run", progress=False)
    assert 0 < results["imle/nn_dist"] <= results["imle/nn_dist_max"]  # the objective of eval=none sweeps
    record = json.loads((tmp_path / "run" / "imle" / "mixture.json").read_text())
    assert record["components"] == 3 and record["codes"] == 64
    sampler = GlannSampler.from_pretrained(tmp_path / "run" / "sampler")
    assert sampler.mapper.net[-1].weight.abs().sum() == 0  # no round: the residual is still zero
    noise = sampler.noise(16, seed=1)
    with torch.no_grad():
        assert torch.allclose(sampler.mapper(noise),
                              torch.nn.functional.normalize(sampler.mapper.mixture_codes(noise), dim=1))
