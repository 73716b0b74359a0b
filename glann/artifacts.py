"""Artifacts on disk: network folders (config.json + safetensors), tensor files, training state and stage
manifests, all written through :func:`glann.files.atomic_write`.

Nothing here unpickles code: weights are safetensors, configs JSON, and training state is read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from glann import nets
from glann.errors import ArtifactError
from glann.files import atomic_write, read_json, write_json
from glann.version import __version__

MANIFEST = "manifest.json"
M = TypeVar("M", bound=nn.Module)


# -- network folders -------------------------------------------------------------------------------

def save_network(folder: Path, module: nets.Generator | nets.Mapper) -> Path:
    """Write ``config.json`` (class + arch) and ``model.safetensors`` into ``folder``."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda p: save_file(state, str(p)))
    write_json(folder / "config.json", {**nets.arch_dict(module), "glann_version": __version__})
    return folder


def load_network(folder: Path, device: str | torch.device = "cpu", kind: type[M] = nn.Module) -> M:  # type: ignore[assignment]
    """Rebuild the network saved in ``folder`` (a class from glann's fixed registry) and load its weights; with
    ``kind``, refuse a folder that holds another kind of network."""
    folder = Path(folder)
    spec = read_json(folder / "config.json")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ArtifactError(f"missing weights {weights}")
    try:
        module = nets.build(spec)
    except (ValueError, TypeError, KeyError) as e:
        raise ArtifactError(f"{folder / 'config.json'}: {e}") from None
    if not isinstance(module, kind):
        raise ArtifactError(f"{folder} holds a {type(module).__name__}, not a {kind.__name__}")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"corrupt weights file {weights}: {e}") from None
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ArtifactError(f"{weights} does not match {folder / 'config.json'}: {e}") from None
    return module.to(device).eval()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p)))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise ArtifactError(f"missing file {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"corrupt tensor file {path}: {e}") from None


# -- training state --------------------------------------------------------------------------------

def save_state(path: Path, state: dict) -> Path:
    return atomic_write(path, lambda p: torch.save(state, p))


def load_state(path: Path) -> dict:
    """Load a training-state checkpoint without executing code (``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ArtifactError(f"missing checkpoint {path}") from None
    except Exception as e:  # UnpicklingError, RuntimeError (truncated zip), EOFError...
        raise ArtifactError(f"cannot load checkpoint {path} safely ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); delete it to restart the stage") from None


def check_resume_key(state: dict, resume_key: str, path: Path) -> None:
    if state.get("resume_key", "") != resume_key:
        raise ArtifactError(f"checkpoint {path} was written with other settings (key {state.get('resume_key')!r}, "
                            f"now {resume_key!r}); delete {Path(path).parent} to retrain this stage, or use a new "
                            "run folder")


# -- stage manifests -------------------------------------------------------------------------------

def write_manifest(stage_dir: Path, config_digest: str, inputs: dict, **extra: Any) -> Path:
    """Written last: its presence (with a matching hash) marks the stage complete."""
    return write_json(Path(stage_dir) / MANIFEST, {"config_hash": config_digest, "inputs": inputs,
                                                  "glann_version": __version__, **extra})


def completed(stage_dir: Path, config_digest: str) -> dict | None:
    """The stage's manifest if the stage finished with this config hash, else None."""
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = read_json(path)
    except ArtifactError:
        return None
    return manifest if manifest.get("config_hash") == config_digest else None
