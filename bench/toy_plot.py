"""Picture of the 2-D toys: IMLE samples with and without prior categories, one panel each.

    python bench/toy_plot.py [--out docs/toy_categories.png] [--seed 0] [--rounds 750]

Trains glann's IMLE stage (glann.toy.toy_config) on the ring and the grid twice: the best rule without categories
(rejection, quantile 0.6, 2-d noise, 250 rounds: bench/toy.py's rows) and with 2 categories per mode (rejection,
quantile 0.8, 3-d noise, ``--rounds``), then draws 2,500 samples per panel over the modes (grey discs: 3 std,
the high-quality radius). With categories, each sample's colour is its category. The panel titles carry the toy
metrics of those samples (glann.toy.mode_metrics). Torch runs on one thread; about 25 s per panel per 250 rounds.
"""
from __future__ import annotations

import argparse
import colorsys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from glann import knn
from glann.toy import TOY_STD, mixture_centers, mode_metrics, sample_toy, train_toy

PANEL, MARGIN = 360, 22
EXTENT = {"ring": 2.6, "grid": 5.0}  # half-width of the plotted square, in data units


def train(kind: str, seed: int, rounds: int, categories: int) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """(samples, their categories or None, metrics) of one IMLE run on ``kind``."""
    settings = dict(categories=categories, noise_dim=3, rejection_quantile=0.8) if categories else {}
    mapper, data = train_toy(kind, rounds=rounds, seed=seed, matching="rejection", **settings)
    samples = sample_toy(mapper, data, seed=seed)
    noise = torch.randn(len(samples), mapper.arch.noise_dim, generator=torch.Generator().manual_seed(seed + 1))
    cats = mapper.category(noise) if categories else None
    return samples, cats, mode_metrics(samples, kind, data=data)


def panel(kind: str, samples: torch.Tensor, cats: torch.Tensor | None, title: str) -> Image.Image:
    img = Image.new("RGB", (PANEL, PANEL + MARGIN), "white")
    draw = ImageDraw.Draw(img)
    ext = EXTENT[kind]

    def px(x: float, y: float) -> tuple[float, float]:
        return (x + ext) / (2 * ext) * PANEL, MARGIN + (ext - y) / (2 * ext) * PANEL

    r = 3 * TOY_STD[kind] / (2 * ext) * PANEL
    for cx, cy in mixture_centers(kind).tolist():
        x, y = px(cx, cy)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(215, 215, 215))
    k = int(cats.max()) + 1 if cats is not None else 0
    palette = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618) % 1.0, 0.85, 0.8)) for i in range(k)]
    for i, (sx, sy) in enumerate(samples.tolist()):
        if abs(sx) > ext or abs(sy) > ext:
            continue
        x, y = px(sx, sy)
        colour = palette[int(cats[i])] if cats is not None else (20, 20, 20)
        draw.rectangle([x - 0.5, y - 0.5, x + 0.5, y + 0.5], fill=colour)
    draw.text((6, 5), title, fill=(0, 0, 0))
    draw.rectangle([0, MARGIN, PANEL - 1, PANEL + MARGIN - 1], outline=(160, 160, 160))
    return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/toy_categories.png"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=750)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if knn.faiss is not None:
        knn.faiss.omp_set_num_threads(1)
    panels = []
    for kind in ("ring", "grid"):
        for per_mode in (0, 2):
            k = per_mode * len(mixture_centers(kind))
            rounds = args.rounds if k else 250
            samples, cats, m = train(kind, args.seed, rounds, k)
            label = f"K={k}, q=0.8, {rounds} rounds" if k else f"no categories, q=0.6, {rounds} rounds"
            title = (f"{kind}, {label}: {m['modes_covered']}/{m['modes']} modes, "
                     f"{m['high_quality_pct']:.1f}% HQ")
            print(title, flush=True)
            panels.append(panel(kind, samples, cats, title))
    out = Image.new("RGB", (2 * PANEL + 10, 2 * (PANEL + MARGIN) + 10), "white")
    for i, p in enumerate(panels):
        out.paste(p, ((i % 2) * (PANEL + 10), (i // 2) * (PANEL + MARGIN + 10)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
