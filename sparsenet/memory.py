"""How much memory this process can still allocate, and the check before holding arrays in it."""

from __future__ import annotations

import resource
from pathlib import Path

import psutil

from sparsenet.errors import SparseNetError


def available_memory() -> int | None:
    """Bytes this process can still allocate (None if unknown): the least of the machine's
    available memory (``psutil.virtual_memory``), the process's data and address-space limits
    (``ulimit -d`` / ``-v``) and its cgroup's limit — the last two psutil does not look at."""
    candidates = [psutil.virtual_memory().available]
    used = psutil.Process().memory_info()
    # Linux counts data + stack in ``data``: a little more than RLIMIT_DATA charges, so the room
    # found is, if anything, too small.
    for limit, in_use in ((resource.RLIMIT_DATA, getattr(used, "data", None)), (resource.RLIMIT_AS, used.vms)):
        soft = resource.getrlimit(limit)[0]
        if soft != resource.RLIM_INFINITY and in_use is not None:
            candidates.append(max(soft - in_use, 0))
    candidates.extend(_cgroup_room())
    return min(candidates) if candidates else None


def _cgroup_room() -> list[int]:
    """Memory left under this process's cgroup (v2) limit, if it has one."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as fh:
            path = next((line.strip()[3:] for line in fh if line.startswith("0::")), None)
        if path is None:
            return []
        folder = Path("/sys/fs/cgroup") / path.lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return []
        return [max(int(limit) - int((folder / "memory.current").read_text()), 0)]
    except (OSError, ValueError):
        return []


def check_memory(images: int, channels: int, image_size: int) -> None:
    """Stop with one line before holding ``images`` uint8 arrays of C×S×S that cannot fit in memory
    (a dataset collected in memory; ``prepare`` writes to disk and checks the disk instead)."""
    needed = images * channels * image_size * image_size
    available = available_memory()
    if available is not None and needed > available:
        raise SparseNetError(
            f"data.image_size = {image_size}: the prepared arrays would take {needed / 2**30:,.1f} GiB "
            f"({images:,} images of {channels}x{image_size}x{image_size}), more than the "
            f"{available / 2**30:,.1f} GiB of memory available; lower data.image_size or use fewer images")
