import tempfile
from pathlib import Path

import pytest
import torch

from glann.artifacts import load_network
from glann.errors import ConfigError
from glann.imle import map_noise, train_imle
from glann.nets import Mapper, MapperArch
from glann.toy import TOY_MATCHING, mixture_centers, mode_metrics, run_toy, sample_mixture, sample_toy, toy_config


def test_mode_metrics_on_known_sets():
    data = sample_mixture("ring", 4000)
    m = mode_metrics(data, "ring")
    # In 2-D, a Gaussian puts 1 - exp(-4.5) = 98.9% of its mass within 3 standard deviations.
    assert m["modes"] == 8 and m["modes_covered"] == 8 and 98.0 < m["high_quality_pct"] < 99.7
    collapsed = mixture_centers("ring")[:1].repeat(500, 1)
    m = mode_metrics(collapsed, "ring")
    assert m["modes_covered"] == 1 and m["high_quality_pct"] == 100.0
    m = mode_metrics(torch.zeros(100, 2), "grid")  # all at the centre mode of the 5x5 grid
    assert m == {"modes": 25, "modes_covered": 1, "high_quality_pct": 100.0}
    assert mode_metrics(sample_mixture("grid", 5000), "grid")["modes_covered"] == 25


def test_data_recall_counts_data_points_with_a_close_sample():
    data = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])  # two ring modes
    samples = torch.tensor([[2.01, 0.0]] * 30)       # all samples on the first one
    m = mode_metrics(samples, "ring", data=data)
    assert m["data_recall_pct"] == 50.0 and m["modes_covered"] == 1 and m["high_quality_pct"] == 100.0


def test_toy_config_defaults_overrides_and_unknown_settings():
    cfg = toy_config("rejection", rounds=80)
    assert cfg.matching == "rejection" and cfg.rejection_quantile == TOY_MATCHING["rejection"]["rejection_quantile"]
    assert cfg.noise_dim == 2 and cfg.samples_per_latent == 2 and cfg.epochs_per_round == 1
    assert cfg.mapper.project_to_sphere is False and cfg.lr_decay_every == 10
    cfg = toy_config("adaptive", hidden_dim=64, samples_per_latent=4, adaptive_gamma=0.2)
    assert (cfg.mapper.hidden_dim, cfg.samples_per_latent, cfg.adaptive_gamma) == (64, 4, 0.2)
    with pytest.raises(ConfigError, match="unknown IMLE setting.*'epochs'"):
        toy_config("nearest", epochs=3)
    with pytest.raises(ConfigError, match="imle.rejection_quantile"):
        toy_config("rejection", rejection_quantile=1.5)
    with pytest.raises(ConfigError, match="imle.matching"):
        run_toy("ring", matching="furthest")


def test_rejection_pulls_samples_out_of_the_gaps_that_nearest_leaves():
    """The diagnosis in small (400 points, 40 rounds, ~4 s): nearest matching leaves a cloud between the ring's modes
    (samples nearest to no data point are never pulled); the quantile rejection pulls them towards the modes."""
    torch.set_num_threads(1)
    centers, eval_noise = mixture_centers("ring"), torch.randn(1000, 2, generator=torch.Generator().manual_seed(1))
    to_centre = {}
    for mode in ("nearest", "rejection"):
        cfg = toy_config(mode, rounds=40)
        with tempfile.TemporaryDirectory() as tmp:
            train_imle(sample_mixture("ring", 400), cfg, Path(tmp), torch.device("cpu"), progress=False)
            mapper = load_network(Path(tmp) / "mapper", kind=Mapper)
        to_centre[mode] = torch.cdist(map_noise(mapper, eval_noise, torch.device("cpu")), centers).min(1).values
    near, rej = to_centre["nearest"], to_centre["rejection"]
    assert rej.median() < 0.6 * near.median()  # measured: 0.38 vs 0.83
    assert (rej < 0.3).float().mean() > 3 * (near < 0.3).float().mean()  # measured: 40% vs 7.5%


def test_sample_toy_correction_moves_samples_to_where_the_data_is():
    """Data on one half of the mapper's support only (twice the model density there, none on the other half): the
    density correction must draw nearly every sample from that half, and strength 0 must be the plain mapper."""
    torch.manual_seed(0)
    mapper = Mapper(MapperArch(hidden_dim=32, num_layers=2, project_to_sphere=False, noise_dim=2, latent_dim=2)).eval()
    cpu = torch.device("cpu")
    cloud = map_noise(mapper, torch.randn(4000, 2, generator=torch.Generator().manual_seed(5)), cpu)
    cut = cloud[:, 0].median()
    data = cloud[cloud[:, 0] > cut][:1000]
    plain = sample_toy(mapper, data, num_samples=1000, seed=3)
    expected = map_noise(mapper, torch.randn(1000, 2, generator=torch.Generator().manual_seed(4)), cpu)
    assert torch.equal(plain, expected)
    corrected = sample_toy(mapper, data, num_samples=1000, seed=3, correction=1.0)
    right_plain, right_corrected = (plain[:, 0] > cut).float().mean(), (corrected[:, 0] > cut).float().mean()
    assert 0.4 < right_plain < 0.6 and right_corrected > 0.9  # measured: 0.50 and 0.98 (1 - 0.5^6 at most)
    two = sample_toy(mapper, data, num_samples=1000, seed=3, correction=1.0, candidates=2)
    right_two = (two[:, 0] > cut).float().mean()
    assert right_plain + 0.1 < right_two < right_corrected  # two codes to choose from: at most 1 - 0.5^2 = 0.75
    with pytest.raises(ConfigError, match="correction"):
        sample_toy(mapper, data, correction=-1.0)
    with pytest.raises(ConfigError, match="candidates"):
        sample_toy(mapper, data, correction=1.0, candidates=1)


def test_run_toy_samples_one_trained_mapper_at_each_strength():
    torch.set_num_threads(1)
    rows = run_toy("ring", n=200, rounds=2, num_samples=300, correction=[0.0, 1.0])
    single = run_toy("ring", n=200, rounds=2, num_samples=300)
    assert [r["correction"] for r in rows] == [0.0, 1.0]
    assert {k: v for k, v in rows[0].items() if k != "seconds"} == {k: v for k, v in single.items() if k != "seconds"}
    assert rows[1]["high_quality_pct"] != rows[0]["high_quality_pct"] or rows[1]["data_recall_pct"] != \
        rows[0]["data_recall_pct"]
