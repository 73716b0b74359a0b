"""Stage 2, IMLE (Li & Malik 2018) in GLO's latent space: a mapper from Gaussian noise to latents such
that every data latent has a nearby generated latent.

Each round draws m*N noise vectors, maps them, finds for every data latent its exact nearest generated
latent (faiss), then trains the mapper to pull those matched outputs onto the data latents for
``epochs_per_round`` epochs. Writes ``mapper/``, ``stats.jsonl``, ``grids/`` and ``state/last.pt`` (and
``mixture.json``, the EM fit's record, with ``imle.mapper.mixture``).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from glann import artifacts
from glann import distributed as gd
from glann.config import IMLEConfig
from glann.distributed import World
from glann.errors import ConfigError
from glann.files import write_json
from glann.knn import knn_backend, nearest_neighbors, nearest_neighbors_distributed
from glann.matching import MatchResult, check_state, select
from glann.mixture import fit_mixture
from glann.nets import Mapper, MapperArch
from glann.runtime import NO_STOP, StopFlag, adam
from glann.tracking import Tracker
from glann.training import LoopOptions, Schedule, fit

log = logging.getLogger(__name__)


@torch.no_grad()
def map_noise(mapper: nn.Module, noise: torch.Tensor, device: torch.device, batch_size: int = 8192,
              out: torch.device | None = None) -> torch.Tensor:
    """The mapper's float32 outputs for ``noise``, run on ``device`` in batches, returned on ``out`` (the CPU by
    default; the GPU for a search there, so the samples never leave it)."""
    out = torch.device("cpu") if out is None else out
    was_training = mapper.training
    mapper.eval()
    mapped = torch.cat([mapper(noise[s:s + batch_size].to(device)).float().to(out)
                        for s in range(0, len(noise), batch_size)])
    mapper.train(was_training)
    return mapped


def matching_round(mapper: nn.Module, latents: torch.Tensor, num_samples: int, noise_dim: int,
                   rng: torch.Generator, device: torch.device, knn_device: str = "auto"):
    """Draw noise, map it, and for each data latent return (matched noise, NN distance): the ``nearest`` rule."""
    noise = torch.randn(num_samples, noise_dim, generator=rng)
    generated = map_noise(mapper, noise, device)
    idx, dist = nearest_neighbors(generated, latents, device=knn_device)
    return noise[idx], dist


def match_device(knn_device: str, device: torch.device) -> torch.device:
    """Where the matching search runs: on the training GPU unless ``imle.knn_device=cpu`` (or cuda asked for)."""
    if knn_device == "cpu":
        return torch.device("cpu")
    if knn_device.startswith("cuda"):
        return torch.device(knn_device)
    return device if device.type == "cuda" else torch.device("cpu")


def select_round(mapper: nn.Module, latents: torch.Tensor, cfg: IMLEConfig, rnd: int, rng: torch.Generator,
                 device: torch.device, state: dict) -> tuple[MatchResult, dict]:
    """One round's matching under ``cfg.matching``: draw m*N noise from ``rng``, map it, and pick for each data
    latent the noise it trains on (see :mod:`glann.matching`). Returns the selection and the rule's new state."""
    n = len(latents)
    noise = torch.randn(cfg.samples_per_latent * n, cfg.noise_dim, generator=rng)
    search_on = match_device(cfg.knn_device, device)  # every rule searches there: no CPU faiss in a GPU run
    generated = map_noise(mapper, noise, device, out=search_on)
    if cfg.matching == "nearest":  # the classic rule, through the knn device the config names
        idx, dist = nearest_neighbors(generated, latents.to(search_on), device=cfg.knn_device)
        idx, dist = idx.cpu(), dist.cpu()
        return MatchResult(idx, dist, noise[idx], {}), {}
    return apply_rule(mapper, generated, latents.to(search_on), noise, cfg, rnd, device, state)


def apply_rule(mapper: nn.Module, generated: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor,
               cfg: IMLEConfig, rnd: int, device: torch.device, state: dict) -> tuple[MatchResult, dict]:
    """``cfg.matching``'s selection (not ``nearest``'s fast path) of this round's ``generated`` samples, made from
    ``noise`` (its first ``len(generated)`` rows), for the data ``latents``; ``adaptive`` maps its held noise again."""
    current = map_noise(mapper, state["noise"], device) if cfg.matching == "adaptive" and state else None
    return select(cfg.matching, generated, latents, noise[:len(generated)], state=state, rnd=rnd, current=current,
                  eps=cfg.rejection_eps, gamma=cfg.adaptive_gamma, resample_every=cfg.adaptive_resample_every,
                  quantile=cfg.rejection_quantile, cap=cfg.capacity, k=cfg.capacity_k)


class IMLEStage:
    """IMLE as the shared training loop (:func:`glann.training.fit`) sees it: a round matches every data latent to
    its nearest generated latent, then trains the mapper on those pairs for ``epochs_per_round`` epochs."""

    name, unit, count_key, mid_unit_checkpoints = "imle", "round", "rounds", False  # a stopped round restarts

    def __init__(self, latents: torch.Tensor, cfg: IMLEConfig, out_dir: Path, device: torch.device, seed: int = 0,
                 generator: nn.Module | None = None, world: World | None = None):
        self.latents = latents.float().cpu()
        self.cfg, self.out_dir, self.device, self.seed, self.generator = cfg, Path(out_dir), device, seed, generator
        self.world = world or World(device=device)
        self.num_units = cfg.rounds
        n, dim = self.latents.shape
        torch.manual_seed(seed + 1)  # the init must not depend on whether GLO ran in this process
        self.net = Mapper(MapperArch.of(cfg.mapper, cfg.noise_dim, dim)).to(device)
        self.mapper = gd.wrap_ddp(self.net, self.world)  # itself with one rank
        self.opt = adam(self.mapper.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        # The moving average only ever leaves the stage as its export: matching always uses the trained mapper, as
        # IMLE's objective is about the samples of the network being trained.
        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema)) if cfg.ema > 0 else None
        self.grid_noise = torch.randn(64, cfg.noise_dim, generator=torch.Generator().manual_seed(seed + 17))
        self.target = self.latents.to(device)
        ranks = self.world.world_size  # several ranks: global batches of batch_size per rank, remainder dropped
        self.batches_per_epoch = math.ceil(n / cfg.batch_size) if ranks == 1 else n // (cfg.batch_size * ranks)
        backend = knn_backend(match_device(cfg.knn_device, device))
        if cfg.rounds:  # imle.rounds=0 (a mixture mapper alone) matches nothing
            log.info("imle: %s matching, exact search with %s%s", cfg.matching, backend,
                     " (faiss is not installed: pip install 'glann[cpu]' adds faiss's CPU search)"
                     if backend == "torch-cpu" else "")
        self.match_state: dict = {}  # the matching rule's state across rounds (adaptive: radii, matched noise)

    def optimizers(self) -> list[tuple[torch.optim.Optimizer, float]]:
        return [(self.opt, self.cfg.lr)]

    def state_dict(self) -> dict:
        ema = {"ema": self.ema.state_dict()} if self.ema is not None else {}
        return {"mapper": self.net.state_dict(), "opt": self.opt.state_dict(), "matching": self.cfg.matching,
                "match_state": self.match_state, **ema}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["mapper"])
        self.opt.load_state_dict(state["opt"])
        self.match_state = state.get("match_state", {})
        if self.ema is not None:  # a checkpoint under another imle.ema is refused before this (settings digest)
            self.ema.load_state_dict(state["ema"])
        if self.cfg.matching == "adaptive":
            check_state(self.match_state, len(self.latents), self.cfg.noise_dim, self.out_dir / "state" / "last.pt")

    def init_fresh(self) -> None:
        """A mixture mapper starts from the Gaussian mixture of the data latents: fitted once (on rank 0, then sent
        to every rank) before the first round. A resumed stage reads it back from its checkpoint instead."""
        k = self.cfg.mapper.mixture
        if not k:
            return
        fitted = None
        if self.world.is_main:
            log.info("imle: fitting a %d-component Gaussian mixture to %d latents (EM, full covariances)", k,
                     len(self.latents))
            fitted = fit_mixture(self.latents, k, seed=self.seed)
            log.info("imle: mixture fitted in %.0fs (%d EM iterations%s)", fitted.seconds, fitted.iterations,
                     "" if fitted.converged else ", not converged")
            write_json(self.out_dir / "mixture.json", {"components": k, "codes": len(self.latents),
                                                       "em_iterations": fitted.iterations,
                                                       "converged": fitted.converged, "seconds": fitted.seconds})
        if self.world.distributed:
            fitted = gd.broadcast_object(fitted)
        assert fitted is not None
        self.net.set_mixture(fitted.weights, fitted.means, fitted.covariances)

    def steps_in(self, unit: int) -> int:
        return self.cfg.epochs_per_round * self.batches_per_epoch

    def begin(self, unit: int) -> None:
        n, cfg = len(self.latents), self.cfg
        rng = torch.Generator().manual_seed(self.seed * 100003 + unit)
        t0 = time.perf_counter()
        if self.world.distributed and cfg.matching == "nearest":  # each rank maps and searches its share
            result = self._match_sharded(rng)
        elif self.world.distributed:
            result = self._select_gathered(unit, rng)
        else:
            result, self.match_state = select_round(self.net, self.latents, cfg, unit, rng, self.device,
                                                    self.match_state)
        self.match_seconds = time.perf_counter() - t0
        assert result.noise is not None
        self.dist, self.match_stats = result.distance, result.stats
        self.matched = result.noise.to(self.device)
        self.perms = [torch.randperm(n, generator=rng).to(self.device) for _ in range(cfg.epochs_per_round)]
        self.mapper.train()

    def _match_sharded(self, rng: torch.Generator) -> MatchResult:
        noise, generated = self._map_my_share(rng)
        # Global sample indices: the ranks' shares are consecutive from 0, so index i is noise[i].
        idx, dist, _ = nearest_neighbors_distributed(generated, self.latents.to(self.device), self.world)
        idx = idx.cpu()
        return MatchResult(idx, dist.cpu(), noise[idx], {})

    def _map_my_share(self, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The round's m*n noise (the same on every rank) and this rank's share of it mapped, on the device."""
        cfg = self.cfg
        noise = torch.randn(cfg.samples_per_latent * len(self.latents), cfg.noise_dim, generator=rng)
        return noise, map_noise(self.net, noise[gd.shard(len(noise), self.world)], self.device, out=self.device)

    def _select_gathered(self, unit: int, rng: torch.Generator) -> MatchResult:
        """Several ranks, a rule other than ``nearest``: each rank maps its share of the m*n noise, the shares are
        all-gathered, and rank 0 runs the rule on all of them, exactly as one process does, then sends every rank
        its selection and the rule's new state (so every rank trains on the same pairs and checkpoints one state).
        A rule's error on rank 0 (e.g. every sample rejected) is raised on every rank."""
        cfg = self.cfg
        search_on = match_device(cfg.knn_device, self.device)
        noise, mapped = self._map_my_share(rng)
        generated = gd.all_gather_tensor(mapped).to(search_on)  # rank order: row i is noise[i]
        outcome: tuple[MatchResult, dict] | ConfigError | None = None
        if self.world.is_main:
            try:
                outcome = apply_rule(self.net, generated, self.latents.to(search_on), noise, cfg, unit, self.device,
                                     self.match_state)
            except ConfigError as e:  # e.g. AllRejected: every rank stops with it, none waits for the others
                outcome = e
        outcome = gd.broadcast_object(outcome)
        if isinstance(outcome, ConfigError):
            raise outcome
        assert outcome is not None
        result, self.match_state = outcome
        return result

    def step(self, unit: int, i: int) -> tuple[float, int]:
        epoch, b = divmod(i, self.batches_per_epoch)
        bs, ranks = self.cfg.batch_size, self.world.world_size
        idx = self.perms[epoch][b * bs * ranks:(b + 1) * bs * ranks][gd.shard(bs * ranks, self.world)] if ranks > 1 \
            else self.perms[epoch][b * bs:(b + 1) * bs]
        loss = (self.mapper(self.matched[idx]) - self.target[idx]).pow(2).sum(1).mean()
        check = gd.all_reduce_mean(loss.detach()) if ranks > 1 else loss  # every rank stops on a NaN together
        if not torch.isfinite(check):
            return check.item(), len(idx)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        return loss.item(), len(idx)

    def end(self, unit: int) -> dict[str, float]:
        extra = {f"imle/{k}": v for k, v in self.match_stats.items() if k not in ("nn_dist", "nn_dist_max")}
        return {"imle/nn_dist": self.dist.mean().item(), "imle/nn_dist_max": self.dist.max().item(),
                "imle/lr": self.opt.param_groups[0]["lr"], "imle/match_seconds": self.match_seconds, **extra}

    @torch.no_grad()
    def snapshot(self, unit: int) -> dict[str, tuple[torch.Tensor, int]]:
        if self.generator is None:
            return {}
        codes = map_noise(self.exported(), self.grid_noise, self.device)
        return {"samples": (self.generator(codes.to(self.device)), 8)}

    def exported(self) -> Mapper:
        """The mapper the sampler gets: the moving average of the weights with ``imle.ema``, else the mapper."""
        return cast(Mapper, self.ema.module) if self.ema is not None else self.net

    def export(self) -> None:
        artifacts.save_network(self.out_dir / "mapper", self.exported().eval())


def train_imle(latents: torch.Tensor, cfg: IMLEConfig, out_dir: Path, device: torch.device, seed: int = 0,
               generator: nn.Module | None = None, stop: StopFlag = NO_STOP, progress: bool = True,
               resume_key: str = "", tracker: Callable[[int], Tracker] | None = None, log_every: int = 50,
               world: World | None = None) -> dict:
    """Train the IMLE mapper onto the data ``latents`` (N, d) in ``out_dir`` (or resume it from its checkpoint).

    Writes ``mapper/`` (the artifact the sampler reads), ``stats.jsonl`` (one row per round: NN distances, loss,
    lr, matching time), ``grids/samples_*.png`` when ``generator`` is given, and the training state, saved after
    every round. Returns the last round's ``imle/*`` metrics.
    """
    schedule = Schedule(lr_decay_every=cfg.lr_decay_every, lr_decay=cfg.lr_decay, grid_every=cfg.grid_every,
                        checkpoint_every=1, checkpoint_minutes=math.inf, lr_hint="imle.lr")
    stage = IMLEStage(latents, cfg, out_dir, device, seed, generator, world)
    metrics = fit(stage, out_dir, schedule, LoopOptions(stop=stop, progress=progress, resume_key=resume_key,
                                                       tracker=tracker, log_every=log_every, world=stage.world))
    if cfg.rounds == 0:  # the mixture alone: its samples' distances to the data, as a round would have logged them
        rng = torch.Generator().manual_seed(stage.seed * 100003)
        _, dist = matching_round(stage.net, stage.latents, cfg.samples_per_latent * len(stage.latents),
                                 cfg.noise_dim, rng, device, cfg.knn_device)
        metrics = {"imle/nn_dist": dist.mean().item(), "imle/nn_dist_max": dist.max().item()}
        log.info("imle: the mixture's samples lie %.4f from the data latents (mean nearest distance)",
                 metrics["imle/nn_dist"])
    return metrics
