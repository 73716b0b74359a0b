"""Fixtures: tiny configs composed through Hydra's compose API, exactly as the apps compose them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from glann.cli import config_dir, setup
from glann.config import TrainConfig, validate

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GLANN_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that sets torch's thread count (to 1 for its tiny networks, or through ``num_threads``) must not
    leave every later test in this process on that count."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def compose_train(*overrides: str) -> TrainConfig:
    """Compose conf/train.yaml with overrides into a validated TrainConfig."""
    setup()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        # Tests keep their stages in their own folders unless they ask for the shared cache.
        cfg = compose(config_name="train", overrides=["cache_dir=null", *overrides])
    return validate(OmegaConf.to_object(cfg))


@pytest.fixture
def tiny_cfg() -> TrainConfig:
    return compose_train("debug=tiny")


def _cli_command(module: str, args: tuple[str, ...], env: dict | None) -> tuple[list[str], dict]:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return [sys.executable, "-m", f"glann.{module}", *args], full_env


def run_cli(module: str, *args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m glann.<module> args`` as a user would, capturing output."""
    cmd, full_env = _cli_command(module, args, env)
    return subprocess.run(cmd, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def run_clis(*calls: tuple[str, ...], timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Run independent app invocations (``("train", "debug=tiny", ...)``, module first) at the same time, as
    :func:`run_cli` runs one: most of each is interpreter and torch start-up, which overlaps on several cores."""
    procs = []
    for module, *args in calls:
        cmd, full_env = _cli_command(module, tuple(args), None)
        procs.append((cmd, subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)))
    results = []
    for cmd, p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(cmd, p.returncode, out, err))
    return results


@pytest.fixture
def sampler():
    """A tiny untrained sampler (4-d noise, 8-d latents, 16x16 grey images) whose BatchNorm has non-trivial
    running statistics."""
    from glann.nets import Generator, GeneratorArch, Mapper, MapperArch
    from glann.sampler import GlannSampler

    torch.manual_seed(0)
    mapper = Mapper(MapperArch(noise_dim=4, latent_dim=8, hidden_dim=16))
    gen = Generator(GeneratorArch(latent_dim=8, image_size=16, channels=1, hidden_dim=16, base_channels=4))
    gen.train()
    gen(torch.randn(32, 8))
    return GlannSampler(mapper, gen)
