"""Artifacts on disk: atomic writes, network folders (config.json + safetensors), training state,
stage manifests and config hashes.

Nothing here unpickles code: weights are safetensors, configs JSON, and training state is read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import glann
from glann import nets
from glann.errors import ArtifactError

MANIFEST = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash (or a full disk) at any point leaves either the old file or the new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; artifacts follow the umask like any file
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(folder: Path, recursive: bool = True) -> int:
    """Delete temporary files that a killed ``atomic_write`` left behind in ``folder``."""
    count = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for tmp in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        tmp.unlink(missing_ok=True)
        count += 1
    return count


def write_json(path: Path, obj: Any) -> Path:
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    return atomic_write(path, lambda p: p.write_bytes(data))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"missing file {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"corrupt JSON file {path}: {e}") from None


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able config (key order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- network folders -------------------------------------------------------------------------------

def save_network(folder: Path, module: nn.Module) -> Path:
    """Write ``config.json`` (class + arch) and ``model.safetensors`` into ``folder``."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda p: save_file(state, str(p)))
    write_json(folder / "config.json", {**nets.arch_dict(module), "glann_version": glann.__version__})
    return folder


def load_network(folder: Path, device: str | torch.device = "cpu") -> nn.Module:
    folder = Path(folder)
    spec = read_json(folder / "config.json")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ArtifactError(f"missing weights {weights}")
    try:
        module = nets.build(spec)
    except (ValueError, TypeError, KeyError) as e:
        raise ArtifactError(f"{folder / 'config.json'}: {e}") from None
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
                                                  "glann_version": glann.__version__, **extra})


def completed(stage_dir: Path, config_digest: str) -> Optional[dict]:
    """The stage's manifest if the stage finished with this config hash, else None."""
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = read_json(path)
    except ArtifactError:
        return None
    return manifest if manifest.get("config_hash") == config_digest else None
