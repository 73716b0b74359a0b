"""Throughput of GLO and IMLE steps on 1 rank x 2 threads against 2 ranks x 1 thread (gloo) on this machine.

    python bench/dist_speed.py [--reps 2] [--glo-steps 20] [--glo-batch 128] [--imle-batch 256] [--latents 20000]

Both layouts use the same two cores and the same global batches: GLO (paper MNIST generator with BatchNorm,
Lap1, RowAdam, global batch ``--glo-batch`` B: 1 x B or 2 x B/2 under DDP, latent rows all-gathered by
glann.glo_dist.distributed_glo_step), IMLE matching (``--latents`` data latents, 2x samples from the default
mapper, exact faiss search: one process searching all samples, or each rank its half and one MIN all-reduce,
glann.knn.nearest_neighbors_distributed) and one IMLE training epoch (global batch ``--imle-batch``, mapper under DDP).
Each layout runs in freshly spawned processes; layouts alternate ``--reps`` times. Prints one row per run, the
ratio 2x1 / 1x2 of the medians (throughput; 1.0 = no communication overhead), and the collectives alone
(2 ranks, this run's sizes), which say what the communication costs even when the machine is too busy for the
throughput ratio to mean much.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world_size: int, threads: int, port: int, out: str, args: dict) -> None:
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(threads)
    import faiss
    import torch.distributed as dist
    from torch import nn

    from glann import distributed as gd
    from glann.glo import RowAdam
    from glann.glo_dist import distributed_glo_step
    from glann.knn import nearest_neighbors_distributed
    from glann.losses import Lap1Loss
    from glann.nets import Generator, GeneratorArch, Mapper, MapperArch
    from glann.runtime import adam

    faiss.omp_set_num_threads(threads)
    world = gd.init_world("cpu")

    def sync_time() -> float:
        gd.barrier()
        return time.perf_counter()

    res: dict = {}
    # --- GLO ----------------------------------------------------------------------------------------------------
    n_img, batch = 4096, args["glo_batch"]
    torch.manual_seed(0)
    gen = Generator(GeneratorArch(latent_dim=64, image_size=28, channels=1, hidden_dim=1024, base_channels=64))
    ddp = gd.wrap_ddp(gen, world)
    latents = nn.Embedding(n_img, 64, sparse=True)
    opt_g = adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_z = RowAdam(latents.parameters(), lr=1e-2, betas=(0.5, 0.999))
    loss_fn = Lap1Loss(4)
    x = torch.rand(n_img, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(n_img, generator=torch.Generator().manual_seed(2))
    warm, steps = 3, args["glo_steps"]
    for s in range(warm + steps):
        if s == warm:
            t0 = sync_time()
        idx = perm[(s * batch) % n_img:][:batch]
        mine = idx[gd.shard(batch, world)]
        distributed_glo_step(ddp, latents, opt_g, opt_z, loss_fn, x[mine], mine, world)
    res["glo_images_per_s"] = steps * batch / (sync_time() - t0)

    # --- IMLE: matching and one training epoch --------------------------------------------------------------------
    n = args["latents"]
    g = torch.Generator().manual_seed(3)
    data_latents = nn.functional.normalize(torch.randn(n, 64, generator=g), dim=1)
    mapper = Mapper(MapperArch(noise_dim=32, latent_dim=64, hidden_dim=256, num_layers=3))
    mddp = gd.wrap_ddp(mapper, world)
    opt = adam(mapper.parameters(), lr=1e-3, betas=(0.5, 0.999))
    noise = torch.randn(2 * n, 32, generator=g)  # every rank draws the same noise from the round's seed
    match_s = []
    for _ in range(2):  # the first one warms up
        t0 = sync_time()
        with torch.no_grad():
            local = mapper(noise[gd.shard(len(noise), world)])
        idx, _, _ = nearest_neighbors_distributed(local, data_latents, world)
        match_s.append(sync_time() - t0)
    res["match_s"] = match_s[-1]
    matched = noise[idx]
    ib = args["imle_batch"]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(4))
    t0 = None
    for s in range(0, n + 5 * ib, ib):  # 5 warm-up steps, then one epoch
        if s == 5 * ib:
            t0 = sync_time()
        b = order[(s % n):][:ib]
        b = b[gd.shard(len(b), world)]
        loss = (mddp(matched[b]) - data_latents[b]).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    res["imle_epoch_s"] = sync_time() - t0
    res["imle_steps_per_s"] = -(-n // ib) / res["imle_epoch_s"]
    if world.distributed:  # the collectives alone, at this run's sizes: ms per call (median of 10)
        def comm_ms(fn) -> float:
            times = []
            for _ in range(11):
                t = sync_time()
                fn()
                times.append(time.perf_counter() - t)
            return 1000 * statistics.median(times[1:])
        gbuf = torch.zeros(sum(p.numel() for p in gen.parameters()))
        mbuf = torch.zeros(sum(p.numel() for p in mapper.parameters()))
        res["comm_glo_allreduce_ms"] = comm_ms(lambda: dist.all_reduce(gbuf))
        res["comm_glo_rows_ms"] = comm_ms(lambda: (gd.all_gather_tensor(torch.zeros(batch // 2, dtype=torch.int64)),
                                                   gd.all_gather_tensor(torch.zeros(batch // 2, 64))))
        res["comm_imle_allreduce_ms"] = comm_ms(lambda: dist.all_reduce(mbuf))
        res["comm_match_min_ms"] = comm_ms(lambda: dist.all_reduce(torch.zeros(n, dtype=torch.int64),
                                                                   op=dist.ReduceOp.MIN))
        res["glo_params"], res["mapper_params"] = gbuf.numel(), mbuf.numel()
    if world.is_main:
        torch.save(res, Path(out) / "res.pt")
    gd.destroy()


def run(world_size: int, threads: int, args: dict) -> dict:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(world_size, threads, free_port(), out, args), nprocs=world_size, join=True)
        return torch.load(Path(out) / "res.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--glo-steps", type=int, default=20)
    ap.add_argument("--glo-batch", type=int, default=128, help="GLO's global batch (even; 2 ranks take half each)")
    ap.add_argument("--imle-batch", type=int, default=256, help="IMLE's global batch (even)")
    ap.add_argument("--latents", type=int, default=20000)
    a = ap.parse_args()
    for name, b in (("--glo-batch", a.glo_batch), ("--imle-batch", a.imle_batch)):
        if b < 2 or b % 2:
            ap.error(f"{name} must be an even number >= 2, got {b}")
    args = {"glo_steps": a.glo_steps, "glo_batch": a.glo_batch, "imle_batch": a.imle_batch, "latents": a.latents}
    layouts = {"1 rank x 2 threads": (1, 2), "2 ranks x 1 thread": (2, 1)}
    rows: dict[str, list[dict]] = {k: [] for k in layouts}
    print(f"{'layout':20} | {'GLO img/s':>9} | {'matching s':>10} | {'IMLE steps/s':>12} | {'IMLE epoch s':>12}")
    for _ in range(a.reps):
        for name, (ws, th) in layouts.items():
            r = run(ws, th, args)
            rows[name].append(r)
            print(f"{name:20} | {r['glo_images_per_s']:9.0f} | {r['match_s']:10.2f} | "
                  f"{r['imle_steps_per_s']:12.1f} | {r['imle_epoch_s']:12.2f}", flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in rows.items()}
    one, two = med["1 rank x 2 threads"], med["2 ranks x 1 thread"]
    print(f"\nmedians over {a.reps} runs, global batches GLO {a.glo_batch}, IMLE {a.imle_batch}; "
          "ratio = throughput of 2x1 / 1x2 (target >= 0.9)")
    print(f"GLO      {one['glo_images_per_s']:7.0f} vs {two['glo_images_per_s']:7.0f} img/s   ratio "
          f"{two['glo_images_per_s'] / one['glo_images_per_s']:.2f}")
    print(f"matching {one['match_s']:7.2f} vs {two['match_s']:7.2f} s       ratio "
          f"{one['match_s'] / two['match_s']:.2f}")
    print(f"IMLE     {one['imle_steps_per_s']:7.1f} vs {two['imle_steps_per_s']:7.1f} steps/s ratio "
          f"{two['imle_steps_per_s'] / one['imle_steps_per_s']:.2f}")
    print(f"\ncollectives alone on 2 ranks (ms per call, medians): generator gradient all-reduce "
          f"({two['glo_params'] / 1e6:.1f}M floats) {two['comm_glo_allreduce_ms']:.1f}; latent rows + gradients "
          f"all-gather {two['comm_glo_rows_ms']:.2f}; mapper all-reduce ({two['mapper_params'] / 1e3:.0f}k floats) "
          f"{two['comm_imle_allreduce_ms']:.2f}; matching MIN all-reduce ({a.latents} int64) "
          f"{two['comm_match_min_ms']:.2f}")
    glo_step_ms = 1000 * a.glo_batch / one["glo_images_per_s"]
    print(f"GLO: the gradient all-reduce is {two['comm_glo_allreduce_ms'] / glo_step_ms:.0%} of one 1x2 step "
          f"({glo_step_ms:.0f} ms)")


if __name__ == "__main__":
    main()
