"""Running one pipeline step as a process: params in, one error line out, the project's paths."""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sparsenet.config import Config, load_config
from sparsenet.errors import one_line_errors
from sparsenet.lifetime import ENV, die_with_parent


@dataclass(frozen=True)
class Paths:
    """Where every step reads and writes, relative to the project root (the working directory)."""

    prepared: Path = Path("data/prepared")
    dense_model: Path = Path("models/dense.pt")
    dense_history: Path = Path("models/dense_history.pt")
    sparse_model: Path = Path("models/sparse.pt")
    compact_model: Path = Path("models/compact.pt")
    packed_model: Path = Path("models/packed.pt")
    compressed_model: Path = Path("models/compressed.pt")
    control_model: Path = Path("models/control.pt")
    small_model: Path = Path("models/small.pt")
    dense_log: Path = Path("logs/train_dense")
    prune_log: Path = Path("logs/prune_train")
    control_log: Path = Path("logs/train_control")
    small_log: Path = Path("logs/train_small")
    metrics: Path = Path("metrics/evaluate.json")
    speed: Path = Path("metrics/speed.json")
    plots: Path = Path("plots")
    resume: Path = Path(".sparsenet/resume")  # per-epoch training state; deleted once a stage is done


Step = Callable[[Config, Paths], object]


def run_stage(step: Step, params: str | Path = "params.yaml") -> None:
    """Load params and run one step; a user-facing problem ends as one error line and exit code 2.

    When the step fails in any way, ``params`` gets a new modification time (its content is left
    alone).  Why: after a failed ``dvc exp run -S key=bad``, DVC's clean-up resets git's index
    keeping the stat data of an earlier write of the params file; the edited file has the same
    size and, within the same second, the same time to git, which then shows it clean,
    ``git checkout -- params.yaml`` does nothing, and the next ``dvc exp run`` starts from the
    bad value again.
    """
    keep_freed_memory()
    if os.environ.get(ENV):  # a sweep point's stage: it ends with the `dvc exp run` that started it
        die_with_parent()
    try:
        with one_line_errors():
            step(load_config(params), Paths())
    except BaseException as exc:
        if not (isinstance(exc, SystemExit) and exc.code in (0, None)):
            _touch(Path(params))
        raise


def _touch(path: Path) -> None:
    """Set ``path``'s modification time one second ahead (access time kept).

    One second ahead, because git compares whole seconds: "now" can fall in the very second of
    DVC's write that git remembers.
    """
    try:
        os.utime(path, ns=(path.stat().st_atime_ns, time.time_ns() + 1_000_000_000))
    except OSError:
        pass  # nothing to protect, or not ours to touch


def keep_freed_memory() -> None:
    """Make glibc keep freed memory for reuse instead of handing it back to the OS at once.

    Every batch and activation is a fresh allocation of several MB.  By default glibc maps such
    blocks anew and returns them on free, so each step page-faults through them again: measured
    here, 5–15% of a LeNet training step.  Results are unchanged.  No-op without glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int  # int mallopt(int, int)
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers from <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 * 2**20)   # glibc's largest: blocks up to 32 MB from the heap
    libc.mallopt(m_trim_threshold, 1 * 2**30)    # give memory back only when 1 GB lies unused
