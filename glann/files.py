"""The dependency-free bottom layer: atomic writes, JSON files, config hashes and writable-path checks.

Everything that writes an artifact goes through :func:`atomic_write`, so a crash (or a full disk) leaves
either the old file or the new one, never a mix.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glann.errors import ArtifactError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``."""
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
    """Delete temporary files that a killed :func:`atomic_write` left behind in ``folder``."""
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


def writable_problem(target: Path) -> str | None:
    """Why ``target`` (a folder, or a file's folder, existing or not) cannot be written; None when it can.

    Walks up to the nearest existing ancestor and tries to create a temporary file there.
    """
    probe = Path(target).expanduser().absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        return f"cannot write to {probe} ({e.strerror})"
    return None
