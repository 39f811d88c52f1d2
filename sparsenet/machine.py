"""What a timing needs beside it: the machine it was measured on."""

from __future__ import annotations

import os
import platform

import torch


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


def machine(device: torch.device | str = "cpu") -> dict:
    """Processor, cores this process may use, torch's threads, device, platform and torch version."""
    return {"processor": cpu_name(), "cores": len(os.sched_getaffinity(0)), "threads": torch.get_num_threads(),
            "device": str(device), "platform": platform.platform(), "torch": torch.__version__}
