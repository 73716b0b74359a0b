import numpy as np
import pytest
from PIL import Image

from glann.config import DataConfig
from glann.data import load_dataset
from glann.errors import DataError


def test_embedded_mnist_subset_loads_offline():
    data = load_dataset(DataConfig(name="embedded"))
    assert data.images.shape == (10000, 1, 28, 28) and data.images.dtype == np.uint8
    assert 20 < data.images.mean() < 50  # MNIST's mean intensity is about 33


def test_limit_and_resize_and_channels():
    data = load_dataset(DataConfig(name="embedded", limit=100, image_size=32, channels=3), seed=1)
    assert data.images.shape == (100, 3, 32, 32)
    again = load_dataset(DataConfig(name="embedded", limit=100, image_size=32, channels=3), seed=1)
    assert data.fingerprint == again.fingerprint


def _write(path, size, mode="RGB"):
    arr = (np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).convert(mode).save(path)


def test_folder_of_mixed_sizes_with_a_corrupt_file(tmp_path, caplog):
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "a.png", (40, 30))
    _write(tmp_path / "sub" / "b.jpg", (64, 80))
    _write(tmp_path / "c.png", (20, 20), mode="L")
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    cfg = DataConfig(name="folder", root=str(tmp_path), image_size=16, channels=3, cache_dir=str(tmp_path / "cache"))
    with caplog.at_level("WARNING"):
        data = load_dataset(cfg)
    assert data.images.shape == (3, 3, 16, 16)
    assert "skipped 1 unreadable image(s) of 4" in caplog.text
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(DataConfig(name="folder", root=str(tmp_path), image_size=16, on_corrupt="error",
                                cache_dir=str(tmp_path / "cache2")))


def test_empty_folder_and_missing_root_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(DataConfig(name="folder", root=str(tmp_path)))
    with pytest.raises(DataError, match="data.root=.*does not exist.*download"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path / "nowhere")))


def test_truncated_dataset_file_is_a_clear_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 10)
    (raw / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 4)
    with pytest.raises(DataError, match="cannot read MNIST"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
