"""Stage-2 refinements through the frozen (or not) generator, on a finished MNIST run: does training the mapper on
the image loss, or re-estimating the generator's BatchNorm statistics on the mapper's codes, improve samples?

    GLANN_DATA_ROOT=../shared/data python bench/mapper_finetune.py --run outputs/mnist_cpu/<time> \
        --out /tmp/ft/image_loss --rounds 3 --epochs 2                  # mapper only, generator frozen
    ... --glr 1e-4                                                      # the generator trained too
    ... --rounds 0 --bn-recalibrate 20000                               # BatchNorm statistics only
    glann-eval sampler_dir=/tmp/ft/image_loss data=mnist ...            # the 2k protocol of BENCHMARKS.md

``--run`` is a glann-train run folder (``sampler/`` and ``glo/latents.safetensors``, trained on the MNIST training
split in order). Each round draws m*N noise, maps it, matches every training code to its nearest mapped code
(exact, glann.knn, as the IMLE stage does), then trains for ``--epochs`` epochs on the pairs with the stage-1 loss
(Lap1 as recorded in the sampler) between the decoded matched code and the training image, through the generator
in eval mode (running BatchNorm statistics, as the sampler decodes). ``--latent-weight`` adds the IMLE stage's own
latent loss. Writes a sampler folder with the new mapper (and generator) to ``--out``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file

from glann import artifacts
from glann.knn import nearest_neighbors
from glann.losses import Lap1Loss
from glann.sampler import GlannSampler


def recalibrate(sampler: GlannSampler, num: int, seed: int = 999) -> None:
    """Replace the generator's BatchNorm running statistics by their averages over ``num`` mapped codes."""
    norms = [m for m in sampler.generator.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch
    noise = torch.randn(num, sampler.noise_dim, generator=torch.Generator().manual_seed(seed))
    sampler.generator.train()
    with torch.no_grad():
        for s in range(0, num, 500):
            sampler.generator(sampler.mapper(noise[s:s + 500]))
    sampler.generator.eval()
    for m in norms:
        m.momentum = 0.1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mnist-root", default=os.environ.get("GLANN_DATA_ROOT", "../shared/data"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per matching")
    ap.add_argument("--m", type=int, default=2, help="noise samples per training code")
    ap.add_argument("--lr", type=float, default=1e-4, help="mapper lr (Adam, betas 0.5, 0.999)")
    ap.add_argument("--glr", type=float, default=0.0, help="generator lr; 0 keeps it frozen")
    ap.add_argument("--latent-weight", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--bn-recalibrate", type=int, default=0, help="codes to re-estimate BatchNorm statistics on")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    sampler = GlannSampler.from_pretrained(a.run / "sampler")
    gen, mapper = sampler.generator, sampler.mapper
    codes = load_file(str(a.run / "glo" / "latents.safetensors"))["latents"].float()
    images = torch.from_numpy(torchvision.datasets.MNIST(a.mnist_root, train=True).data.numpy())[:, None]
    if len(images) != len(codes):
        raise SystemExit(f"{a.run}: {len(codes)} codes for {len(images)} MNIST training images")
    loss_fn = Lap1Loss(int((sampler.loss_config or {}).get("lap_levels", 4)))
    gen.eval()
    with torch.no_grad():
        own = loss_fn(gen(codes[:512]), images[:512].float() / 255).mean().item()
    print(f"stage-1 loss of the first 512 training codes: {own:.5f} (a large value: codes and images misaligned)")
    for p in gen.parameters():
        p.requires_grad_(a.glr > 0)
    groups = [{"params": list(mapper.parameters()), "lr": a.lr}]
    if a.glr > 0:
        groups.append({"params": list(gen.parameters()), "lr": a.glr})
    opt = torch.optim.Adam(groups, betas=(0.5, 0.999))
    rng = torch.Generator().manual_seed(a.seed + 123)
    n = len(codes)
    print(f"{'round':>5} | {'NN dist':>7} | {'image loss':>10} | {'latent sq':>9} | {'seconds':>7}")
    for r in range(a.rounds):
        t0 = time.perf_counter()
        noise = torch.randn(a.m * n, sampler.noise_dim, generator=rng)
        mapper.eval()
        with torch.no_grad():
            mapped = torch.cat([mapper(noise[s:s + 8192]) for s in range(0, len(noise), 8192)])
        mapper.train()
        idx, dist = nearest_neighbors(mapped, codes, device="cpu")
        matched = noise[idx]
        img_sum = lat_sum = 0.0
        for _ in range(a.epochs):
            perm = torch.randperm(n, generator=rng)
            for s in range(0, n, a.batch):
                b = perm[s:s + a.batch]
                c = mapper(matched[b])
                img = loss_fn(gen(c), images[b].float() / 255).mean()
                lat = (c - codes[b]).pow(2).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                (img + a.latent_weight * lat).backward()
                opt.step()
                img_sum += img.item() * len(b)
                lat_sum += lat.item() * len(b)
        seen = a.epochs * n
        print(f"{r + 1:5d} | {dist.mean().item():7.4f} | {img_sum / seen:10.5f} | {lat_sum / seen:9.4f} | "
              f"{time.perf_counter() - t0:7.1f}", flush=True)
    mapper.eval()
    gen.eval()
    if a.bn_recalibrate:
        recalibrate(sampler, a.bn_recalibrate)
    if a.out.exists():
        shutil.rmtree(a.out)
    shutil.copytree(a.run / "sampler", a.out)
    artifacts.save_network(a.out / "mapper", mapper)
    artifacts.save_network(a.out / "generator", gen)
    print(f"sampler written to {a.out}")


if __name__ == "__main__":
    main()
