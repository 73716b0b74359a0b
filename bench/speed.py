"""Throughput of glann's hot loops next to this machine's fp32 matrix-multiply rate, measured in one run.

    python bench/speed.py [--device cpu|cuda] [--threads N]

Rows: fp32 matmul GFLOP/s (2048^2 GEMM), GLO training (paper MNIST generator + Lap1, batch 128: images/s and
GFLOP/s counted with torch.utils.flop_counter, as a fraction of the matmul rate), one IMLE matching round
(60k latents, 2x samples: mapper + exact faiss search), and sampling images/s.
"""
import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from glann.imle import matching_round
from glann.losses import Lap1Loss
from glann.glo import RowAdam, glo_step
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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=128)
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
    t = timed(lambda: matching_round(mapper, data_latents, 2 * n, 32, torch.Generator().manual_seed(0), dev),
              min_seconds=10.0, warmup=1)
    rows.append(("IMLE matching round (60k latents, 120k samples)", f"{t:.2f} s/round", ""))

    sampler = GlannSampler(mapper, gen.eval())
    t = timed(lambda: sampler(2000, seed=0, batch_size=500, output_type="tensor"), warmup=1)
    rows.append(("sampling (batch 500)", f"{2000 / t:.0f} img/s", ""))

    print(f"device: {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    print("| what | rate | of matmul rate |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
