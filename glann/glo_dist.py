"""GLO with N ranks: the generator under DDP, the per-image latent table replicated on every rank.

The latent table cannot go through DDP: it has sparse row gradients (one row per image of the batch), and NCCL
cannot all-reduce sparse tensors. Each rank instead all-gathers the rows its batch touched and their gradients,
and every rank applies the identical row-wise optimiser step (``glann.glo.RowAdam``) to the union of rows, so the
tables stay equal on all ranks without ever being sent whole.

Why a replicated table rather than rank-owned shards (each rank owning the latents of its share of the images,
shuffled only within that share):

- the N-rank step is the single-process step on the global batch (checked to 1e-5 in tests/test_glo_dist.py),
  and the global batch is drawn from the whole dataset, not as N draws from N fixed shards;
- checkpoints do not depend on the world size: rank 0's table is the full table, saved in today's format, so a
  run started on 2 ranks resumes on 1 and the other way round with no resharding; IMLE needs every latent on
  every rank anyway (the matching's queries);
- the traffic per step is the batch's rows only, B x N x (d + 1) numbers, tiny next to the generator's gradient
  all-reduce.
The cost is memory: every rank holds the table and its two Adam moments, 12 d bytes per image (d = 64: 54 MB for
70k images, 0.9 GB for 1.2M, 7.7 GB for 10M), which fits next to the generator on any current GPU.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from glann import distributed as gd
from glann.distributed import World


def perturbed(codes: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """The codes the generator decodes in a training step: ``normalize(z + noise)``, still on the unit sphere (the
    only codes it decodes at sampling time), or ``z`` itself without noise."""
    return codes if noise is None else F.normalize(codes + noise, dim=1)


def distributed_glo_step(gen: nn.Module, latents: nn.Embedding, opt_g: torch.optim.Optimizer,
                         opt_z: torch.optim.Optimizer, loss_fn: nn.Module, x: torch.Tensor, idx: torch.Tensor,
                         world: World | None = None,
                         autocast: contextlib.AbstractContextManager | None = None,
                         noise: torch.Tensor | None = None) -> float:
    """One GLO step on this rank's share (``x``, ``idx``) of a global batch; returns the global batch's loss.

    ``gen`` is the generator under DDP (``glann.distributed.wrap_ddp``): backward averages its gradients over
    ranks. ``latents`` is the replicated table, ``opt_z`` its row-wise optimiser (RowAdam, SparseAdam or plain
    SGD: anything that takes a sparse gradient). Every rank's share must have the same size
    (``glann.distributed.shard``): then the averaged generator gradient, and the gathered latent gradients divided
    by the world size, are exactly the gradients of the global batch's mean loss, and every rank applies the same
    update to the same rows. Rows are projected back onto the unit sphere, as in ``glann.glo.glo_step``.

    A non-finite global loss updates nothing on any rank (the ranks agree on it before backward, so none waits
    in DDP's all-reduce for a peer that skipped it). BatchNorm layers see only the rank's share, so with
    ``batch_norm=True`` the step is not the global-batch step (torch's SyncBatchNorm would fix that on GPUs; in
    torch 2.14 it refuses CPU tensors). ``noise`` is this rank's share of the global batch's code noise
    (``glann.glo.code_noise``, sharded like the batch).
    """
    world = world or gd.current_world()
    z = latents.weight[idx].detach().requires_grad_(True)
    with autocast or contextlib.nullcontext():  # the generator's forward pass (bf16 with glo.precision=bf16)
        out = gen(perturbed(z, noise))
    local = loss_fn(out.float(), x).mean()
    loss = gd.all_reduce_mean(local.detach())
    if not torch.isfinite(loss):
        return float(loss.item())
    opt_g.zero_grad(set_to_none=True)
    opt_z.zero_grad(set_to_none=True)
    local.backward()
    rows = gd.all_gather_tensor(idx)
    assert z.grad is not None
    grads = gd.all_gather_tensor(z.grad / world.world_size)
    latents.weight.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), grads, latents.weight.shape,
                                                    check_invariants=False)
    opt_g.step()
    opt_z.step()
    with torch.no_grad():
        latents.weight[rows] = F.normalize(latents.weight[rows], dim=1)
    return float(loss.item())
