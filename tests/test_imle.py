import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_train
from safetensors.torch import load_file

from glann import pipeline
from glann.config import IMLEConfig, MapperConfig
from glann.errors import ArtifactError, ConfigError
from glann.imle import map_noise, matching_round, train_imle
from glann.nets import Mapper, MapperArch


def clustered_latents(n=256, dim=8, modes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(modes, dim, generator=g), dim=1)
    z = centers[torch.arange(n) % modes] + 0.05 * torch.randn(n, dim, generator=g)
    return F.normalize(z, dim=1)


def test_matching_round_pairs_each_latent_with_its_nearest_generated_latent():
    torch.manual_seed(0)
    mapper = Mapper(MapperArch(noise_dim=4, latent_dim=8, hidden_dim=16))
    latents = clustered_latents(64)
    rng = torch.Generator().manual_seed(3)
    matched, dist = matching_round(mapper, latents, 256, 4, rng, torch.device("cpu"), "cpu")
    # Redraw the same noise: the matched noise must be the arg-min over all generated latents.
    noise = torch.randn(256, 4, generator=torch.Generator().manual_seed(3))
    generated = map_noise(mapper, noise, torch.device("cpu"))
    best = torch.cdist(latents, generated).min(1).values
    assert torch.allclose(dist, best, atol=1e-4)
    assert torch.allclose((map_noise(mapper, matched, torch.device("cpu")) - latents).norm(dim=1), best, atol=1e-4)


def test_imle_reduces_nearest_neighbour_distance(tmp_path):
    latents = clustered_latents(256)
    cfg = IMLEConfig(noise_dim=4, mapper=MapperConfig(hidden_dim=32), rounds=6, epochs_per_round=3,
                     batch_size=64, lr=3e-3)
    train_imle(latents, cfg, tmp_path, torch.device("cpu"), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, 7))
    assert rows[-1]["imle/nn_dist"] < 0.5 * rows[0]["imle/nn_dist"]
    assert (tmp_path / "mapper" / "model.safetensors").is_file()


@pytest.mark.parametrize("mode, extra", [("nearest", {}), ("rejection", {"rejection_quantile": 0.5}),
                                         ("adaptive", {}), ("capacity", {})])
def test_without_faiss_every_mode_matches_with_torch_and_says_so(tmp_path, monkeypatch, caplog, mode, extra):
    """faiss is an extra (cpu or gpu): without it, matching falls back to torch's exact search, named in the log,
    and finds the same neighbours."""
    from glann import knn

    latents = clustered_latents(128)
    cfg = IMLEConfig(noise_dim=4, mapper=MapperConfig(hidden_dim=16), rounds=2, epochs_per_round=1, batch_size=64,
                     matching=mode, **extra)
    train_imle(latents, cfg, tmp_path / "faiss", torch.device("cpu"), progress=False)
    monkeypatch.setattr(knn, "faiss", None)
    with caplog.at_level("INFO", logger="glann.imle"):
        train_imle(latents, cfg, tmp_path / "torch", torch.device("cpu"), progress=False)
    assert f"imle: {mode} matching, exact search with torch-cpu" in caplog.text
    assert "pip install 'glann[cpu]'" in caplog.text
    rows = {b: [json.loads(x) for x in (tmp_path / b / "stats.jsonl").read_text().splitlines()]
            for b in ("faiss", "torch")}
    for a, b in zip(rows["faiss"], rows["torch"]):
        assert a["imle/nn_dist"] == pytest.approx(b["imle/nn_dist"], rel=1e-4)


def test_lr_step_decay_by_round_survives_a_resume(tmp_path):
    latents = clustered_latents(128)
    base = dict(noise_dim=4, mapper=MapperConfig(hidden_dim=16), epochs_per_round=1, batch_size=64, lr=4e-3,
                lr_decay_every=2, lr_decay=0.5)
    train_imle(latents, IMLEConfig(rounds=3, **base), tmp_path, torch.device("cpu"), progress=False)
    # Resume from the round-3 checkpoint with more rounds: the lr follows the round number, not the restart.
    train_imle(latents, IMLEConfig(rounds=5, **base), tmp_path, torch.device("cpu"), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["imle/lr"] for r in rows] == [4e-3, 4e-3, 2e-3, 2e-3, 1e-3]


def test_constant_lr_by_default(tmp_path):
    cfg = IMLEConfig(noise_dim=4, mapper=MapperConfig(hidden_dim=16), rounds=2, epochs_per_round=1, batch_size=64)
    train_imle(clustered_latents(64), cfg, tmp_path, torch.device("cpu"), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [r["imle/lr"] for r in rows] == [1e-3, 1e-3]


@pytest.mark.parametrize("mode,extra,stat", [
    ("rejection", dict(rejection_eps=0.05), "imle/rejected_frac"),
    ("adaptive", dict(adaptive_gamma=0.1, adaptive_resample_every=2), "imle/rematched_frac"),
    ("capacity", dict(capacity=1, capacity_k=4), "imle/overflow_frac"),
])
def test_matching_modes_log_their_statistics_and_resume_exactly(tmp_path, mode, extra, stat):
    latents = clustered_latents(128)
    base = dict(noise_dim=4, mapper=MapperConfig(hidden_dim=16), epochs_per_round=1, batch_size=64, matching=mode,
                **extra)
    cpu = torch.device("cpu")
    train_imle(latents, IMLEConfig(rounds=2, **base), tmp_path / "resumed", cpu, progress=False)
    train_imle(latents, IMLEConfig(rounds=4, **base), tmp_path / "resumed", cpu, progress=False)
    train_imle(latents, IMLEConfig(rounds=4, **base), tmp_path / "straight", cpu, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "stats.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4] and all(stat in r for r in rows)
    if mode == "adaptive":  # round 1 matches every point; later rounds only those the rule picks
        assert rows[0][stat] == 1.0 and min(r[stat] for r in rows[1:]) < 1.0
    a = load_file(str(tmp_path / "resumed" / "mapper" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "mapper" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the rule's state (radii, matched noise) survived the resume


def test_a_checkpoint_from_another_matching_mode_is_refused(tmp_path):
    spec = next(s for s in pipeline.STAGES if s.name == "imle")
    nearest = compose_train("debug=tiny")
    rejection = compose_train("debug=tiny", "imle.matching=rejection", "imle.rejection_eps=0.05")
    latents, cpu = clustered_latents(64), torch.device("cpu")
    train_imle(latents, replace(nearest.imle, rounds=1), tmp_path, cpu, progress=False,
               resume_key=spec.resume_key(nearest, "glo-digest"))
    with pytest.raises(ArtifactError, match="written with other settings"):
        train_imle(latents, rejection.imle, tmp_path, cpu, progress=False,
                   resume_key=spec.resume_key(rejection, "glo-digest"))


def test_rejection_that_rejects_everything_names_the_setting(tmp_path):
    cfg = IMLEConfig(noise_dim=4, mapper=MapperConfig(hidden_dim=16), rounds=1, epochs_per_round=1, batch_size=64,
                     matching="rejection", rejection_eps=10.0)
    with pytest.raises(ConfigError, match="lower imle.rejection_eps"):
        train_imle(clustered_latents(64), cfg, tmp_path, torch.device("cpu"), progress=False)
