"""A Gaussian mixture on the GLO codes as stage 2, against the IMLE sampler: one GLO stage, one table.

    GLANN_DATA_ROOT=../shared/data python bench/gmm_prior.py --glo outputs/mnist_cpu/<time>/glo \
        --sampler outputs/mnist_cpu/<time>/sampler --components 10 100 200 \
        --weights ../shared/models/inception-2015-12-05-fid-weights-no-classifier.pth \
        --stats ../shared/models/mnist_test_inception_stats.npz

For each K in ``--components``, scikit-learn's ``GaussianMixture`` (full covariances, k-means init, ``--seed``) is
fitted by EM to the stage's training codes; ``--num`` codes are drawn from it (component by the mixture weights,
then mean + Cholesky factor x standard normal, numpy ``--seed``), put back on the unit sphere and decoded by the
stage's generator. The images are scored by glann's own evaluation (``glann.evaluate.evaluate`` on saved images, as
``glann-eval images=...`` does): FID against ``--stats``, KID and precision/recall (k=3) against ``--num-real`` MNIST
test images, near-copies against the training set; plus the digit mix read by glann's MNIST classifier. With
``--sampler``, the IMLE sampler of the same GLO stage is scored the same way first (its default correction).

``code dist`` is the mean distance from a drawn code to its nearest training code (a training code's nearest other
training code is printed first, for scale). A row whose folder ``<out>/K<k>`` already holds ``row.json`` is reused.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def nearest_distance(queries: torch.Tensor, base: torch.Tensor, exclude: torch.Tensor | None = None) -> float:
    out = []
    for s in range(0, len(queries), 1024):
        d = torch.cdist(queries[s:s + 1024], base)
        if exclude is not None:
            d[torch.arange(len(d)), exclude[s:s + 1024]] = float("inf")
        out.append(d.min(1).values)
    return torch.cat(out).mean().item()


def digit_mix(images: np.ndarray, args: argparse.Namespace) -> dict:
    import torchvision

    from glann.modes import cached_classifier, predict_digits

    classifier = cached_classifier(args.mnist_root, str(args.out / "cache"))
    p = np.bincount(predict_digits(classifier, images.transpose(0, 3, 1, 2)), minlength=10) / len(images)
    q = np.bincount(torchvision.datasets.MNIST(args.mnist_root, train=True).targets.numpy(), minlength=10)
    q = q / q.sum()
    nz = p > 0
    return {"ones": float(p[1]), "ones_data": float(q[1]), "digit_kl": float(np.sum(p[nz] * np.log(p[nz] / q[nz])))}


def score(name: str, images: np.ndarray, args: argparse.Namespace, **extra: float) -> dict:
    from glann.config import DataConfig, EvalOptions
    from glann.evaluate import evaluate

    opts = EvalOptions(metrics=["fid", "kid", "pr", "memorization"], num_samples=args.num, num_real=args.num_real,
                       seed=0, inception_weights=args.weights, fid_stats=args.stats,
                       cache_dir=str(args.out / "cache"), progress=False)
    test = DataConfig(name="mnist", root=args.mnist_root, split="test")
    train = DataConfig(name="mnist", root=args.mnist_root, split="train")
    results = evaluate(None, test, opts, args.out / name, train_cfg=train, images=images)
    return {**results, **digit_mix(images, args), **extra}


def draw(gm, num: int, seed: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """``num`` codes from a fitted full-covariance GaussianMixture, on the unit sphere."""
    rng = np.random.default_rng(seed)
    comp = rng.choice(len(gm.weights_), size=num, p=gm.weights_ / gm.weights_.sum())
    eps = rng.standard_normal((num, gm.means_.shape[1]))
    chol = np.linalg.cholesky(gm.covariances_)
    z = gm.means_[comp] + np.einsum("nij,nj->ni", chol[comp], eps)
    return F.normalize(torch.from_numpy(z).float(), dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glo", required=True, type=Path, help="a finished GLO stage folder (<run>/glo)")
    ap.add_argument("--sampler", type=Path, help="the IMLE sampler of the same GLO stage, scored as a baseline")
    ap.add_argument("--components", type=int, nargs="+", default=[100], help="mixture sizes K")
    ap.add_argument("--reg-covar", type=float, default=1e-5, help="added to each covariance's diagonal")
    ap.add_argument("--weights", required=True, help="TF-Inception FID weights (.pth)")
    ap.add_argument("--stats", required=True, help="reference Inception statistics for FID (.npz with mu, sigma)")
    ap.add_argument("--num", type=int, default=2000, help="samples evaluated per row")
    ap.add_argument("--num-real", type=int, default=2000, help="test images for KID, precision/recall")
    ap.add_argument("--mnist-root", default=os.environ.get("GLANN_DATA_ROOT", "data"))
    ap.add_argument("--seed", type=int, default=0, help="EM init and sampling seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_gmm_prior"))
    args = ap.parse_args()
    if not (args.glo / "manifest.json").exists():
        ap.error(f"--glo {args.glo}: not a finished GLO stage (no manifest.json)")
    try:
        from sklearn.mixture import GaussianMixture
    except ImportError:
        ap.error("needs scikit-learn: pip install scikit-learn")
    torch.set_num_threads(args.threads)
    from glann import artifacts, nets
    from glann.images import to_uint8
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

    rows = []
    if args.sampler:
        def imle_row() -> dict:
            sampler = GlannSampler.from_pretrained(args.sampler)
            with torch.no_grad():
                codes = sampler.mapper(sampler.noise(args.num, seed=0))
            return score("imle", sampler(args.num, seed=0).images, args,
                         code_dist=nearest_distance(codes, latents), fit_s=float("nan"), iters=float("nan"))
        rows.append((f"IMLE sampler ({args.sampler})", cached("imle", imle_row)))
    x = latents.double().numpy()
    for k in args.components:
        def gmm_row(k: int = k) -> dict:
            t0 = time.perf_counter()
            gm = GaussianMixture(k, covariance_type="full", reg_covar=args.reg_covar, max_iter=300,
                                 random_state=args.seed).fit(x)
            seconds = time.perf_counter() - t0
            codes = draw(gm, args.num, args.seed)
            with torch.no_grad():
                images = torch.cat([generator(codes[s:s + 500]) for s in range(0, len(codes), 500)])
            return score(f"K{k}", to_uint8(images), args, code_dist=nearest_distance(codes, latents),
                         fit_s=seconds, iters=gm.n_iter_, converged=float(gm.converged_),
                         train_loglik=float(gm.score(x)))
        rows.append((f"GMM, K={k}", cached(f"K{k}", gmm_row)))
        print(f"K={k} done", flush=True)

    print(f"\nGLO stage {args.glo}, {args.num} samples, {args.num_real} test images\n")
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
