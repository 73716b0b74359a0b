"""IMLE on the 2-D ring (8 modes) and grid (25 modes) per matching rule: nearest, rejection, adaptive.

    python bench/toy_matching.py --matching nearest rejection adaptive [--eps 0.06] [--gamma 0.04]
                                 [--resample-every 10] [--rounds 30] [--seeds 0 1 2]

A compact copy of glann's IMLE loop (glann/imle.py: same mapper, Adam settings, per-round RNG and loss as
glann.toy.run_toy: 8-d noise, MLP 128 x 3, m=4, 5 epochs per round, batch 128, lr 1e-3) with the matching
step taken from glann.matching. Scored as in VEEGAN/PacGAN (glann.toy.mode_metrics): modes with >= 20 of 2500
samples within 3 std, % of samples within 3 std of a mode, % of data points with a sample within 3 std.
Prints one row per toy and rule: the median over the seeds (and each seed's figures).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from glann import knn, matching
from glann.imle import map_noise
from glann.nets import Mapper, MapperArch
from glann.runtime import adam
from glann.toy import mode_metrics, sample_mixture


def train_toy(kind: str, mode: str, seed: int, rounds: int = 30, n: int = 2000, m: int = 4, eps: float = 0.06,
              gamma: float = 0.04, resample_every: int = 10, num_samples: int = 2500, epochs: int = 5,
              log: bool = False) -> dict:
    data = sample_mixture(kind, n, seed)
    noise_dim = 8
    torch.manual_seed(seed + 1)
    mapper = Mapper(MapperArch(noise_dim=noise_dim, latent_dim=2, hidden_dim=128, num_layers=3,
                               project_to_sphere=False))
    opt = adam(mapper.parameters(), lr=1e-3, betas=(0.5, 0.999))
    state: dict = {}
    dev = torch.device("cpu")
    last: dict = {}
    for rnd in range(rounds):
        rng = torch.Generator().manual_seed(seed * 100003 + rnd)
        noise = torch.randn(m * n, noise_dim, generator=rng)
        generated = map_noise(mapper, noise, dev)
        current = map_noise(mapper, state["noise"], dev) if state else None
        try:
            res, state = matching.select(mode, generated, data, noise, state=state, rnd=rnd, current=current,
                                         eps=eps, gamma=gamma, resample_every=resample_every)
        except matching.AllRejected:
            last = {**last, "all_rejected_round": rnd + 1}
            break  # every sample already lies within eps of the data: nothing left to pull
        last = res.stats
        if log:
            print(kind, mode, seed, rnd, {k: round(v, 4) for k, v in res.stats.items()})
        matched = res.noise
        mapper.train()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=rng)
            for s in range(0, n, 128):
                b = perm[s:s + 128]
                loss = (mapper(matched[b]) - data[b]).pow(2).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    eval_noise = torch.randn(num_samples, noise_dim, generator=torch.Generator().manual_seed(seed + 1))
    return {**mode_metrics(map_noise(mapper, eval_noise, dev), kind, data=data), "last": last}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matching", nargs="+", default=list(matching.MODES), choices=matching.MODES)
    ap.add_argument("--kinds", nargs="+", default=["ring", "grid"], choices=["ring", "grid"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--m", type=int, default=4, help="samples per data point per round")
    ap.add_argument("--eps", type=float, default=None, help="rejection radius (default: 3 std of the toy)")
    ap.add_argument("--gamma", type=float, default=0.04)
    ap.add_argument("--resample-every", type=int, default=10)
    ap.add_argument("--log", action="store_true", help="print each round's matching stats")
    ap.add_argument("--threads", type=int, default=1, help="torch and faiss threads (the nets are tiny)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if knn.faiss is not None:
        knn.faiss.omp_set_num_threads(args.threads)
    from glann.toy import TOY_STD

    print("| toy | matching | settings | modes covered | high-quality samples | data recall (3 std) | seconds | "
          "per seed (modes / HQ% / recall%) |\n|---|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        eps = args.eps if args.eps is not None else 3 * TOY_STD[kind]
        for mode in args.matching:
            rows, secs = [], []
            for seed in args.seeds:
                t0 = time.perf_counter()
                rows.append(train_toy(kind, mode, seed, args.rounds, m=args.m, eps=eps, gamma=args.gamma,
                                      resample_every=args.resample_every, log=args.log))
                secs.append(time.perf_counter() - t0)
            med = {k: statistics.median(r[k] for r in rows) for k in ("modes_covered", "high_quality_pct",
                                                                        "data_recall_pct")}
            settings = {"nearest": f"m={args.m}", "rejection": f"m={args.m}, eps={eps:g}",
                        "adaptive": f"m={args.m}, gamma={args.gamma:g}, every={args.resample_every}"}[mode]
            per_seed = "; ".join(f"{r['modes_covered']} / {r['high_quality_pct']:.1f} / {r['data_recall_pct']:.1f}"
                                 + (f" (all rejected at round {r['last']['all_rejected_round']})"
                                    if "all_rejected_round" in r["last"] else "") for r in rows)
            print(f"| {kind} | {mode} | {settings}, {args.rounds} rounds | "
                  f"{med['modes_covered']:g} / {rows[0]['modes']} "
                  f"| {med['high_quality_pct']:.1f}% | {med['data_recall_pct']:.1f}% | {statistics.median(secs):.1f} "
                  f"| {per_seed} |", flush=True)


if __name__ == "__main__":
    main()
