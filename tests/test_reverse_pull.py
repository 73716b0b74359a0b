"""``imle.reverse_weight``: each round also pulls N fresh samples towards their own nearest data latent."""
from dataclasses import replace

import pytest
import torch
from conftest import compose_train
from test_imle import clustered_latents

from glann import pipeline
from glann.artifacts import load_network
from glann.config import IMLEConfig, MapperConfig, stage_settings
from glann.errors import ArtifactError, ConfigError
from glann.imle import IMLEStage, map_noise, train_imle
from glann.nets import Mapper
from glann.toy import toy_config

CPU = torch.device("cpu")


def small(**kw) -> IMLEConfig:
    return IMLEConfig(noise_dim=4, mapper=MapperConfig(hidden_dim=16), rounds=2, epochs_per_round=1, batch_size=64,
                      lr=3e-3, **kw)


def test_each_fresh_sample_gets_its_exact_nearest_data_latent_and_the_loss_adds_their_pull(tmp_path):
    latents = clustered_latents(128)
    stage = IMLEStage(latents, small(reverse_weight=0.5), tmp_path, CPU)
    stage.begin(0)
    generated = map_noise(stage.net, stage.reverse_noise, CPU)
    assert len(generated) == len(latents)
    brute = torch.cdist(generated, latents).argmin(1)
    assert torch.equal(stage.reverse_target, latents[brute])
    assert torch.allclose(stage.reverse_dist, (generated - latents[brute]).norm(dim=1), atol=1e-5)

    # The first step's loss is the forward (IMLE) term plus the weight times the reverse term, on the same rows.
    idx = stage.perms[0][:64]
    with torch.no_grad():
        forward = (stage.net(stage.matched[idx]) - latents[idx]).pow(2).sum(1).mean()
        reverse = (stage.net(stage.reverse_noise[idx]) - stage.reverse_target[idx]).pow(2).sum(1).mean()
    loss, rows = stage.step(0, 0)
    assert rows == 64 and loss == pytest.approx((forward + 0.5 * reverse).item(), rel=1e-5)
    assert "imle/reverse_dist" in stage.end(0)


def test_the_matching_is_the_one_a_run_without_it_draws(tmp_path):
    latents = clustered_latents(128)
    plain, pulled = IMLEStage(latents, small(), tmp_path / "a", CPU), IMLEStage(latents, small(reverse_weight=1.0),
                                                                               tmp_path / "b", CPU)
    plain.begin(0)
    pulled.begin(0)
    assert torch.equal(plain.matched, pulled.matched)
    assert all(torch.equal(a, b) for a, b in zip(plain.perms, pulled.perms))
    assert not hasattr(plain, "reverse_noise")


def test_the_reverse_pull_puts_the_samples_nearer_the_data(tmp_path):
    latents = clustered_latents(256, modes=3)
    fresh = torch.randn(2048, 4, generator=torch.Generator().manual_seed(5))
    gaps = {}
    for weight in (0.0, 1.0):
        cfg = replace(small(reverse_weight=weight), rounds=6, epochs_per_round=2)
        train_imle(latents, cfg, tmp_path / str(weight), CPU, progress=False)
        samples = map_noise(load_network(tmp_path / str(weight) / "mapper", kind=Mapper), fresh, CPU)
        gaps[weight] = torch.cdist(samples, latents).min(1).values.mean().item()
    assert gaps[1.0] < 0.8 * gaps[0.0], gaps


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_a_bad_weight_is_one_line_naming_the_setting(value):
    with pytest.raises(ConfigError, match="imle.reverse_weight must be a finite number >= 0"):
        compose_train("debug=tiny", f"imle.reverse_weight={value}")
    with pytest.raises(ConfigError, match="imle.reverse_weight must be a finite number >= 0"):
        toy_config("nearest", reverse_weight=value)
    with pytest.raises(ConfigError, match="imle.reverse_weight"):
        toy_config("nearest", reverse_weight=True)


def test_off_by_default_without_changing_old_settings_and_a_checkpoint_under_another_weight_is_refused(tmp_path):
    assert "reverse_weight" not in stage_settings("imle", IMLEConfig())  # stages trained before it keep their key
    assert stage_settings("imle", IMLEConfig(reverse_weight=0.3))["reverse_weight"] == 0.3
    spec = next(s for s in pipeline.STAGES if s.name == "imle")
    plain, pulled = compose_train("debug=tiny"), compose_train("debug=tiny", "imle.reverse_weight=0.3")
    assert plain.imle.reverse_weight == 0.0 and pulled.imle.reverse_weight == 0.3
    latents = clustered_latents(64)
    train_imle(latents, replace(plain.imle, rounds=1), tmp_path, CPU, progress=False,
               resume_key=spec.resume_key(plain, "glo-digest"))
    with pytest.raises(ArtifactError, match="written with other settings"):
        train_imle(latents, pulled.imle, tmp_path, CPU, progress=False,
                   resume_key=spec.resume_key(pulled, "glo-digest"))
