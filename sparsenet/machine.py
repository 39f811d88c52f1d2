"""The machine a timing was measured on, and the cores a process may use."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def cpu_name() -> str:
    """The processor's model name (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, and its cgroup's CPU quota where one is set
    (as in a container); the machine's count where the platform knows neither."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cores


def code_commit() -> str:
    """The checked-out commit of the project this package runs from, ``+changes`` when its code
    (``sparsenet/``, ``stages/``) differs from it; ``unknown`` outside a git checkout: what a
    benchmark measured."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "sparsenet", "stages"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def machine(device: object = "cpu") -> dict:
    """Processor, usable cores, torch's threads, device, platform and torch version."""
    import torch  # here, not at the top: the sweep driver asks for cores without loading torch

    return {"processor": cpu_name(), "cores": usable_cores(), "threads": torch.get_num_threads(),
            "device": str(device), "platform": platform.platform(), "torch": torch.__version__}
