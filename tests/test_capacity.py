"""imle.matching=capacity: nearest matching where one generated sample serves at most ``capacity`` data points."""
import pytest
import torch

from glann.config import IMLEConfig, TrainConfig, validate
from glann.errors import ConfigError
from glann.matching import capacity, nearest, search_k, select


def cloud(n, m, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g), torch.randn(n, d, generator=g), torch.randn(m, 5, generator=g)


def greedy_reference(gen, data, cap):
    """The rule written plainly: points in ascending order of their nearest distance, each takes the nearest sample
    with room among *all* samples (float64 distances)."""
    d = torch.cdist(data.double(), gen.double())
    order = torch.argsort(d.min(1).values, stable=True)
    load = torch.zeros(len(gen), dtype=torch.int64)
    out = torch.empty(len(data), dtype=torch.int64)
    for p in order.tolist():
        free = load < cap
        j = int(torch.where(free, d[p], torch.inf).argmin())
        out[p] = j
        load[j] += 1
    return out


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_search_k_equals_brute_force(backend):
    gen, data, _ = cloud(200, 500)
    idx, dist = search_k(gen, data, 7, backend)
    ref = torch.cdist(data.double(), gen.double()).topk(7, dim=1, largest=False)
    assert torch.equal(idx, ref.indices)
    assert torch.allclose(dist, ref.values.float(), atol=1e-4)
    assert search_k(gen[:5], data, 7, backend)[0].shape == (200, 5)  # k capped at the database size


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("cap", [1, 2])
def test_capacity_equals_the_plain_greedy_rule_when_k_covers_every_sample(backend, cap):
    gen, data, noise = cloud(150, 200)
    r = capacity(gen, data, cap, k=len(gen), noise=noise, backend=backend)
    assert torch.equal(r.index, greedy_reference(gen, data, cap))
    assert torch.bincount(r.index, minlength=len(gen)).max() <= cap
    assert r.stats["overflow_frac"] == 0
    assert torch.equal(r.noise, noise[r.index])
    exact = (gen[r.index] - data).norm(dim=1)
    assert torch.allclose(r.distance, exact, atol=1e-4)
    if cap == 1:
        assert r.stats["distinct_frac"] == 1.0


def test_capacity_at_least_the_data_size_is_nearest():
    gen, data, noise = cloud(100, 300)
    r, n = capacity(gen, data, cap=100, k=4, noise=noise), nearest(gen, data, noise)
    assert torch.equal(r.index, n.index) and r.stats["mean_rank"] == 0.0


def test_a_tight_cluster_gets_one_sample_per_point_instead_of_sharing_a_few():
    g = torch.Generator().manual_seed(1)
    tight = 0.01 * torch.randn(50, 2, generator=g)  # 50 points in a tiny cluster at the origin...
    wide = torch.randn(50, 2, generator=g) * 3 + 10  # ...and 50 spread out far away
    data = torch.cat([tight, wide])
    gen = torch.cat([0.5 * torch.randn(10, 2, generator=g), torch.randn(190, 2, generator=g) * 3 + 10])
    near = nearest(gen, data)
    cap = capacity(gen, data, cap=1, k=64)
    assert len(set(near.index[:50].tolist())) <= 10  # nearest: the cluster shares its few samples
    assert len(set(cap.index[:50].tolist())) == 50  # capacity: each point pulls its own sample
    assert cap.stats["mean_rank"] > 0


def test_points_whose_candidates_are_all_full_share_their_nearest_and_are_counted():
    data = torch.zeros(5, 2) + torch.arange(5.0)[:, None] * 1e-3
    gen = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    r = capacity(gen, data, cap=1, k=2)
    # the first two points (closest first) take samples 0 and 1; the other three find both candidates full
    assert r.index.tolist() == [0, 1, 0, 0, 0]
    assert r.stats["overflow_frac"] == pytest.approx(3 / 5)
    assert r.stats["distinct_frac"] == pytest.approx(2 / 5)


def test_select_dispatches_capacity():
    gen, data, noise = cloud(50, 120)
    r, state = select("capacity", gen, data, noise, cap=1, k=8)
    assert state == {} and torch.bincount(r.index).max() <= 1 + round(r.stats["overflow_frac"] * 50)


@pytest.mark.parametrize("key, value", [("capacity", 0), ("capacity", 1.5), ("capacity_k", True), ("capacity_k", -3)])
def test_bad_capacity_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"imle\.{key} must be an integer >= 1"):
        validate(TrainConfig(imle=IMLEConfig(matching="capacity", **{key: value})))
    validate(TrainConfig(imle=IMLEConfig(**{key: value})))  # nearest ignores them


def _imle_keys(*overrides):
    from conftest import compose_train

    from glann import pipeline

    spec = next(s for s in pipeline.STAGES if s.name == "imle")
    cfg = compose_train("debug=tiny", *overrides)
    return spec.digest(cfg, "glo-digest", False), spec.resume_key(cfg, "glo-digest")


def test_stages_written_before_capacity_and_imle_seed_existed_keep_their_digest():
    # the values glann 07a8047 (before imle.capacity*, imle.seed) computed for these configs
    assert _imle_keys() == ("f305a78721bcc83c", "680dddcfeb1cd00d")
    assert _imle_keys("imle.matching=rejection", "imle.rejection_eps=0.05") == ("3213256b6429711a",
                                                                                "4bac67868cb447aa")
    assert _imle_keys("imle.capacity=3") == _imle_keys()  # nearest does not use it
    assert _imle_keys("imle.matching=capacity") != _imle_keys("imle.matching=capacity", "imle.capacity=3")
    assert _imle_keys("imle.seed=1") != _imle_keys()


def test_imle_seed_trains_another_mapper_on_the_same_glo_stage(tmp_path, caplog):
    import shutil

    from conftest import compose_train
    from safetensors.torch import load_file

    from glann import pipeline

    pipeline.run(compose_train("debug=tiny"), tmp_path / "a", progress=False)
    mappers = {}
    for name, seed in (("same", 0), ("other", 5)):
        shutil.copytree(tmp_path / "a" / "glo", tmp_path / name / "glo")
        with caplog.at_level("INFO"):
            pipeline.run(compose_train("debug=tiny", f"imle.seed={seed}"), tmp_path / name, progress=False)
        assert "glo: reusing finished stage" in caplog.text
        mappers[name] = load_file(str(tmp_path / name / "imle" / "mapper" / "model.safetensors"))
    ref = load_file(str(tmp_path / "a" / "imle" / "mapper" / "model.safetensors"))
    assert all(torch.equal(ref[k], mappers["same"][k]) for k in ref)  # imle.seed=0 is the run's seed 0
    assert not all(torch.equal(ref[k], mappers["other"][k]) for k in ref)
