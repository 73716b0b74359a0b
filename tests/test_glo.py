import json

import torch
import torch.nn.functional as F
from torch import nn

from glann.config import DataConfig, GeneratorConfig, GLOConfig, LossConfig
from glann.data import load_dataset
from glann.glo import RowAdam, glo_step, init_latents, load_glo, train_glo
from glann.losses import Lap1Loss
from glann.nets import Generator, GeneratorArch


def tiny_glo(**kw) -> GLOConfig:
    base = dict(latent_dim=8, epochs=15, batch_size=16, generator=GeneratorConfig(hidden_dim=32, base_channels=8),
                grid_every=5)
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
    assert [r["epoch"] for r in rows] == list(range(1, 16))
    assert rows[-1]["glo/loss"] < 0.8 * rows[0]["glo/loss"]
    gen, z = load_glo(tmp_path)
    assert z.shape == (64, 8) and torch.allclose(z.norm(dim=1), torch.ones(64), atol=1e-5)
    assert not gen.training
    assert (tmp_path / "state" / "last.pt").is_file()
    grids = ["recon_0005.png", "recon_0010.png", "recon_0015.png"]
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == grids
    # The exported generator (eval mode, BatchNorm statistics recalibrated on all latents) reconstructs as
    # well as the training-mode network does.
    x = data.batch(torch.arange(64))
    with torch.no_grad():
        err_eval = (gen(z) - x).abs().mean()
        err_train = (gen.train()(z) - x).abs().mean()
    assert abs(err_eval - err_train) < 0.02 * err_train


def test_row_adam_is_adam_per_code():
    """A code updated at every step follows torch's Adam exactly; an untouched code does not move; a code's
    first update has size ~lr per coordinate whatever the table's global step count (SparseAdam's is ~10x)."""
    torch.manual_seed(0)
    table = nn.Embedding(5, 3, sparse=True)
    dense = table.weight.detach()[0].clone().requires_grad_(True)
    ref = torch.optim.Adam([dense], lr=0.1, betas=(0.5, 0.999))
    opt = RowAdam(table.parameters(), lr=0.1, betas=(0.5, 0.999))
    frozen = table.weight.detach()[4].clone()
    for step in range(40):
        target = torch.randn(3)
        rows = torch.tensor([0] + ([3] if step == 39 else []))
        if step == 39:
            before = table.weight.detach()[3].clone()
        opt.zero_grad()
        (table(rows) - target).pow(2).sum().backward()
        opt.step()
        ref.zero_grad()
        (dense - target).pow(2).sum().backward()
        ref.step()
        assert torch.allclose(table.weight[0], dense, atol=1e-5)
    assert torch.equal(table.weight.detach()[4], frozen)
    # Row 3 saw one update, at global step 40: Adam's first step moves every coordinate by exactly lr.
    assert opt.state[table.weight]["row_steps"][3].item() == 1
    assert torch.allclose((table.weight.detach()[3] - before).abs(), torch.full((3,), 0.1), atol=1e-4)
