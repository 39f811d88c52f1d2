"""The resume state of a training stage (``.sparsenet/resume/<stage>.pt``): what it needs to go on after a kill.

Written after every epoch by :func:`sparsenet.training.fit`; read back only by a run with the same
fingerprint (:func:`sparsenet.training_stage.resume_args`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsenet.checkpoints import load_checkpoint, save_checkpoint
from sparsenet.errors import SparseNetError

RESUME_KEYS = ("fingerprint", "history", "model", "optimizer", "scheduler", "schedule_start", "rng", "extra")


def save_resume_state(path: Path, state: dict[str, Any]) -> None:
    """Write a training stage's per-epoch resume state (the keys of :data:`RESUME_KEYS`)."""
    missing = set(RESUME_KEYS) - set(state)
    if missing:
        raise ValueError(f"resume state lacks {', '.join(sorted(missing))}")
    save_checkpoint(path, state)


def load_resume_state(path: Path | None, fingerprint: str) -> tuple[dict | None, str | None]:
    """(state, None) to resume from, or (None, a one-line notice why not; None if no file)."""
    if path is None or not path.is_file():
        return None, None
    try:
        saved = load_checkpoint(path)
    except SparseNetError as exc:
        return None, f"ignoring unreadable resume checkpoint: {exc}"
    if not isinstance(saved, dict) or set(RESUME_KEYS) - set(saved):
        return None, f"ignoring {path}: not a resume checkpoint of this version"
    if saved["fingerprint"] != fingerprint:
        return None, (f"ignoring {path}: it was left by a run with other code, params, inputs, torch version "
                      "or device; starting at epoch 1")
    return saved, None
