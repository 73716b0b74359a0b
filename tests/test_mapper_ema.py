"""``imle.ema``: the sampler gets a per-step moving average of the mapper's weights; training is unchanged."""
from dataclasses import replace

import pytest
import torch
from conftest import compose_train
from safetensors.torch import load_file
from test_imle import clustered_latents

from glann import pipeline
from glann.artifacts import load_state
from glann.config import IMLEConfig, MapperConfig, stage_settings
from glann.errors import ArtifactError
from glann.imle import IMLEStage, train_imle

CPU = torch.device("cpu")


def small(**kw) -> IMLEConfig:
    return IMLEConfig(noise_dim=4, mapper=MapperConfig(hidden_dim=16), rounds=2, epochs_per_round=1, batch_size=64,
                      lr=3e-3, **kw)


def test_the_export_is_the_moving_average_of_every_step_and_training_is_unchanged(tmp_path, monkeypatch):
    decay, seen = 0.8, []
    step = IMLEStage.step

    def recording_step(self, unit, i):
        out = step(self, unit, i)
        seen.append({k: v.detach().clone() for k, v in self.net.state_dict().items()})
        return out

    monkeypatch.setattr(IMLEStage, "step", recording_step)
    latents = clustered_latents(128)
    train_imle(latents, small(ema=decay), tmp_path / "ema", CPU, progress=False)
    assert len(seen) == 4  # 2 rounds x 1 epoch x 2 batches
    expected = dict(seen[0])  # the first update copies the weights, every later one moves by (1 - decay)
    for weights in seen[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    exported = load_file(str(tmp_path / "ema" / "mapper" / "model.safetensors"))
    assert exported.keys() == expected.keys()
    assert all(torch.allclose(exported[k], expected[k], atol=1e-6) for k in exported)
    assert not all(torch.allclose(exported[k], seen[-1][k]) for k in exported)  # not the last weights

    # The average does not feed back: the trained mapper is the one a run without it exports.
    train_imle(latents, small(), tmp_path / "plain", CPU, progress=False)
    plain = load_file(str(tmp_path / "plain" / "mapper" / "model.safetensors"))
    trained = load_state(tmp_path / "ema" / "state" / "last.pt")["mapper"]
    assert all(torch.equal(plain[k], trained[k]) for k in plain)


def test_the_average_survives_a_resume_exactly(tmp_path):
    latents = clustered_latents(128)
    train_imle(latents, small(ema=0.9), tmp_path / "resumed", CPU, progress=False)
    train_imle(latents, replace(small(ema=0.9), rounds=4), tmp_path / "resumed", CPU, progress=False)
    train_imle(latents, replace(small(ema=0.9), rounds=4), tmp_path / "straight", CPU, progress=False)
    a = load_file(str(tmp_path / "resumed" / "mapper" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "mapper" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_off_by_default_without_changing_old_settings_and_a_checkpoint_under_another_decay_is_refused(tmp_path):
    assert "ema" not in stage_settings("imle", IMLEConfig())  # resume keys of runs before the option stay valid
    assert stage_settings("imle", IMLEConfig(ema=0.999))["ema"] == 0.999
    spec = next(s for s in pipeline.STAGES if s.name == "imle")
    plain, ema = compose_train("debug=tiny"), compose_train("debug=tiny", "imle.ema=0.99")
    assert plain.imle.ema == 0.0
    latents = clustered_latents(64)
    train_imle(latents, replace(plain.imle, rounds=1), tmp_path, CPU, progress=False,
               resume_key=spec.resume_key(plain, "glo-digest"))
    with pytest.raises(ArtifactError, match="written with other settings"):
        train_imle(latents, ema.imle, tmp_path, CPU, progress=False, resume_key=spec.resume_key(ema, "glo-digest"))
