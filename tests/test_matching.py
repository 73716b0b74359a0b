import io
import math

import pytest
import torch

from glann.config import IMLEConfig, check_eps, check_gamma, check_interval
from glann.config import check_matching as validate_config
from glann.errors import ArtifactError, ConfigError
from glann.matching import AllRejected, adaptive, check_state, nearest, rejection, search, select


def cloud(n, m, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g), torch.randn(n, d, generator=g), torch.randn(m, 5, generator=g)


def brute_nn(db, q):
    d = torch.cdist(q.double(), db.double())
    dist, idx = d.min(1)
    return idx, dist.float()


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_nearest_equals_brute_force(backend):
    gen, data, noise = cloud(300, 700)
    r = nearest(gen, data, noise, backend=backend)
    idx, dist = brute_nn(gen, data)
    assert torch.equal(r.index, idx)
    assert torch.allclose(r.distance, dist, atol=1e-4)
    assert torch.equal(r.noise, noise[idx])
    assert r.stats["nn_dist"] == pytest.approx(dist.mean().item(), rel=1e-4)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_rejection_equals_brute_force_and_never_returns_a_sample_within_eps(backend):
    gen, data, noise = cloud(200, 1000)
    eps = 0.5
    to_data = torch.cdist(gen.double(), data.double()).min(1).values
    assert ((to_data - eps).abs() > 1e-4).all()  # no sample on the boundary: float32 and float64 agree
    kept = torch.nonzero(to_data >= eps).squeeze(1)
    assert 0.2 < 1 - len(kept) / len(gen) < 0.9  # eps rejects a real share, not none or all
    sub, dist = brute_nn(gen[kept], data)
    r = rejection(gen, data, eps, noise, backend=backend)
    assert torch.equal(r.index, kept[sub])
    assert torch.allclose(r.distance, dist, atol=1e-4)
    chosen_to_data = torch.cdist(gen[r.index].double(), data.double()).min(1).values
    assert (chosen_to_data >= eps).all()
    # without rejection, many data points would have taken a sample within eps
    assert (nearest(gen, data).distance < eps).float().mean() > 0.5
    assert r.stats["rejected_frac"] == pytest.approx(1 - len(kept) / len(gen))
    assert r.stats["unmatched"] == 0 and r.stats["samples_kept"] == len(kept)
    assert torch.equal(r.noise, noise[r.index])


def test_rejection_that_rejects_everything_names_the_setting():
    data = torch.zeros(4, 2)
    gen = torch.full((10, 2), 0.01)
    with pytest.raises(AllRejected, match=r"imle\.rejection_eps=0\.5 rejects all 10 .*lower imle\.rejection_eps"):
        rejection(gen, data, 0.5)
    assert issubclass(AllRejected, ConfigError)
    assert rejection(gen, data, 0.001).stats["rejected_frac"] == 0.0


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, None, "0.1"])
def test_eps_must_be_positive_and_finite(bad):
    with pytest.raises(ConfigError, match="imle.rejection_eps"):
        check_eps(bad)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_gamma_must_be_in_the_open_unit_interval(bad):
    with pytest.raises(ConfigError, match="imle.adaptive_gamma"):
        check_gamma(bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_interval_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="imle.adaptive_resample_every"):
        check_interval(bad)


def test_validate_config_checks_only_the_chosen_mode():
    validate_config(IMLEConfig())  # nearest needs nothing; rejection_eps defaults to None
    with pytest.raises(ConfigError, match="imle.rejection_eps"):
        validate_config(IMLEConfig(matching="rejection"))
    validate_config(IMLEConfig(matching="rejection", rejection_eps=0.1))
    with pytest.raises(ConfigError, match="imle.adaptive_gamma"):
        validate_config(IMLEConfig(matching="adaptive", adaptive_gamma=1.0))
    with pytest.raises(ConfigError, match="imle.matching"):
        validate_config(IMLEConfig(matching="closest"))


def test_adaptive_first_round_matches_everyone_and_sets_tau():
    gen, data, noise = cloud(50, 200)
    r, state = adaptive(gen, data, noise, {}, rnd=0, gamma=0.1, resample_every=5)
    idx, dist = brute_nn(gen, data)
    assert torch.equal(r.index, idx) and torch.equal(state["noise"], noise[idx])
    assert torch.allclose(state["tau"], 0.9 * dist, atol=1e-4)
    assert (state["last_match"] == 0).all() and r.stats["rematched_frac"] == 1.0


def test_adaptive_rematches_only_when_its_rule_says_so():
    gen, data, noise = cloud(8, 100, d=2)
    tau = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    last = torch.tensor([9, 9, 9, 9, 9, 9, 2, 3])  # rounds since last match at rnd=10: 1 ... 8, 7
    held = torch.arange(8 * 5, dtype=torch.float32).reshape(8, 5)
    state = {"tau": tau, "last_match": last, "noise": held}
    # current samples at distance 0.5 (< tau for points 0-3) or 0.8 (> tau for 4-7) from their data points
    offset = torch.tensor([[0.5, 0.0]] * 4 + [[0.0, 0.8]] * 4)
    current = data + offset
    r, new = adaptive(gen, data, noise, state, rnd=10, gamma=0.2, resample_every=8, current=current)
    due = torch.tensor([True] * 4 + [False, False, True, False])  # 0-3 by threshold, 6 forced (age 8)
    assert torch.equal(r.index >= 0, due)
    idx, dist = brute_nn(gen, data)
    assert torch.equal(r.index[due], idx[due])
    assert torch.equal(new["noise"][due], noise[idx[due]])
    assert torch.equal(new["noise"][~due], held[~due]) and torch.equal(r.noise, new["noise"])
    assert torch.allclose(new["tau"][:4], torch.full((4,), 0.8 * 0.5))  # (1 - gamma) * d_i
    assert new["tau"][6].item() == pytest.approx(0.8 * 0.8)  # forced: from its current distance
    assert torch.equal(new["tau"][~due], tau[~due])
    assert torch.equal(new["last_match"], torch.where(due, torch.tensor(10), last))
    assert torch.allclose(r.distance[~due], offset.norm(dim=1)[~due])
    assert r.stats["rematched_frac"] == pytest.approx(5 / 8)
    assert r.stats["threshold_frac"] == pytest.approx(4 / 8) and r.stats["forced_frac"] == pytest.approx(1 / 8)
    assert r.stats["tau_min"] == pytest.approx(0.4)
    # the input state is untouched
    assert torch.equal(state["tau"], tau) and torch.equal(state["noise"], torch.arange(40.0).reshape(8, 5))
    # a point whose sample stays outside tau is never re-matched before the interval
    far = data + 10.0
    r2, _ = adaptive(gen, data, noise, {**state, "last_match": torch.full((8,), 9)}, rnd=10, gamma=0.2,
                     resample_every=8, current=far)
    assert (r2.index == -1).all() and r2.stats["rematched_frac"] == 0.0


def test_adaptive_state_round_trips_through_torch_save_weights_only():
    gen, data, noise = cloud(30, 90)
    _, state = adaptive(gen, data, noise, {}, rnd=0, gamma=0.04, resample_every=3)
    buf = io.BytesIO()
    torch.save({"matching": state, "round": 1}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["matching"]
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    current = data + 0.01
    a, sa = adaptive(gen, data, noise, state, rnd=1, gamma=0.04, resample_every=3, current=current)
    b, sb = adaptive(gen, data, noise, loaded, rnd=1, gamma=0.04, resample_every=3, current=current)
    assert torch.equal(a.index, b.index) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_adaptive_state_of_another_shape_is_refused():
    gen, data, noise = cloud(30, 90)
    _, state = adaptive(gen, data, noise, {}, rnd=0, gamma=0.04, resample_every=3)
    with pytest.raises(ArtifactError, match="31 data points"):
        check_state(state, 31, 5)
    with pytest.raises(ArtifactError, match="lacks"):
        check_state({"tau": state["tau"]}, 30, 5)


def test_select_dispatches():
    gen, data, noise = cloud(40, 120)
    r, st = select("nearest", gen, data, noise)
    assert st == {} and torch.equal(r.index, nearest(gen, data).index)
    r, st = select("rejection", gen, data, noise, eps=0.3)
    assert torch.equal(r.index, rejection(gen, data, 0.3).index)
    r, st = select("adaptive", gen, data, noise, rnd=0)
    assert set(st) == {"tau", "last_match", "noise"}
    with pytest.raises(ConfigError, match="imle.matching"):
        select("nope", gen, data, noise)


def test_search_backends_agree():
    gen, data, _ = cloud(500, 2000, d=16)
    a = search(gen, data, "faiss")
    b = search(gen, data, "torch")
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1], atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_match_the_cpu_result():
    gen, data, noise = cloud(500, 2000, d=16)
    cpu = rejection(gen, data, 1.5, noise)
    gpu = rejection(gen.cuda(), data.cuda(), 1.5, noise.cuda())
    assert torch.equal(cpu.index, gpu.index) and torch.allclose(cpu.distance, gpu.distance, atol=1e-4)


@pytest.mark.parametrize("mode", ["rejection", "adaptive", "capacity"])
def test_every_rule_gets_its_tensors_on_the_match_device(monkeypatch, mode):
    """select_round hands each rule the samples and data latents on imle.knn_device's device, as it does for
    nearest, so a GPU run never searches with CPU faiss. Checked here with the "meta" device standing in for CUDA."""
    from glann import imle
    from glann.nets import Mapper, MapperArch

    seen = {}

    def fake_select(mode, generated, data, noise, **kw):
        seen.update(generated=generated.device, data=data.device, noise=noise.device)
        return None, {}

    monkeypatch.setattr(imle, "select", fake_select)
    monkeypatch.setattr(imle, "match_device", lambda knn_device, device: torch.device("meta"))
    mapper = Mapper(MapperArch(noise_dim=4, latent_dim=8, hidden_dim=16))
    cfg = IMLEConfig(matching=mode, noise_dim=4, rejection_eps=0.1)
    imle.select_round(mapper, torch.randn(10, 8), cfg, 0, torch.Generator().manual_seed(0), torch.device("cpu"), {})
    assert seen == {"generated": torch.device("meta"), "data": torch.device("meta"), "noise": torch.device("cpu")}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["rejection", "adaptive", "capacity"])
def test_a_cuda_round_selects_what_a_cpu_round_selects(mode):
    from glann.imle import select_round
    from glann.nets import Mapper, MapperArch

    torch.manual_seed(0)
    mapper = Mapper(MapperArch(noise_dim=4, latent_dim=8, hidden_dim=16))
    latents = torch.nn.functional.normalize(torch.randn(300, 8), dim=1)
    cfg = IMLEConfig(matching=mode, noise_dim=4, rejection_quantile=0.5)
    cpu, _ = select_round(mapper, latents, cfg, 0, torch.Generator().manual_seed(1), torch.device("cpu"), {})
    gpu, _ = select_round(mapper.cuda(), latents, cfg, 0, torch.Generator().manual_seed(1), torch.device("cuda"), {})
    assert (cpu.index == gpu.index).float().mean() > 0.99  # float ties may break differently on the GPU
    assert torch.allclose(cpu.distance, gpu.distance, atol=1e-4)


def test_train_config_validate_checks_the_matching_settings():
    from glann.config import TrainConfig, validate

    with pytest.raises(ConfigError, match="imle.rejection_eps"):
        validate(TrainConfig(imle=IMLEConfig(matching="rejection", rejection_eps=-0.1)))
    with pytest.raises(ConfigError, match="imle.adaptive_resample_every"):
        validate(TrainConfig(imle=IMLEConfig(matching="adaptive", adaptive_resample_every=0)))
    assert validate(TrainConfig(imle=IMLEConfig(matching="adaptive"))).imle.matching == "adaptive"
