"""Throughput of glann's hot loops next to this machine's fp32 matrix-multiply rate, measured in one run.

    python bench/speed.py [--device cpu|cuda] [--threads N] [--rounds 3]

Rows: fp32 matmul GFLOP/s (2048^2 GEMM), GLO training (paper MNIST generator + Lap1, batch 128: images/s and
GFLOP/s counted with torch.utils.flop_counter, as a fraction of the matmul rate), one IMLE matching round
(60k latents, 2x samples: mapper + exact faiss search; its distance GEMM as a fraction of the matmul rate),
the exact search alone against one plain multi-threaded faiss call (interleaved), and sampling images/s.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from glann import knn
from glann.glo import RowAdam, glo_step
from glann.imle import map_noise, matching_round
from glann.losses import Lap1Loss
from glann.nets import Generator, GeneratorArch, Mapper, MapperArch
from glann.runtime import adam
from glann.sampler import GlannSampler


def timed(fn, min_seconds: float = 3.0, warmup: int = 2) -> float:
    """Seconds per call, averaged over at least ``min_seconds``."""
    for _ in range(warmup):
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def repeat(fn, n: int) -> list[float]:
    """Seconds of each of ``n`` calls (for calls long enough to time one by one)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="IMLE rounds (and searches) to time")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    rows = []

    a, b = torch.randn(2048, 2048, device=dev), torch.randn(2048, 2048, device=dev)
    t = timed(lambda: (a @ b, sync(dev)))
    mm_rate = 2 * 2048 ** 3 / t / 1e9
    rows.append(("fp32 matmul 2048^2", f"{mm_rate:.1f} GFLOP/s", "100%"))

    n = 60000
    gen = Generator(GeneratorArch(latent_dim=64, image_size=28, channels=1)).to(dev)
    latents = nn.Embedding(n, 64, sparse=True).to(dev)
    with torch.no_grad():
        latents.weight.copy_(F.normalize(latents.weight, dim=1))
    opt_g = adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.999))  # as glann.glo builds it
    opt_z = RowAdam(latents.parameters(), lr=1e-2, betas=(0.5, 0.999))  # the default latent optimiser
    loss_fn = Lap1Loss(4).to(dev)
    x = torch.rand(args.batch, 1, 28, 28, device=dev)
    g = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(0, n, (args.batch,), generator=g).to(dev)
        glo_step(gen, latents, opt_g, opt_z, loss_fn, x, idx)
        sync(dev)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    t = timed(step)
    rate = flops / t / 1e9
    rows.append((f"GLO train step (batch {args.batch})", f"{args.batch / t:.0f} img/s, {rate:.1f} GFLOP/s",
                 f"{100 * rate / mm_rate:.0f}%"))

    mapper = Mapper(MapperArch(noise_dim=32, latent_dim=64)).to(dev)
    data_latents = F.normalize(torch.randn(n, 64), dim=1)
    times = repeat(lambda: matching_round(mapper, data_latents, 2 * n, 32, torch.Generator().manual_seed(0), dev),
                   args.rounds)
    search_flops = 2 * n * 2 * n * 64  # the distance GEMM, 60k x 120k x 64
    rows.append(("IMLE matching round (60k latents, 120k samples)",
                 f"{med(times):.2f} s/round (median of {len(times)}; max {max(times):.2f})",
                 f"{100 * search_flops / med(times) / 1e9 / mm_rate:.0f}%"))
    if dev.type == "cpu" and knn.faiss is not None:
        # The exact search alone: glann's split over threads against one multi-threaded faiss call, interleaved.
        generated = map_noise(mapper, torch.randn(2 * n, 32, generator=torch.Generator().manual_seed(0)), dev)
        index = knn.faiss.IndexFlatL2(64)
        index.add(generated.numpy())
        q = data_latents.numpy()
        ours, plain = [], []
        for _ in range(args.rounds):
            ours += repeat(lambda: knn.search_cpu(index, q), 1)
            plain += repeat(lambda: index.search(q, 1), 1)
        for name, ts in ((f"  exact search, glann split over {knn.faiss.omp_get_max_threads()} threads", ours),
                         ("  exact search, one multi-threaded faiss call", plain)):
            rows.append((name, f"{med(ts):.2f} s (median of {len(ts)}; max {max(ts):.2f})",
                         f"{100 * search_flops / med(ts) / 1e9 / mm_rate:.0f}%"))

    sampler = GlannSampler(mapper, gen.eval())
    t = timed(lambda: sampler(2000, seed=0, batch_size=500, output_type="tensor"), warmup=1)
    rows.append(("sampling (batch 500)", f"{2000 / t:.0f} img/s", ""))

    print(f"device: {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    print("| what | rate | of matmul rate |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
