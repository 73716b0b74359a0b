import pytest
import torch

from glann import knn


@pytest.mark.parametrize("n_db,n_q,d", [(500, 300, 8), (2000, 1000, 64)])
def test_faiss_matches_brute_force(n_db, n_q, d):
    assert knn.faiss is not None, "faiss must be installed"
    g = torch.Generator().manual_seed(0)
    db, q = torch.randn(n_db, d, generator=g), torch.randn(n_q, d, generator=g)
    idx, dist = knn.nearest_neighbors(db, q, device="cpu")
    brute = torch.cdist(q.double(), db.double())
    best, arg = brute.min(1)
    assert torch.allclose(dist.double(), best, atol=1e-3)
    # Ties aside, the same neighbour: the found neighbour is as close as the brute-force one.
    found = brute.gather(1, idx[:, None])[:, 0]
    assert torch.allclose(found, best, atol=1e-4)
    assert (idx == arg).float().mean() > 0.99


def test_torch_fallback_matches_faiss(monkeypatch):
    g = torch.Generator().manual_seed(1)
    db, q = torch.randn(3000, 16, generator=g), torch.randn(700, 16, generator=g)
    idx_f, dist_f = knn.nearest_neighbors(db, q, device="cpu")
    monkeypatch.setattr(knn, "faiss", None)
    idx_t, dist_t = knn.nearest_neighbors(db, q, device="cpu", chunk=100)
    assert torch.equal(idx_f, idx_t)
    assert torch.allclose(dist_f, dist_t, atol=1e-4)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="equal width"):
        knn.nearest_neighbors(torch.zeros(4, 3), torch.zeros(2, 5))


def test_chunked_threaded_cpu_search_is_exact():
    """Past two chunks the CPU search is split over threads; every query still gets its exact neighbour."""
    g = torch.Generator().manual_seed(2)
    db, q = torch.randn(3000, 64, generator=g), torch.randn(9000, 64, generator=g)
    before = knn.faiss.omp_get_max_threads()
    index = knn.faiss.IndexFlatL2(64)
    index.add(db.numpy())
    dist2, idx = knn.search_cpu(index, q.numpy(), threads=2)
    assert knn.faiss.omp_get_max_threads() == before  # the workers' one-thread setting stays theirs
    brute = torch.cdist(q.double(), db.double())
    best, arg = brute.min(1)
    idx = torch.from_numpy(idx[:, 0])
    assert torch.allclose(brute.gather(1, idx[:, None])[:, 0], best, atol=1e-4)
    assert (idx == arg).float().mean() > 0.99
    assert torch.allclose(torch.from_numpy(dist2[:, 0]).double(), best.pow(2), atol=1e-3)
    # the same neighbours as one unsplit call
    _, idx_one = index.search(q.numpy(), 1)
    assert (torch.from_numpy(idx_one[:, 0]) == idx).float().mean() > 0.999
