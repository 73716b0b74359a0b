"""Real-data checks on MNIST from ../shared/data (skipped when absent): a short CPU run must reconstruct
its training digits and sample digit-like images close to held-out test digits."""
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, compose_train

from glann import pipeline
from glann.config import DataConfig
from glann.data import load_dataset
from glann.glo import load_glo
from glann.knn import nearest_neighbors
from glann.sampler import GlannSampler

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="MNIST not in ../shared/data")]


def _flat(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).reshape(len(images), -1).float() / 255.0


def test_short_mnist_run_reconstructs_and_samples_digits(tmp_path):
    cfg = compose_train("data=mnist", f"data.root={SHARED_DATA}", "data.limit=2000", "glo.epochs=5",
                        "imle.rounds=4", "imle.epochs_per_round=3", "sampler.grid_size=64")
    pipeline.run(cfg, tmp_path, progress=False)
    train = load_dataset(cfg.data, cfg.seed)
    gen, z = load_glo(tmp_path / "glo")
    with torch.no_grad():
        recon = gen(z[:1000])
    x = train.batch(np.arange(1000))
    recon_err = (recon - x).abs().mean().item()
    mean_err = (x.mean(0, keepdim=True) - x).abs().mean().item()
    assert recon_err < 0.35 * mean_err, (recon_err, mean_err)

    samples = GlannSampler.from_pretrained(tmp_path / "sampler")(1000, seed=0).images.transpose(0, 3, 1, 2)
    test = load_dataset(DataConfig(name="mnist", root=str(SHARED_DATA), split="test", limit=1000), seed=0)
    train_flat = _flat(train.images)
    _, d_sample = nearest_neighbors(train_flat, _flat(samples), device="cpu")
    _, d_test = nearest_neighbors(train_flat, _flat(test.images), device="cpu")
    noise = np.random.default_rng(0).integers(0, 256, size=(200, 1, 28, 28), dtype=np.uint8)
    _, d_noise = nearest_neighbors(train_flat, _flat(noise), device="cpu")
    # Samples sit about as close to the training digits as real held-out digits do, far from noise...
    assert d_sample.median() < 1.3 * d_test.median(), (d_sample.median(), d_test.median())
    assert d_sample.median() < 0.5 * d_noise.median()
    # ...without being copies of them.
    assert d_sample.median() > 0.5 * d_test.median()
    # And they vary: no collapse onto a few images.
    assert _flat(samples).std(0).mean() > 0.5 * _flat(test.images).std(0).mean()
