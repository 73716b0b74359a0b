import json

import torch
import torch.nn.functional as F

from glann.config import IMLEConfig, MapperConfig
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
