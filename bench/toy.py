"""IMLE on the 2-D ring (8 modes) and grid (25 modes) of Gaussians: modes covered and % high-quality samples.

    python bench/toy.py [--rounds 30]
"""
import argparse
import time

from glann.toy import run_toy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    print("| toy | modes covered | high-quality samples | data points with a sample within 3 std | seconds |\n"
          "|---|---|---|---|---|")
    for kind in ("ring", "grid"):
        t0 = time.perf_counter()
        m = run_toy(kind, rounds=args.rounds)
        print(f"| {kind} | {m['modes_covered']} / {m['modes']} | {m['high_quality_pct']:.1f}% | "
              f"{m['data_recall_pct']:.1f}% | {time.perf_counter() - t0:.0f} |")


if __name__ == "__main__":
    main()
