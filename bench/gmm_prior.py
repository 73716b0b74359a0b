"""A Gaussian mixture on the GLO codes as stage 2 (``imle.mapper.mixture``), against the IMLE sampler: one GLO stage,
one table, rows over mixture sizes, EM seeds and sampling temperatures.

    GLANN_DATA_ROOT=../shared/data python bench/gmm_prior.py --glo outputs/mnist_cpu/<time>/glo \
        --sampler outputs/mnist_cpu/<time>/sampler --components 200 400 --seeds 0 1 2 --temperatures 0.75 1 \
        --weights ../shared/models/inception-2015-12-05-fid-weights-no-classifier.pth \
        --stats ../shared/models/mnist_test_inception_stats.npz

For each K in ``--components`` and EM seed in ``--seeds``, ``glann.mixture.fit_mixture`` (what ``glann-train`` runs)
fits the stage's training codes, and the mixture is installed in a mixture mapper (``nets.Mapper`` with
``mixture=K``, no residual: ``imle.rounds=0``) inside a ``GlannSampler`` with the stage's generator and its codes as
the density correction's reference: the exported sampler of ``glann-train ... imle.mapper.mixture=K imle.rounds=0``.
Each temperature in ``--temperatures`` draws ``--num`` images from it at ``--correction`` (default 0.5, the
sampler's), scored by glann's own evaluation (``glann.evaluate.evaluate`` on the images, as ``glann-eval images=...``
does): FID against ``--stats``, KID and precision/recall (k=3) against ``--num-real`` MNIST test images, near-copies
against the training set; plus the digit mix read by glann's MNIST classifier. With ``--sampler``, the IMLE sampler
of the same GLO stage is scored the same way first (its default correction, temperature 1).

``code dist`` is the mean distance from a sampled code (uncorrected, at that temperature) to its nearest training
code (a training code's nearest other training code is printed first, for scale). Fitted mixtures are kept in
``<out>/K<k>_s<seed>/mapper``, and a row whose folder already holds ``row.json`` is reused, so an interrupted run
resumes.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from matching import digit_mix_of


def nearest_distance(queries: torch.Tensor, base: torch.Tensor, exclude: torch.Tensor | None = None) -> float:
    out = []
    for s in range(0, len(queries), 1024):
        d = torch.cdist(queries[s:s + 1024], base)
        if exclude is not None:
            d[torch.arange(len(d)), exclude[s:s + 1024]] = float("inf")
        out.append(d.min(1).values)
    return torch.cat(out).mean().item()


def score(name: str, images: np.ndarray, args: argparse.Namespace, **extra: float) -> dict:
    from glann.config import DataConfig, EvalOptions
    from glann.evaluate import evaluate

    opts = EvalOptions(metrics=["fid", "kid", "pr", "memorization"], num_samples=args.num, num_real=args.num_real,
                       seed=0, inception_weights=args.weights, fid_stats=args.stats,
                       cache_dir=str(args.out / "cache"), progress=False)
    test = DataConfig(name="mnist", root=args.mnist_root, split="test")
    train = DataConfig(name="mnist", root=args.mnist_root, split="train")
    results = evaluate(None, test, opts, args.out / name, train_cfg=train, images=images)
    return {**results, **digit_mix_of(images, args.mnist_root, args.out / "cache"), **extra}


def mixture_mapper(latents: torch.Tensor, k: int, seed: int, folder: Path):  # type: ignore[no-untyped-def]
    """The K-component mixture mapper of ``latents`` fitted with EM seed ``seed``, saved in (or loaded from)
    ``folder``; also the fit's seconds and EM iterations (NaN when loaded)."""
    from glann import artifacts
    from glann.config import MapperConfig
    from glann.mixture import fit_mixture
    from glann.nets import Mapper, MapperArch

    if (folder / "model.safetensors").exists():
        fit = json.loads((folder / "fit.json").read_text())
        return artifacts.load_network(folder, kind=Mapper), fit["seconds"], fit["iterations"]
    d = latents.shape[1]
    mapper = Mapper(MapperArch.of(MapperConfig(mixture=k), noise_dim=d + 1, latent_dim=d))
    mix = fit_mixture(latents, k, seed=seed)
    mapper.set_mixture(mix.weights, mix.means, mix.covariances)
    artifacts.save_network(folder, mapper)
    (folder / "fit.json").write_text(json.dumps({"seconds": mix.seconds, "iterations": mix.iterations,
                                                 "converged": mix.converged}))
    return mapper, mix.seconds, mix.iterations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glo", required=True, type=Path, help="a finished GLO stage folder (<run>/glo)")
    ap.add_argument("--sampler", type=Path, help="the IMLE sampler of the same GLO stage, scored as a baseline")
    ap.add_argument("--components", type=int, nargs="+", default=[400], help="mixture sizes K")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="EM seeds (k-means initialisation)")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0], help="sampling temperatures")
    ap.add_argument("--correction", type=float, default=0.5, help="density-correction strength (0: off)")
    ap.add_argument("--weights", required=True, help="TF-Inception FID weights (.pth)")
    ap.add_argument("--stats", required=True, help="reference Inception statistics for FID (.npz with mu, sigma)")
    ap.add_argument("--num", type=int, default=2000, help="samples evaluated per row")
    ap.add_argument("--num-real", type=int, default=2000, help="test images for KID, precision/recall")
    ap.add_argument("--mnist-root", default=os.environ.get("GLANN_DATA_ROOT", "data"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_gmm_prior"))
    args = ap.parse_args()
    if not (args.glo / "manifest.json").exists():
        ap.error(f"--glo {args.glo}: not a finished GLO stage (no manifest.json)")
    torch.set_num_threads(args.threads)
    from glann import artifacts, nets
    from glann.sampler import GlannSampler

    args.out.mkdir(parents=True, exist_ok=True)
    latents = artifacts.load_tensors(args.glo / "latents.safetensors")["latents"].float()
    generator = artifacts.load_network(args.glo / "generator", kind=nets.Generator)
    pick = torch.randperm(len(latents), generator=torch.Generator().manual_seed(0))[:args.num]
    print(f"training code -> nearest other training code: mean {nearest_distance(latents[pick], latents, pick):.3f}")

    def cached(name: str, compute) -> dict:  # type: ignore[no-untyped-def]
        path = args.out / name / "row.json"
        if path.exists():
            return json.loads(path.read_text())
        row = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row))
        return row

    def code_dist(sampler: GlannSampler, temperature: float) -> float:
        with torch.no_grad():
            codes = sampler.mapper(sampler.mapper.scale_noise(sampler.noise(args.num, seed=0), temperature))
        return nearest_distance(codes.float(), latents)

    rows = []
    if args.sampler:
        def imle_row() -> dict:
            sampler = GlannSampler.from_pretrained(args.sampler)
            return score("imle", sampler(args.num, seed=0, temperature=1.0).images, args,
                         code_dist=code_dist(sampler, 1.0), fit_s=float("nan"), iters=float("nan"))
        rows.append((f"IMLE sampler ({args.sampler})", cached("imle", imle_row)))
    for k in args.components:
        for seed in args.seeds:
            fitted: dict = {}  # the mixture sampler, built on its first uncached row

            def gmm_row(t: float, k: int = k, seed: int = seed, fitted: dict = fitted) -> dict:
                if not fitted:
                    mapper, seconds, iters = mixture_mapper(latents, k, seed, args.out / f"K{k}_s{seed}" / "mapper")
                    fitted.update(sampler=GlannSampler(mapper, generator, reference=latents), fit_s=seconds,
                                  iters=iters)
                sampler = fitted["sampler"]
                images = sampler(args.num, seed=0, temperature=t, correction=args.correction).images
                return score(f"K{k}_s{seed}/t{t:g}", images, args, code_dist=code_dist(sampler, t),
                             fit_s=fitted["fit_s"], iters=fitted["iters"])
            for t in args.temperatures:
                rows.append((f"GMM K={k}, EM seed {seed}, temperature {t:g}",
                             cached(f"K{k}_s{seed}/t{t:g}", lambda t=t, f=gmm_row: f(t))))
                print(f"K={k} seed={seed} t={t:g} done", flush=True)

    print(f"\nGLO stage {args.glo}, {args.num} samples, {args.num_real} test images, correction {args.correction:g} "
          "(the IMLE row: its sampler's default)\n")
    ones = rows[0][1]["ones_data"]
    print(f"| stage 2 | FID | KID ×10³ | precision | recall | near-copies | \"1\"s (data {ones:.1%}) | "
          "digit KL | code dist | fit s (EM iterations) |\n|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        fit = "–" if np.isnan(r["fit_s"]) else f"{r['fit_s']:.0f} ({r['iters']})"
        print(f"| {name} | {r['fid']:.2f} | {1e3 * r['kid']:.2f} ± {1e3 * r['kid_std']:.2f} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {100 * r['memorization/near_copy_fraction']:.2f}% | {100 * r['ones']:.1f}% | "
              f"{r['digit_kl']:.3f} | {r['code_dist']:.3f} | {fit} |")


if __name__ == "__main__":
    main()
