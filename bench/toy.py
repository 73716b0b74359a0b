"""IMLE on the 2-D ring (8 modes, std 0.02) and grid (25 modes, std 0.05) of Gaussians, per matching rule.

    python bench/toy.py [--kinds ring grid] [--matching nearest rejection adaptive] [--seeds 0 1 2] [--rounds 250]
                        [--categories-per-mode C] [--correction S ...] [--set KEY=VALUE ...]

Trains with glann's IMLE stage through glann.toy.run_toy (its tuned settings, glann.toy.toy_config: 2-d noise,
MLP 256 x 4, m=2, one epoch per round, lr 3e-3 halved every rounds/8; rejection: rejection_quantile=0.6;
adaptive: gamma=0.04, resample every 10) on 2000 points, scored on 2500 samples as in VEEGAN/PacGAN: a mode is
covered when >= 20 samples lie within 3 std of it, a sample is high quality within 3 std of any mode, and data
recall is the % of data points with a sample within 3 std. One row per toy and rule: the median over the seeds,
each seed's figures, and the published GAN figures for the same toys. Torch runs on one thread.

``--set`` passes any run_toy/IMLE setting (``--set noise_dim=3 rejection_quantile=0.8``); ``--categories-per-mode C``
gives the mapper C x (number of modes) prior categories (``imle.mapper.categories``: 16 on the ring, 50 on the grid
for C=2), a choice that knows the mode count, which the row's label says. ``--correction`` samples each trained
mapper at these density-correction strengths (glann.toy.sample_toy: the sampler's correction, glann.resample, with the
toy's data points as the reference; 0, the default, is the plain mapper), one row per strength.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from glann import knn
from glann.toy import TOY_MATCHING, mixture_centers, run_toy

# Published figures on these toys (modes covered / high-quality %): see PUBLISHED_NOTE.
PUBLISHED: dict[str, str] = {"ring": "not found", "grid": "not found"}
PUBLISHED_NOTE = ("VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018) tables were not found in the "
                  "reference corpus searched; no figures are quoted from memory")


def parse_setting(kv: str) -> tuple[str, int | float]:
    """``noise_dim=3`` -> ("noise_dim", 3); ``rejection_quantile=0.8`` -> (..., 0.8)."""
    key, sep, value = kv.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set takes KEY=VALUE, got {kv!r}")
    try:
        return key, int(value)
    except ValueError:
        return key, float(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="+", default=["ring", "grid"], choices=["ring", "grid"])
    ap.add_argument("--matching", nargs="+", default=list(TOY_MATCHING), choices=list(TOY_MATCHING))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=250)
    ap.add_argument("--categories-per-mode", type=float, default=0.0,
                    help="mapper categories = this x the toy's mode count (0: none)")
    ap.add_argument("--correction", nargs="+", type=float, default=[0.0], metavar="S",
                    help="density-correction strengths to sample each trained mapper at (0: none)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="run_toy / IMLE settings")
    args = ap.parse_args()
    overrides = dict(parse_setting(kv) for kv in args.set)
    torch.set_num_threads(1)
    if knn.faiss is not None:
        knn.faiss.omp_set_num_threads(1)
    print("| toy | matching | modes covered | high-quality samples | data recall (3 std) | seconds | "
          "per seed (modes / HQ% / recall%) | published GANs |\n|---|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        extra = dict(overrides)
        if args.categories_per_mode > 0:
            extra["categories"] = round(args.categories_per_mode * len(mixture_centers(kind)))
        label = " ".join(f"{k}={v}" for k, v in extra.items())
        for mode in args.matching:
            per_seed_rows = [run_toy(kind, rounds=args.rounds, seed=seed, matching=mode, correction=args.correction,
                                     **extra) for seed in args.seeds]
            for i, strength in enumerate(args.correction):
                rows = [r[i] for r in per_seed_rows]
                med = {k: statistics.median(r[k] for r in rows)
                       for k in ("modes_covered", "high_quality_pct", "data_recall_pct", "seconds")}
                per_seed = "; ".join(f"{r['modes_covered']} / {r['high_quality_pct']:.1f} / "
                                     f"{r['data_recall_pct']:.1f}" for r in rows)
                name = " ".join([mode] + [label] * bool(label) + [f"correction={strength:g}"] * bool(strength))
                print(f"| {kind} | {name} | {med['modes_covered']:g} / {rows[0]['modes']} | "
                      f"{med['high_quality_pct']:.1f}% | {med['data_recall_pct']:.1f}% | {med['seconds']:.0f} | "
                      f"{per_seed} | {PUBLISHED[kind]} |", flush=True)
    print(f"\n{PUBLISHED_NOTE}.")


if __name__ == "__main__":
    main()
