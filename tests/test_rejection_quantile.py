"""imle.rejection_quantile: a rejection radius set each round from the samples' distances to the data."""
import json
import math

import pytest
import torch

from glann.config import IMLEConfig, MapperConfig, TrainConfig, check_matching, check_quantile, validate
from glann.errors import ConfigError
from glann.imle import train_imle
from glann.matching import nearest, rejection, select


def cloud(n, m, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g), torch.randn(n, d, generator=g), torch.randn(m, 5, generator=g)


@pytest.mark.parametrize("q", [0.25, 0.5, 0.9])
def test_quantile_rejects_that_share_and_never_returns_a_sample_within_the_round_radius(q):
    gen, data, noise = cloud(200, 1000)
    to_data = torch.cdist(gen.double(), data.double()).min(1).values
    radius = torch.quantile(to_data, q).item()
    r = rejection(gen, data, None, noise, quantile=q)
    assert r.stats["eps"] == pytest.approx(radius, rel=1e-5)
    assert r.stats["rejected_frac"] == pytest.approx(q, abs=0.002)
    assert (torch.cdist(gen[r.index].double(), data.double()).min(1).values >= radius - 1e-6).all()
    assert torch.equal(r.index, rejection(gen, data, radius * (1 + 1e-7), noise).index)  # = a fixed eps of that size
    assert (r.index != nearest(gen, data).index).float().mean() > 0.3  # it changed the matching


def test_the_radius_follows_the_samples_scale():
    """A fixed eps rejects nothing once samples are far and everything once they are close; the quantile rejects the
    same share either way (the shrinking schedule the toy needs)."""
    gen, data, _ = cloud(200, 1000)
    far, close = data[:1] + 10 * gen, data.repeat(5, 1) + 0.01 * gen
    for g in (far, close):
        assert rejection(g, data, None, quantile=0.5).stats["rejected_frac"] == pytest.approx(0.5, abs=0.002)
    assert rejection(close, data, None, quantile=0.5).stats["eps"] < 0.02 < rejection(far, data, None,
                                                                                      quantile=0.5).stats["eps"]


def test_eps_with_a_quantile_is_a_floor():
    gen, data, _ = cloud(200, 1000)
    q_radius = rejection(gen, data, None, quantile=0.3).stats["eps"]
    high = rejection(gen, data, None, quantile=0.8).stats["eps"]
    floored = rejection(gen, data, high, quantile=0.3)
    assert floored.stats["eps"] == pytest.approx(high) and floored.stats["rejected_frac"] > 0.75
    assert rejection(gen, data, q_radius / 10, quantile=0.3).stats["eps"] == pytest.approx(q_radius)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, math.nan, True, "0.5"])
def test_quantile_must_be_in_the_open_unit_interval(bad):
    with pytest.raises(ConfigError, match="imle.rejection_quantile"):
        check_quantile(bad)


def test_rejection_needs_eps_or_a_quantile():
    check_matching(IMLEConfig(matching="rejection", rejection_quantile=0.5))
    check_matching(IMLEConfig(matching="rejection", rejection_quantile=0.5, rejection_eps=0.1))
    with pytest.raises(ConfigError, match="imle.rejection_eps"):
        check_matching(IMLEConfig(matching="rejection"))
    with pytest.raises(ConfigError, match="imle.rejection_eps"):
        check_matching(IMLEConfig(matching="rejection", rejection_quantile=0.5, rejection_eps=-1.0))
    with pytest.raises(ConfigError, match="imle.rejection_quantile"):
        validate(TrainConfig(imle=IMLEConfig(matching="rejection", rejection_quantile=1.0)))
    check_matching(IMLEConfig(rejection_quantile=7.0))  # nearest ignores it


def test_select_passes_the_quantile():
    gen, data, noise = cloud(40, 120)
    r, _ = select("rejection", gen, data, noise, quantile=0.5)
    assert torch.equal(r.index, rejection(gen, data, None, quantile=0.5).index)


def test_imle_stage_logs_the_round_radius(tmp_path):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(128, 2, generator=g)
    cfg = IMLEConfig(noise_dim=2, mapper=MapperConfig(hidden_dim=16, project_to_sphere=False), rounds=3,
                     epochs_per_round=1, batch_size=64, grid_every=0, matching="rejection", rejection_quantile=0.5)
    train_imle(latents, cfg, tmp_path, torch.device("cpu"), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert all(r["imle/rejected_frac"] == pytest.approx(0.5, abs=0.01) and r["imle/eps"] > 0 for r in rows)
