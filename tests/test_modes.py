import math

import numpy as np
import pytest
from conftest import SHARED_DATA

from glann.data import stacked_mnist
from glann.modes import accuracy, mode_ids, mode_stats, train_classifier


def test_mode_stats_from_known_labels():
    uniform = mode_stats(np.arange(1000).repeat(3))
    assert uniform == {"modes/covered": 1000, "modes/kl_uniform": pytest.approx(0.0, abs=1e-12),
                       "modes/kl_channels": pytest.approx(0.0, abs=1e-12),
                       "modes/kl_dependence": pytest.approx(0.0, abs=1e-12), "modes/num_samples": 3000}
    half = mode_stats(np.arange(500))
    assert half["modes/covered"] == 500 and half["modes/kl_uniform"] == pytest.approx(math.log(2))
    one = mode_stats(np.full(10, 7))
    assert one["modes/covered"] == 1 and one["modes/kl_uniform"] == pytest.approx(math.log(1000))


def test_mode_kl_splits_into_channel_mix_and_dependence():
    same = mode_stats(np.arange(10) * 111)  # (d, d, d): every channel uniform, the channels fully dependent
    assert same["modes/kl_channels"] == pytest.approx(0.0, abs=1e-12)
    assert same["modes/kl_dependence"] == pytest.approx(math.log(100)) == same["modes/kl_uniform"]
    rng = np.random.default_rng(0)
    skew = np.array([0.3] + [0.7 / 9] * 9)  # channel 0 has too many 0s; channels independent
    ids = 100 * rng.choice(10, 200_000, p=skew) + rng.integers(0, 100, 200_000)
    st = mode_stats(ids)
    assert st["modes/kl_channels"] == pytest.approx(float(np.sum(skew * np.log(skew * 10))), abs=2e-3)
    assert st["modes/kl_dependence"] < 3e-3
    assert st["modes/kl_channels"] + st["modes/kl_dependence"] == pytest.approx(st["modes/kl_uniform"])


def test_stacked_images_carry_their_mode_ids():
    digits = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(28, 2).repeat(28, 3)  # digit d = value d
    labels = np.arange(10)
    images, ids = stacked_mnist(digits, labels, 500, seed=3)
    assert images.shape == (500, 3, 28, 28)
    # A "classifier" that reads the digit off the pixel value recovers exactly the known mode ids.
    read = mode_ids(images, lambda x: x[:, 0, 0, 0].astype(np.int64))
    assert np.array_equal(read, ids)
    assert mode_stats(ids)["modes/covered"] == len(np.unique(ids))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="MNIST not in ../shared/data")
def test_classifier_reads_real_stacked_mnist():
    import torchvision

    train = torchvision.datasets.MNIST(str(SHARED_DATA), train=True)
    test = torchvision.datasets.MNIST(str(SHARED_DATA), train=False)
    model = train_classifier(train.data.numpy()[:20000, None], train.targets.numpy()[:20000], epochs=2)
    assert accuracy(model, test.data.numpy()[:2000, None], test.targets.numpy()[:2000]) > 0.95
    images, ids = stacked_mnist(test.data.numpy()[:, None], test.targets.numpy(), 1000, seed=0)
    from glann.modes import predict_digits

    found = mode_ids(images, lambda x: predict_digits(model, x))
    assert (found == ids).mean() > 0.85  # three digits right at ~95% each
    assert abs(mode_stats(found)["modes/covered"] - mode_stats(ids)["modes/covered"]) < 60
