"""Atomic file writes and checkpoint save/load (always ``weights_only=True``)."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from sparsenet.errors import SparseNetError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _new_file_mode())  # mkstemp makes it private (0600); give it a new file's mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _new_file_mode() -> int:
    """The mode ``open()`` would give a new file: 0666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty side folder that replaces the folder ``path`` only if the block succeeds.

    For tools that write many files (dvclive): a kill leaves the old folder or the complete new
    one, never a mix (for the instant of the swap the old one is at ``.<name>.old``).
    """
    path = Path(path)
    partial, old = path.with_name(f".{path.name}.partial"), path.with_name(f".{path.name}.old")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(partial, path)
    shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SparseNetError(f"{path}: not found (run the stage that writes it first: dvc repro)")
    return json.loads(path.read_text(encoding="utf-8"))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save a plain state dict (tensors and plain Python values) atomically.

    Serialised in memory first: torch names the archive after the file it writes, and a temporary
    file name would make identical models differ byte for byte.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise SparseNetError(f"{path}: checkpoint not found (run the stage that writes it first: dvc repro)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise SparseNetError(f"{path}: not a SparseNet checkpoint (not a torch file, or one holding objects other "
                             "than tensors and plain values, which are never unpickled)") from None
    except Exception as exc:  # torch raises many types for corrupt / foreign files
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SparseNetError(f"{path}: not a readable SparseNet checkpoint ({type(exc).__name__}: {first_line})") from None
