"""glo.precision / glo.channels_last / glo.compile: what each changes in a GLO step, on CPU (and on CUDA, marked)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_train
from test_glo import tiny_glo
from torch import nn

from glann import artifacts
from glann.config import DataConfig
from glann.data import load_dataset
from glann.distributed import World
from glann.errors import ConfigError
from glann.glo import GLOStage, RowAdam, glo_step, resident_images, train_glo
from glann.losses import Lap1Loss
from glann.nets import Generator, GeneratorArch
from glann.runtime import Accel


def setup_step(seed: int = 0):
    torch.manual_seed(seed)
    gen = Generator(GeneratorArch(latent_dim=8, image_size=16, channels=1, hidden_dim=16, base_channels=4))
    latents = nn.Embedding(20, 8, sparse=True)
    with torch.no_grad():
        latents.weight.copy_(F.normalize(latents.weight, dim=1))
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_z = RowAdam(latents.parameters(), lr=1e-2)
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(seed + 1))
    return gen, latents, opt_g, opt_z, x, torch.tensor([1, 4, 9, 13])


def output_dtypes(gen: nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    gen.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    return seen


def test_bf16_runs_the_generator_forward_in_bf16_and_takes_a_close_step():
    runs = {}
    for precision in ("fp32", "bf16"):
        gen, latents, opt_g, opt_z, x, idx = setup_step()
        dtypes = output_dtypes(gen)
        loss = glo_step(gen, latents, opt_g, opt_z, Lap1Loss(3), x, idx, Accel(precision).autocast(torch.device("cpu")))
        runs[precision] = (loss, dtypes[0], [p.detach().clone() for p in gen.parameters()], latents.weight.detach())
    assert runs["fp32"][1] == torch.float32 and runs["bf16"][1] == torch.bfloat16
    assert runs["bf16"][0] == pytest.approx(runs["fp32"][0], rel=0.05)
    assert runs["bf16"][0] != runs["fp32"][0]  # the forward pass really ran in another precision
    for a, b in zip(runs["fp32"][2], runs["bf16"][2]):  # parameters stay fp32; Adam's first step is ~lr * sign(g)
        assert b.dtype == torch.float32 and (a - b).abs().max() <= 2.5e-3
    assert torch.allclose(runs["bf16"][3].norm(dim=1), torch.ones(20))


def test_fp16_scales_the_loss_and_skips_a_step_whose_gradients_overflow():
    gen, latents, opt_g, opt_z, x, idx = setup_step()
    accel, cpu = Accel("fp16"), torch.device("cpu")
    scaler = accel.grad_scaler(cpu)
    assert isinstance(scaler, torch.amp.GradScaler)
    before_g, before_z = copy.deepcopy(gen.state_dict()), latents.weight.detach().clone()
    glo_step(gen, latents, opt_g, opt_z, Lap1Loss(3), x, idx, accel.autocast(cpu), scaler)
    assert any(not torch.equal(before_g[k], v) for k, v in gen.state_dict().items())
    assert not torch.equal(before_z[idx], latents.weight[idx])
    # A scale so large that the scaled fp16 gradients overflow: the step is skipped, nothing moves, the scale drops.
    huge = torch.amp.GradScaler("cpu", init_scale=2.0 ** 120)
    before_g, before_z = copy.deepcopy(gen.state_dict()), latents.weight.detach().clone()
    glo_step(gen, latents, opt_g, opt_z, Lap1Loss(3), x, idx, accel.autocast(cpu), huge)
    assert all(torch.equal(before_g[k], v) for k, v in gen.state_dict().items() if "running" not in k
               and "num_batches" not in k)
    # (the codes are only re-projected onto the sphere, which moves them by rounding at most; a step moves ~1e-2)
    assert torch.allclose(before_z, latents.weight.detach(), atol=1e-6) and huge.get_scale() < 2.0 ** 120


def test_channels_last_keeps_the_generators_output():
    gen = setup_step()[0].eval()
    z = F.normalize(torch.randn(5, 8), dim=1)
    plain = gen(z)
    nhwc = Accel(channels_last=True).memory_format(copy.deepcopy(gen))
    convs = [m.weight for m in nhwc.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert any(not w.is_contiguous() for w in convs)  # (a 1-channel kernel is both)
    assert torch.allclose(nhwc(z), plain, atol=1e-5)
    assert Accel().memory_format(gen) is gen and Accel().compiled(gen) is gen


def test_a_fp16_run_checkpoints_its_scaler_and_resumes(tmp_path):
    data = load_dataset(DataConfig(name="tiny", num_tiny=48, image_size=16))
    cfg = tiny_glo(epochs=2, precision="fp16")
    train_glo(data, cfg, compose_train("debug=tiny").loss, tmp_path, torch.device("cpu"), progress=False)
    state = artifacts.load_state(tmp_path / "state" / "last.pt")
    assert state["scaler"]["scale"] > 0 and state["epoch"] == 2
    stage = GLOStage(data, cfg, compose_train("debug=tiny").loss, tmp_path, torch.device("cpu"))
    state["scaler"]["scale"] = 1234.0
    stage.load_state_dict(state)
    assert stage.scaler is not None and stage.scaler.get_scale() == 1234.0  # the resumed run's scaler
    out = train_glo(data, tiny_glo(epochs=3, precision="fp16"), compose_train("debug=tiny").loss, tmp_path,
                    torch.device("cpu"), progress=False)
    assert artifacts.load_state(tmp_path / "state" / "last.pt")["epoch"] == 3 and out["glo/loss"] > 0
    assert torch.isfinite(artifacts.load_tensors(tmp_path / "latents.safetensors")["latents"]).all()


def test_precision_settings_are_checked():
    with pytest.raises(ConfigError, match="glo.precision"):
        compose_train("debug=tiny", "glo.precision=fp8")
    data = load_dataset(DataConfig(name="tiny", num_tiny=8, image_size=16))
    with pytest.raises(ConfigError, match="glo.precision=bf16 with several ranks"):
        GLOStage(data, tiny_glo(precision="fp16"), compose_train("debug=tiny").loss, "unused", torch.device("cpu"),
                 world=World(rank=0, world_size=2))
    assert resident_images(data, torch.device("cpu")) is None  # host memory on CPU: nothing to copy


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_run_with_resident_data_mixed_precision_and_channels_last(tmp_path, precision):
    data = load_dataset(DataConfig(name="tiny", num_tiny=64, image_size=16))
    cuda = torch.device("cuda")
    images = resident_images(data, cuda)
    assert images is not None and images.is_cuda and images.dtype == torch.uint8
    cfg = tiny_glo(epochs=2, precision=precision, channels_last=True)
    stage = GLOStage(data, cfg, compose_train("debug=tiny").loss, tmp_path, cuda)
    idx = torch.arange(8)
    assert torch.equal(stage.batch(idx).cpu(), data.batch(idx))  # the resident copy decodes to the same images
    out = train_glo(data, cfg, compose_train("debug=tiny").loss, tmp_path, cuda, progress=False)
    assert artifacts.load_state(tmp_path / "state" / "last.pt")["epoch"] == 2 and out["glo/loss"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_generator_trains_on_cuda(tmp_path):
    data = load_dataset(DataConfig(name="tiny", num_tiny=64, image_size=16))
    out = train_glo(data, tiny_glo(epochs=2, compile=True), compose_train("debug=tiny").loss, tmp_path,
                    torch.device("cuda"), progress=False)
    assert artifacts.load_state(tmp_path / "state" / "last.pt")["epoch"] == 2 and out["glo/loss"] > 0
