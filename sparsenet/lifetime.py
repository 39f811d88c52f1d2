"""Processes that end with the process that started them (Linux): a sweep point's ``dvc exp run`` and its stages.

A sweep point runs ``python -m sparsenet.lifetime python -m dvc exp run …`` from its Ray worker,
with :data:`ENV` set: if the worker dies (its node is removed, the driver of a local instance is
killed), the kernel kills ``dvc`` at once, and each stage, which :func:`sparsenet.stage.run_stage`
has tied to ``dvc`` the same way, with it — nothing trains on for a point no one will publish.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

ENV = "SPARSENET_DIE_WITH_PARENT"  # set: a stage ends with the process that started it
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent() -> None:
    """Have the kernel send SIGKILL to this process when its parent ends (a no-op without prctl)."""
    parent = os.getppid()
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0 and os.getppid() != parent:
        os._exit(1)  # the parent ended before the request took hold


def main() -> None:
    """``python -m sparsenet.lifetime COMMAND ARG…``: run COMMAND in this process, tied to its parent."""
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m sparsenet.lifetime COMMAND [ARG …]")
    die_with_parent()
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
