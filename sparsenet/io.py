"""Durable atomic outputs (files and whole folders), JSON and CSV helpers.

A file is written to a temporary name beside its target, flushed to disk (``fsync``), renamed
over the target, and the folder holding it is flushed too: a kill or a power cut at any moment
leaves the old file or the new one, never a torn one.  Temporary files are created with mode
0666 and the kernel applies the process's umask, as for any new file; the umask itself is never
changed (changing it, even for an instant, races with other threads).
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import os
import re
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from sparsenet.errors import SparseNetError


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a folder's data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) * Path(path).is_dir())
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (deepest first), then ``root`` itself."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


def make_dirs(folder: Path) -> None:
    """``mkdir -p`` that also flushes each new folder's entry in its parent to disk."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)
        fsync_path(new.parent)


def _new_temp_file(path: Path) -> Path:
    """Create an empty, unique temporary file beside ``path`` with a new file's usual mode."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise SparseNetError(f"{path.parent}: cannot create a temporary file for {path.name}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` durably only if the block succeeds."""
    path = Path(path)
    make_dirs(path.parent)
    tmp = _new_temp_file(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


_RENAME_EXCHANGE = 2  # from <linux/fs.h>


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    # int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags)
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _side(path: Path, kind: str) -> Path:
    """A new name beside ``path`` for one writer's side folder: unique, and naming the writer's host
    and process, so a later writer can tell an abandoned one from one still being written."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.{kind}")


def _remove_abandoned(path: Path) -> None:
    """Delete the side folders of ``path`` left by writers of this host whose process is gone (killed)."""
    name, host = re.escape(path.name), re.escape(socket.gethostname())
    pattern = re.compile(rf"\.{name}\.{host}\.(\d+)\.[0-9a-f]{{8}}\.(partial|old)")
    for side in path.parent.iterdir():
        match = pattern.fullmatch(side.name)
        if match is None:
            continue
        try:
            os.kill(int(match[1]), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(side, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty side folder that replaces the folder ``path`` whole, only if the block succeeds.

    For outputs of many files (the prepared arrays, dvclive logs): a kill leaves the old folder or
    the complete new one, never a mix.  On Linux the two folders are swapped in one atomic step;
    elsewhere the old one is moved aside for the instant of the swap.  Each writer has side folders
    of its own (two writers at once do not share one: the last to finish wins); those of a killed
    writer are deleted by the next writer on the same host.
    """
    path = Path(path)
    make_dirs(path.parent)
    _remove_abandoned(path)
    partial, old = _side(path, "partial"), _side(path, "old")
    partial.mkdir()
    try:
        yield partial
        _fsync_tree(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if path.is_dir() and _exchange(partial, path):
        fsync_path(path.parent)
        if partial.is_symlink():  # the old ``path`` was a link to a folder
            partial.unlink()
        shutil.rmtree(partial, ignore_errors=True)  # now holds the old folder
        return
    if path.exists() or path.is_symlink():
        os.replace(path, old)
    os.replace(partial, path)
    fsync_path(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """``rows`` as CSV under a header of ``columns`` (a row's other keys are an error)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SparseNetError(f"{path}: not found (run the stage that writes it first: dvc repro)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SparseNetError(f"{path}: not valid JSON ({exc})") from None
