import pytest
import torch
from torch import nn

from glann.nets import Generator, GeneratorArch, Mapper, MapperArch, build, upsampling_plan


def test_paper_mnist_generator_layout():
    gen = Generator(GeneratorArch(latent_dim=64, image_size=28, channels=1))
    linears = [m for m in gen.modules() if isinstance(m, nn.Linear)]
    deconvs = [m for m in gen.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 1024), (1024, 128 * 7 * 7)]
    assert [(m.in_channels, m.out_channels, m.stride) for m in deconvs] == [(128, 64, (2, 2)), (64, 1, (2, 2))]
    assert any(isinstance(m, nn.BatchNorm2d) for m in gen.modules())
    assert isinstance(list(gen.modules())[-1], nn.Sigmoid)


@pytest.mark.parametrize("size,channels", [(16, 1), (28, 1), (32, 3), (64, 3)])
def test_generator_shapes_and_range(size, channels):
    gen = Generator(GeneratorArch(latent_dim=8, image_size=size, channels=channels, hidden_dim=16,
                                  base_channels=4)).eval()
    out = gen(torch.randn(3, 8))
    assert out.shape == (3, channels, size, size)
    assert out.min() >= 0 and out.max() <= 1


def test_upsampling_plan_rejects_odd_sizes():
    assert upsampling_plan(28) == (7, 2) and upsampling_plan(64) == (4, 4)
    with pytest.raises(ValueError):
        upsampling_plan(30)


def test_mapper_projects_to_sphere():
    m = Mapper(MapperArch(noise_dim=4, latent_dim=6, hidden_dim=8))
    out = m(torch.randn(10, 4))
    assert out.shape == (10, 6)
    assert torch.allclose(out.norm(dim=1), torch.ones(10), atol=1e-5)


def test_build_refuses_unknown_classes():
    with pytest.raises(ValueError, match="unknown network class"):
        build({"class": "os.system", "arch": {}})
