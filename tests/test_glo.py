import json

import torch
import torch.nn.functional as F
from torch import nn

from glann.config import DataConfig, GeneratorConfig, GLOConfig, LossConfig
from glann.data import load_dataset
from glann.glo import glo_step, init_latents, load_glo, train_glo
from glann.losses import Lap1Loss
from glann.nets import Generator, GeneratorArch


def tiny_glo(**kw) -> GLOConfig:
    base = dict(latent_dim=8, epochs=6, batch_size=16, generator=GeneratorConfig(hidden_dim=32, base_channels=8),
                grid_every=3)
    base.update(kw)
    return GLOConfig(**base)


def test_only_the_batch_codes_move_and_stay_on_the_sphere():
    torch.manual_seed(0)
    gen = Generator(GeneratorArch(latent_dim=8, image_size=16, channels=1, hidden_dim=16, base_channels=4))
    latents = nn.Embedding(20, 8, sparse=True)
    with torch.no_grad():
        latents.weight.copy_(F.normalize(latents.weight, dim=1))
    before = latents.weight.detach().clone()
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_z = torch.optim.SparseAdam(latents.parameters(), lr=1e-2)
    idx = torch.tensor([2, 5, 11])
    glo_step(gen, latents, opt_g, opt_z, Lap1Loss(2), torch.rand(3, 1, 16, 16), idx)
    after = latents.weight.detach()
    others = torch.ones(20, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(after[others], before[others])
    assert not torch.allclose(after[idx], before[idx])
    assert torch.allclose(after[idx].norm(dim=1), torch.ones(3), atol=1e-5)


def test_pca_init_is_unit_norm_and_orders_by_variance():
    data = load_dataset(DataConfig(name="tiny", num_tiny=64, image_size=16))
    z = init_latents(data, 8, "pca", seed=0)
    assert z.shape == (64, 8)
    assert torch.allclose(z.norm(dim=1), torch.ones(64), atol=1e-5)
    var = z.var(0)
    assert var[0] > var[-1]


def test_glo_loss_falls_and_artifacts_are_written(tmp_path):
    data = load_dataset(DataConfig(name="tiny", num_tiny=64, image_size=16))
    train_glo(data, tiny_glo(), LossConfig(lap_levels=3), tmp_path, torch.device("cpu"), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert rows[-1]["glo/loss"] < 0.8 * rows[0]["glo/loss"]
    gen, z = load_glo(tmp_path)
    assert z.shape == (64, 8) and torch.allclose(z.norm(dim=1), torch.ones(64), atol=1e-5)
    assert not gen.training
    assert (tmp_path / "state" / "last.pt").is_file()
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == ["recon_0003.png", "recon_0006.png"]
    # The exported generator reconstructs its training images better than a mean image does.
    with torch.no_grad():
        recon = gen(z)
    x = data.batch(torch.arange(64))
    assert (recon - x).abs().mean() < (x.mean(0, keepdim=True) - x).abs().mean()
