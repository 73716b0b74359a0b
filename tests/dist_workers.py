"""Worker bodies for the spawned 2-process gloo tests (tests/test_distributed.py): importable by the children
that torch.multiprocessing.spawn starts, and shared with the single-process reference in the parent."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from glann.losses import Lap1Loss
from glann.nets import Generator, GeneratorArch

N_IMAGES, GLOBAL_BATCH, STEPS = 40, 16, 3
IMLE_BATCH = 16  # per rank
SPLIT = (600, 401)  # uneven sample shards: rank 0 holds samples [0, 600), rank 1 [600, 1001)


def glo_problem():
    """A tiny GLO problem: generator WITHOUT BatchNorm (per-rank batch statistics would differ from the global
    batch's), a data set, a latent table and the global batches of STEPS steps."""
    torch.manual_seed(0)
    gen = Generator(GeneratorArch(latent_dim=8, image_size=8, channels=1, hidden_dim=32, base_channels=8,
                                  batch_norm=False))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(N_IMAGES, 1, 8, 8, generator=g)
    latents = nn.Embedding(N_IMAGES, 8, sparse=True)
    with torch.no_grad():
        latents.weight.copy_(nn.functional.normalize(torch.randn(N_IMAGES, 8, generator=g), dim=1))
    batches = [torch.randperm(N_IMAGES, generator=g)[:GLOBAL_BATCH] for _ in range(STEPS)]
    return gen, latents, x, batches


def glo_optimisers(gen: nn.Module, latents: nn.Embedding, latent_opt: str):
    from glann.glo import RowAdam
    from glann.runtime import adam

    opt_g = adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.999))
    if latent_opt == "row_adam":
        opt_z = RowAdam(latents.parameters(), lr=1e-2, betas=(0.5, 0.999))
    else:  # plain SGD: sensitive to the gradient's scale, which Adam's first steps are not
        opt_z = torch.optim.SGD(latents.parameters(), lr=20.0)
    return opt_g, opt_z


def glo_noise(rows: int, step: int) -> torch.Tensor:
    """glo.latent_noise's draw for a global batch (glann.glo.code_noise); ranks take their shard of it."""
    from glann.glo import code_noise

    return code_noise(rows, 8, 0.2, (0, 0, step))


def matching_problem(integer: bool):
    """Samples (1001 x 16) and queries (300 x 16). Integer-valued data makes every distance exact in float32,
    so exact ties (several samples at the same smallest distance, across shards) are frequent and decidable."""
    g = torch.Generator().manual_seed(5 if integer else 6)
    if integer:
        return (torch.randint(0, 2, (sum(SPLIT), 16), generator=g).float(),
                torch.randint(0, 2, (300, 16), generator=g).float())
    return torch.randn(sum(SPLIT), 16, generator=g), torch.randn(300, 16, generator=g)


IMLE_RULES = {"ema": dict(ema=0.8), "capacity": dict(matching="capacity", capacity_k=4),
              "rejection": dict(matching="rejection", rejection_quantile=0.5),
              "adaptive": dict(matching="adaptive", adaptive_gamma=0.02, adaptive_resample_every=5, rounds=3),
              "categories": dict(mapper=dict(hidden_dim=16, categories=4)),  # nearest's sharded search
              "mixture": dict(noise_dim=9, mapper=dict(hidden_dim=16, mixture=4))}  # fitted on rank 0, broadcast


def imle_problem(**settings):
    """64 unit-norm latents in 4 clusters, and a small IMLE config (``settings`` replace its fields): 2 rounds of
    one epoch, global batch 32 (``IMLE_BATCH`` per rank on 2 ranks, 64 / 32 = 2 steps a round)."""
    from dataclasses import replace

    import torch.nn.functional as F

    from glann.config import IMLEConfig
    from glann.nets import MapperConfig

    g = torch.Generator().manual_seed(7)
    centers = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    latents = F.normalize(centers[torch.arange(64) % 4] + 0.05 * torch.randn(64, 8, generator=g), dim=1)
    cfg = IMLEConfig(noise_dim=4, mapper=MapperConfig(hidden_dim=16), rounds=2, epochs_per_round=1,
                     batch_size=IMLE_BATCH, lr=3e-3)
    if isinstance(settings.get("mapper"), dict):
        settings["mapper"] = MapperConfig(**settings["mapper"])
    return latents, replace(cfg, **settings)


def run_imle(latents, cfg, out: Path, world=None) -> dict:
    """The IMLE stage through the shared loop; returns its exported and trained mappers and its matching state."""
    from glann.imle import IMLEStage
    from glann.training import LoopOptions, Schedule, fit

    stage = IMLEStage(latents, cfg, out, torch.device("cpu"), seed=0, world=world)
    schedule = Schedule(lr_decay_every=0, lr_decay=0.5, grid_every=0, checkpoint_every=1,
                        checkpoint_minutes=float("inf"), lr_hint="imle.lr")
    options = LoopOptions(progress=False) if world is None else LoopOptions(progress=False, world=world)
    row = fit(stage, out, schedule, options)
    return {"loss": row["imle/loss"], "export": {k: v.clone() for k, v in stage.exported().state_dict().items()},
            "net": {k: v.clone() for k, v in stage.net.state_dict().items()},
            "state": {k: v.clone() for k, v in stage.match_state.items()}}


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    from glann import distributed as gd
    from glann.glo_dist import distributed_glo_step
    from glann.knn import nearest_neighbors_distributed

    res: dict = {"t": [("start", time.time())]}
    if rank == 1:
        time.sleep(1.2)  # a later clock: without the broadcast the stamps would differ
    res["stamp"] = gd.run_stamp("%H-%M-%S.%f")  # starts the process group from the environment
    world = gd.init_world("cpu", timeout_s=60)  # reuses it
    res["world"] = (world.rank, world.world_size, world.backend, world.is_main, gd.is_main())
    res["gather0d"] = gd.all_gather_tensor(torch.tensor(float(rank))).tolist()
    res["bcast"] = gd.broadcast_object({"rank": rank})
    res["any"] = gd.any_rank(rank == 1), gd.any_rank(False)
    res["mean"] = gd.all_reduce_mean(torch.tensor([float(rank)])).item()
    gd.barrier()
    res["t"].append(("helpers", time.time()))

    for latent_opt in ("row_adam", "sgd", "row_adam+noise"):
        gen, latents, x, batches = glo_problem()
        ddp = gd.wrap_ddp(gen, world)
        opt_g, opt_z = glo_optimisers(gen, latents, latent_opt.split("+")[0])
        losses = []
        for step, idx in enumerate(batches):
            mine = idx[gd.shard(len(idx), world)]
            noise = glo_noise(len(idx), step)[gd.shard(len(idx), world)] if "noise" in latent_opt else None
            losses.append(distributed_glo_step(ddp, latents, opt_g, opt_z, Lap1Loss(3), x[mine], mine, world,
                                               noise=noise))
        res[f"glo_{latent_opt}"] = {"latents": latents.weight.detach().clone(), "losses": losses,
                                    "generator": {k: v.clone() for k, v in gd.unwrap(ddp).state_dict().items()}}
        res["t"].append((latent_opt, time.time()))

    for integer in (True, False):
        samples, queries = matching_problem(integer)
        mine = samples[:SPLIT[0]] if rank == 0 else samples[SPLIT[0]:]
        idx, dist, backend = nearest_neighbors_distributed(mine, queries, world)
        res[f"match_{'int' if integer else 'gauss'}"] = (idx, dist, backend)
        res["t"].append((f"match{integer}", time.time()))
    # IMLE on 2 ranks: imle.ema (the average updated on every rank) and the matching rules other than nearest
    # (samples all-gathered, rank 0 selects and broadcasts); then a rule that fails on rank 0 must stop both ranks.
    from glann.errors import ConfigError

    for name, settings in IMLE_RULES.items():
        latents, cfg = imle_problem(**settings)
        res[f"imle_{name}"] = run_imle(latents, cfg, Path(out) / f"imle_{name}", world)
        res["t"].append((f"imle_{name}", time.time()))
    latents, cfg = imle_problem(matching="rejection", rejection_eps=100.0)
    try:
        run_imle(latents, cfg, Path(out) / "imle_all_rejected", world)
        res["imle_all_rejected"] = None
    except ConfigError as e:
        res["imle_all_rejected"] = f"{type(e).__name__}: {e}"
    torch.save(res, Path(out) / f"rank{rank}.pt")
    gd.destroy()


def submitit_task() -> tuple:
    """One task of a 2-task submitit job: the process group from submitit's own environment helper."""
    import torch.distributed as dist

    from glann import distributed as gd

    stamp = gd.run_stamp("%H-%M-%S.%f")
    world = gd.init_world("cpu", timeout_s=60)
    t = torch.tensor([float(world.rank + 1)])
    dist.all_reduce(t)
    out = (world.rank, world.world_size, world.local_rank, world.launcher, world.backend, t.item(), stamp)
    gd.destroy()
    return out
