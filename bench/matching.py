"""IMLE matching rules on a real pipeline: one finished GLO stage, one IMLE stage per rule, one table.

    GLANN_DATA_ROOT=../shared/data python bench/matching.py --glo outputs/mnist_cpu/<time>/glo \
        --weights ../shared/models/inception-2015-12-05-fid-weights-no-classifier.pth \
        --stats ../shared/models/mnist_test_inception_stats.npz \
        --rule nearest --rule rejection imle.rejection_quantile=0.5 --rule adaptive

Every rule trains the IMLE stage of ``--experiment`` on a copy of the same GLO stage (so the rules differ in the
matching step alone), through ``glann-train`` itself, then evaluates the sampler with the pipeline's own
evaluation: FID against ``--stats``, KID and precision/recall (k=3) against ``--num-real`` test images, and the
memorisation check (near-copies: samples closer to a training image than the closest 1% of test images are), and
the digit mix of the samples read by glann's MNIST classifier (share of "1"s; KL to the training set's digit
frequencies).
``seconds`` is the IMLE stage's wall clock from its manifest. A rule's run folder is ``<out>/<name>``; a rule
whose folder already holds ``results.json`` is not rerun, so an interrupted benchmark resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def rule_name(rule: list[str]) -> str:
    """``rejection imle.rejection_quantile=0.5`` -> ``rejection_q0.5``-like folder names, readable and unique."""
    parts = [rule[0]] + [o.split("=", 1)[0].rsplit(".", 1)[-1].replace("rejection_", "").replace("adaptive_", "")
                         + o.split("=", 1)[1] for o in rule[1:]]
    return "_".join(parts)


def run_rule(rule: list[str], args: argparse.Namespace) -> dict:
    run_dir = args.out / rule_name(rule)
    if (run_dir / "results.json").exists():
        print(f"{run_dir}: done before, reusing", file=sys.stderr)
    else:
        if not (run_dir / "glo").exists():
            shutil.copytree(args.glo, run_dir / "glo")
        overrides = [f"experiment={args.experiment}", "cache_dir=null", f"num_threads={args.threads}",
                     f"imle.matching={rule[0]}", *rule[1:],
                     "eval.metrics=[fid,kid,pr,memorization]", f"eval.num_samples={args.num}",
                     f"eval.num_real={args.num_real}", f"eval.inception_weights={args.weights}",
                     f"eval.fid_stats={args.stats}", f"eval.cache_dir={args.out / 'cache'}", "eval.progress=false",
                     f"hydra.run.dir={run_dir}", *args.extra]
        print("glann-train " + " ".join(overrides), file=sys.stderr, flush=True)
        with open(args.out / f"{rule_name(rule)}.log", "w") as log:
            subprocess.run([sys.executable, "-m", "glann.train", *overrides], check=True, stdout=log,
                           stderr=subprocess.STDOUT, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    results = json.loads((run_dir / "results.json").read_text())
    results.update(digit_mix(run_dir / "sampler", args))
    manifest = json.loads((run_dir / "imle" / "manifest.json").read_text())
    rounds = [json.loads(line) for line in (run_dir / "imle" / "stats.jsonl").read_text().splitlines()]
    rejected = [r["imle/rejected_frac"] for r in rounds if "imle/rejected_frac" in r]
    rematched = [r["imle/rematched_frac"] for r in rounds if "imle/rematched_frac" in r]
    return {**results, "seconds": manifest["seconds"],
            "rejected": sum(rejected) / len(rejected) if rejected else None,
            "rematched": sum(rematched) / len(rematched) if rematched else None}


def digit_mix(sampler_dir: Path, args: argparse.Namespace) -> dict:
    """The digit mix (:func:`digit_mix_of`) of ``args.num`` samples of a sampler folder at seed 0."""
    from glann.sampler import GlannSampler

    return digit_mix_of(GlannSampler.from_pretrained(sampler_dir)(args.num, seed=0).images, args.mnist_root,
                        args.out / "cache")


def digit_mix_of(images, mnist_root: str, cache: Path) -> dict:  # type: ignore[no-untyped-def]
    """Which digits uint8 (N, H, W, 1) MNIST-like ``images`` are, read by glann's cached MNIST classifier: the share
    of "1"s (the thinnest, densest cluster) and KL(sample digit frequencies || training-set frequencies)."""
    import numpy as np
    import torchvision

    from glann.modes import cached_classifier, predict_digits

    classifier = cached_classifier(mnist_root, str(cache))
    p = np.bincount(predict_digits(classifier, images.transpose(0, 3, 1, 2)), minlength=10) / len(images)
    q = np.bincount(torchvision.datasets.MNIST(mnist_root, train=True).targets.numpy(), minlength=10)
    q = q / q.sum()
    nz = p > 0
    return {"ones": float(p[1]), "ones_data": float(q[1]), "digit_kl": float(np.sum(p[nz] * np.log(p[nz] / q[nz])))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glo", required=True, type=Path, help="a finished GLO stage folder (<run>/glo)")
    ap.add_argument("--rule", action="append", nargs="+", required=True,
                    help="a matching mode and its imle.* overrides; repeat for each rule")
    ap.add_argument("--experiment", default="mnist_cpu", help="the experiment the GLO stage was trained with")
    ap.add_argument("--weights", required=True, help="TF-Inception FID weights (.pth)")
    ap.add_argument("--stats", required=True, help="reference Inception statistics for FID (.npz with mu, sigma)")
    ap.add_argument("--num", type=int, default=2000, help="samples evaluated per rule")
    ap.add_argument("--num-real", type=int, default=2000, help="test images for KID, precision/recall")
    ap.add_argument("--mnist-root", default=os.environ.get("GLANN_DATA_ROOT", "data"),
                    help="MNIST root, for the digit classifier (default: $GLANN_DATA_ROOT)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_matching"))
    ap.add_argument("--extra", nargs="*", default=[], help="further overrides for every rule")
    args = ap.parse_args()
    if not (args.glo / "manifest.json").exists():
        ap.error(f"--glo {args.glo}: not a finished GLO stage (no manifest.json)")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [(rule, run_rule(rule, args)) for rule in args.rule]
    print(f"\n{args.experiment}, GLO stage {args.glo}, {args.num} samples, {args.num_real} test images\n")
    print("| rule | FID | KID ×10³ | precision | recall | near-copies | \"1\"s (data {:.1%}) | digit KL | IMLE s | "
          "mean rejected / re-matched |\n|---|---|---|---|---|---|---|---|---|---|".format(rows[0][1]["ones_data"]))
    for rule, r in rows:
        share = r["rejected"] if r["rejected"] is not None else r["rematched"]
        print(f"| {' '.join(rule)} | {r['eval/fid']:.2f} | {1e3 * r['eval/kid']:.2f} ± {1e3 * r['eval/kid_std']:.2f} | "
              f"{r['eval/precision']:.3f} | {r['eval/recall']:.3f} | "
              f"{100 * r['eval/memorization/near_copy_fraction']:.2f}% | {100 * r['ones']:.1f}% | "
              f"{r['digit_kl']:.3f} | {r['seconds']:.0f} | "
              f"{'–' if share is None else f'{share:.2f}'} |")


if __name__ == "__main__":
    main()
