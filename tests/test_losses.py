import pytest
import torch

from glann.config import LossConfig
from glann.errors import ConfigError
from glann.losses import Lap1Loss, VGGLoss, blur_downsample, build_loss, laplacian_pyramid, load_vgg16_features


def test_lap1_is_zero_on_identical_images():
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(Lap1Loss(4)(x, x), torch.zeros(3))


def test_lap1_constant_offset_lives_only_in_the_lowpass_level():
    # A constant image has no band-pass content: only the low-pass residual differs, by exactly c.
    x = torch.full((2, 1, 32, 32), 0.25)
    y = torch.full((2, 1, 32, 32), 0.75)
    assert torch.allclose(Lap1Loss(4)(x, y), torch.full((2,), 0.5), atol=1e-6)


def test_lap1_with_one_level_is_pixel_l1():
    x, y = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    assert torch.allclose(Lap1Loss(1)(x, y), (x - y).abs().flatten(1).mean(1), atol=1e-6)


@pytest.mark.parametrize("size", [28, 14, 7, 32])
def test_blur_downsample_equals_the_5x5_binomial_conv_then_stride(size):
    x = torch.rand(3, 2, size, size)
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    kernel = torch.outer(k1, k1).expand(2, 1, 5, 5)
    reference = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"), kernel,
                                           groups=2)[..., ::2, ::2]
    out = blur_downsample(x)
    assert out.shape == reference.shape == (3, 2, (size + 1) // 2, (size + 1) // 2)
    assert torch.allclose(out, reference, atol=1e-6)


def test_pyramid_levels_and_reconstruction():
    x = torch.rand(2, 1, 32, 32)
    pyr = laplacian_pyramid(x, 4)
    assert [p.shape[-1] for p in pyr] == [32, 16, 8, 4]
    # Collapsing the pyramid (upsample + add, coarse to fine) gives back the image exactly.
    rec = pyr[-1]
    for band in reversed(pyr[:-1]):
        rec = torch.nn.functional.interpolate(rec, size=band.shape[-2:], mode="bilinear", align_corners=False) + band
    assert torch.allclose(rec, x, atol=1e-5)


def test_lap1_equals_the_difference_of_two_pyramids():
    x, y = torch.rand(3, 1, 28, 28), torch.rand(3, 1, 28, 28)
    direct = sum((a - b).abs().flatten(1).mean(1) for a, b in zip(laplacian_pyramid(x, 4), laplacian_pyramid(y, 4)))
    assert torch.allclose(Lap1Loss(4)(x, y), direct, atol=1e-5)


def test_lap1_backpropagates():
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    Lap1Loss(3)(x, torch.rand(2, 1, 28, 28)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_vgg_loss_without_weights_file_is_a_clear_error(tmp_path):
    cfg = LossConfig(name="vgg", vgg_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="loss.vgg_weights"):
        build_loss(cfg)


def test_vgg_loss_offline_without_cache_says_how_to_provide_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache; this machine has no internet
    import torch.hub

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(ConfigError, match="loss.vgg_weights=/path/to/vgg16.pth"):
        build_loss(LossConfig(name="vgg"))


def test_vgg_loss_from_local_weights_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features
    path = tmp_path / "vgg16_features.pth"
    torch.save(features.state_dict(), path)
    loaded = load_vgg16_features(str(path))
    assert torch.equal(loaded[0].weight, features[0].weight)
    loss = VGGLoss(loaded, blocks=(1, 2, 3))
    x, y = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    out = loss(x, y)
    assert out.shape == (2,) and torch.all(out > (x - y).abs().flatten(1).mean(1))
    assert torch.allclose(loss(x, x), torch.zeros(2))
