"""glo.latent_noise: the generator decodes noisy, re-normalised codes in training (glann.glo.code_noise)."""
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_train
from torch import nn

from glann import pipeline
from glann.glo import code_noise, glo_step
from glann.losses import Lap1Loss
from glann.nets import Generator, GeneratorArch


def test_code_noise_is_seeded_by_run_epoch_and_step():
    a = code_noise(4096, 16, 0.05, (0, 3, 7))
    assert torch.equal(a, code_noise(4096, 16, 0.05, (0, 3, 7)))
    for other in ((1, 3, 7), (0, 4, 7), (0, 3, 8)):
        assert not torch.allclose(a, code_noise(4096, 16, 0.05, other))
    assert a.std().item() == pytest.approx(0.05, rel=0.02) and abs(a.mean().item()) < 2e-3
    # the first rows do not depend on how many rows were drawn: a short last batch takes a prefix
    assert torch.equal(code_noise(10, 16, 0.05, (0, 3, 7)), a[:10])


def test_the_generator_decodes_the_perturbed_codes_and_the_stored_codes_stay_clean():
    torch.manual_seed(0)
    gen = Generator(GeneratorArch(latent_dim=8, image_size=16, channels=1, hidden_dim=16, base_channels=4))
    latents = nn.Embedding(20, 8, sparse=True)
    with torch.no_grad():
        latents.weight.copy_(F.normalize(latents.weight, dim=1))
    seen = []
    gen.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    idx = torch.tensor([2, 5, 11])
    before = latents.weight.detach()[idx].clone()
    noise = code_noise(3, 8, 0.3, (0, 0, 0))
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_z = torch.optim.SparseAdam(latents.parameters(), lr=1e-2)
    glo_step(gen, latents, opt_g, opt_z, Lap1Loss(2), torch.rand(3, 1, 16, 16), idx, noise=noise)
    assert torch.allclose(seen[0], F.normalize(before + noise, dim=1), atol=1e-6)
    assert torch.allclose(seen[0].norm(dim=1), torch.ones(3), atol=1e-5)
    # the step moved the clean codes by one optimiser step (~lr), not to the perturbed codes (~0.3 * sqrt(8) away)
    after = latents.weight.detach()[idx].clone()
    assert (after - before).norm(dim=1).max() < 0.1
    assert (after - seen[0]).norm(dim=1).min() > 0.3
    seen.clear()
    glo_step(gen, latents, opt_g, opt_z, Lap1Loss(2), torch.rand(3, 1, 16, 16), idx)
    assert torch.equal(seen[0], after)  # no noise: the stored codes themselves


def _glo_run(tmp_path, *overrides):
    cfg = compose_train("debug=tiny", "stages=[glo]", *overrides)
    pipeline.run(cfg, tmp_path, progress=False)
    latents = torch.load(tmp_path / "glo" / "state" / "last.pt", weights_only=True)["latents"]
    return latents, [json.loads(r)["glo/loss"] for r in (tmp_path / "glo" / "stats.jsonl").read_text().splitlines()]


def test_latent_noise_changes_training_and_a_resumed_run_draws_the_same_noise(tmp_path):
    clean, _ = _glo_run(tmp_path / "clean", "glo.epochs=4")
    straight, losses = _glo_run(tmp_path / "straight", "glo.epochs=4", "glo.latent_noise=0.1")
    assert not torch.allclose(straight, clean, atol=1e-3)
    # 2 epochs, then the same run continued to 4 from its checkpoint: the noise of epochs 3-4 is what the
    # uninterrupted run drew, so the result is identical
    _glo_run(tmp_path / "resumed", "glo.epochs=2", "glo.latent_noise=0.1")
    resumed, resumed_losses = _glo_run(tmp_path / "resumed", "glo.epochs=4", "glo.latent_noise=0.1")
    assert torch.equal(resumed, straight)
    assert resumed_losses == losses


def test_a_checkpoint_trained_without_noise_is_not_resumed_with_it(tmp_path):
    from glann.errors import ArtifactError

    _glo_run(tmp_path, "glo.epochs=2")
    with pytest.raises(ArtifactError, match="written with other settings"):
        _glo_run(tmp_path, "glo.epochs=4", "glo.latent_noise=0.1")


def test_stages_written_before_latent_noise_existed_keep_their_digest():
    spec = next(s for s in pipeline.STAGES if s.name == "glo")

    def keys(*overrides):
        cfg = compose_train("debug=tiny", *overrides)
        return spec.digest(cfg, "data-digest", False), spec.resume_key(cfg, "data-digest")

    # the values glann b770df4 (before glo.latent_noise) computed for these configs
    assert keys() == ("2019b58639958ff3", "756e9541cf77730c")
    assert keys("experiment=mnist_cpu") == ("bf9e001a91d008c2", "8687750d01eb63e6")
    assert keys("glo.latent_noise=0.05") != keys()
