"""GPU checks of the distributed building blocks, for a machine with one CUDA GPU (prints one line per check).

    python bench/dist_gpu_check.py all      # everything below except `ranks`
    torchrun --standalone --nproc_per_node=2 bench/dist_gpu_check.py ranks   # more ranks than GPUs: ConfigError

- search: glann.knn.search_cuda (faiss GPU when installed, else torch) equals CPU faiss / the brute force, results
  stay on the GPU; seconds for 60k x 120k and 1M x 2M (d=64), next to the GPU's fp32 matmul rate.
- nccl: a 1-rank "cuda:nccl,cpu:gloo" process group: all_gather_tensor of CUDA and CPU tensors, broadcast_object,
  barrier, the int64 MIN all-reduce of the sharded matching, and a DDP-wrapped GLO step equal to glo_step.
- glo: GLO training step images/s at batch 128 and 512, fp32 and bf16 autocast.
"""
from __future__ import annotations

import sys
import time

import torch


def timed(fn, reps: int = 3) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def check_search() -> None:
    import faiss

    from glann import knn

    print(f"torch {torch.__version__} cuda {torch.version.cuda}; {torch.cuda.get_device_name()}; faiss "
          f"{faiss.__version__} gpu build: {knn.faiss_has_gpu_build()}; backend for CUDA: {knn.knn_backend('cuda')}")
    a = torch.randn(8192, 8192, device="cuda")
    for prec in ("ieee", "tf32"):
        torch.backends.cuda.matmul.fp32_precision = prec
        s = timed(lambda: a @ a, 5)
        print(f"matmul 8192^3 fp32 ({prec}): {2 * 8192 ** 3 / s / 1e12:.1f} TFLOP/s")
    torch.backends.cuda.matmul.fp32_precision = "none"
    ab = a.bfloat16()
    print(f"matmul 8192^3 bf16: {2 * 8192 ** 3 / timed(lambda: ab @ ab, 5) / 1e12:.1f} TFLOP/s")
    g = torch.Generator().manual_seed(0)
    for n in (60_000, 1_000_000):
        lat = torch.nn.functional.normalize(torch.randn(n, 64, generator=g), dim=1).cuda()
        gen = torch.nn.functional.normalize(torch.randn(2 * n, 64, generator=g), dim=1).cuda()
        for backend in (["torch", "faiss"] if knn.faiss_has_gpu_build() else ["torch"]):
            reps = 3 if n < 100_000 else 1
            d2, idx, name = knn.search_cuda(gen, lat, backend=backend)
            s = timed(lambda g=gen, q=lat, b=backend: knn.search_cuda(g, q, backend=b), reps)
            flop = 2 * n * 2 * n * 64
            print(f"search {n} x {2 * n} d=64 with {name}: {s:.3f} s ({flop / s / 1e12:.1f} TFLOP/s of distance GEMM);"
                  f" results on {idx.device}")
            if n < 100_000:
                index = faiss.IndexFlatL2(64)
                index.add(gen.cpu().numpy())
                dcpu, icpu = index.search(lat.cpu().numpy(), 1)
                same = (idx.cpu() == torch.from_numpy(icpu[:, 0])).float().mean().item()
                err = (d2.cpu() - torch.from_numpy(dcpu[:, 0])).abs().max().item()
                print(f"  vs CPU faiss: {same * 100:.3f}% same neighbours, max |d2 diff| {err:.2e}")
        del lat, gen
        torch.cuda.empty_cache()


def check_nccl() -> None:
    import socket

    import torch.distributed as dist
    from torch import nn

    from glann import distributed as gd
    from glann import knn
    from glann.glo import RowAdam, glo_step
    from glann.glo_dist import distributed_glo_step
    from glann.losses import Lap1Loss
    from glann.nets import Generator, GeneratorArch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("cuda:nccl,cpu:gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=1, rank=0,
                            device_id=torch.device("cuda:0"))
    print("process group backend:", dist.get_backend())
    t = torch.arange(6.0, device="cuda").view(3, 2)
    out = gd.all_gather_tensor(t)
    print("all_gather cuda:", out.device, torch.equal(out, t), "| cpu:", torch.equal(gd.all_gather_tensor(t.cpu()),
                                                                                   t.cpu()))
    print("broadcast_object:", gd.broadcast_object({"a": 1}), "any_rank:", gd.any_rank(True))
    gd.barrier()
    key = torch.tensor([5, 3], dtype=torch.int64, device="cuda")
    print("int64 MIN all-reduce on cuda:", knn._all_reduce_min(key).tolist())
    samples = torch.randint(0, 2, (1001, 16), device="cuda").float()
    queries = torch.randint(0, 2, (300, 16), device="cuda").float()
    idx, d, backend = knn.nearest_neighbors_distributed(samples, queries, gd.World(device=torch.device("cuda:0")))
    ref = (queries.double()[:, None] - samples.double()[None]).pow(2).sum(-1).min(1)
    print(f"sharded matching on cuda ({backend}): equal to brute force (lowest index on ties):",
          torch.equal(idx, ref.indices), torch.equal(d.double().pow(2), ref.values))

    def problem():
        torch.manual_seed(0)
        gen = Generator(GeneratorArch(latent_dim=8, image_size=8, channels=1, hidden_dim=32, base_channels=8,
                                      batch_norm=False)).cuda()
        lat = nn.Embedding(40, 8, sparse=True).cuda()
        return gen, lat, torch.optim.Adam(gen.parameters(), lr=1e-3), RowAdam(lat.parameters(), lr=1e-2)

    x = torch.rand(40, 1, 8, 8, device="cuda")
    idx = torch.arange(16, device="cuda")
    gen, lat, og, oz = problem()
    glo_step(gen, lat, og, oz, Lap1Loss(3), x[idx], idx)
    gen2, lat2, og2, oz2 = problem()
    ddp = gd.wrap_ddp(gen2, gd.World(world_size=2, device=torch.device("cuda:0")))  # DDP on the 1-rank group
    distributed_glo_step(ddp, lat2, og2, oz2, Lap1Loss(3), x[idx], idx, gd.World(device=torch.device("cuda:0")))
    print("DDP GLO step on NCCL equals glo_step:", type(ddp).__name__,
          torch.allclose(lat.weight, lat2.weight, atol=1e-5),
          all(torch.allclose(a, b, atol=1e-5) for a, b in zip(gen.parameters(), gen2.parameters())))
    gd.destroy()


def check_glo() -> None:
    from torch import nn

    from glann.glo import RowAdam
    from glann.glo_dist import distributed_glo_step
    from glann.losses import Lap1Loss
    from glann.nets import Generator, GeneratorArch
    from glann.runtime import adam

    for batch in (128, 512):
        for prec in ("fp32", "bf16"):
            torch.manual_seed(0)
            gen = Generator(GeneratorArch(latent_dim=64, image_size=28, channels=1, hidden_dim=1024,
                                          base_channels=64)).cuda()
            lat = nn.Embedding(60_000, 64, sparse=True).cuda()
            og, oz = adam(gen.parameters(), 1e-3, (0.5, 0.999)), RowAdam(lat.parameters(), 1e-2, (0.5, 0.999))
            x = torch.rand(60_000, 1, 28, 28, device="cuda")
            loss = Lap1Loss(4)

            def step(batch=batch, prec=prec, gen=gen, lat=lat, og=og, oz=oz, loss=loss, x=x):
                idx = torch.randint(0, 60_000, (batch,), device="cuda")
                with torch.autocast("cuda", torch.bfloat16, enabled=prec == "bf16"):
                    distributed_glo_step(gen, lat, og, oz, loss, x[idx], idx)
            s = timed(step, 30)
            print(f"GLO step batch {batch} {prec}: {batch / s:.0f} img/s")


def check_ranks() -> None:
    from glann import distributed as gd
    from glann.errors import ConfigError

    try:
        gd.init_world("auto")
        print("ranks: no error (unexpected)")
    except ConfigError as e:
        print(f"ranks: ConfigError: {e}")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what == "ranks":
        check_ranks()
    else:
        for name, fn in (("search", check_search), ("nccl", check_nccl), ("glo", check_glo)):
            if what in ("all", name):
                t0 = time.time()
                try:
                    fn()
                except Exception as e:  # noqa: BLE001 - report and go on to the next check
                    import traceback
                    traceback.print_exc()
                    print(f"{name}: FAILED: {type(e).__name__}: {e}")
                print(f"[{name} took {time.time() - t0:.0f} s]", flush=True)
