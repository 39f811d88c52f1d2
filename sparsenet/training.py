"""One training loop for every training stage (pruning and rewinding are end-of-epoch hooks)."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sparsenet import training_forward
from sparsenet.resume import load_resume_state, save_resume_state
from sparsenet.errors import SparseNetError
from sparsenet.models import enforce_masks_after_steps
from sparsenet.options import LR_SCHEDULES

if TYPE_CHECKING:
    from sparsenet.data import BatchLoader

EVAL_BATCH_SIZE = 256  # larger batches run slower on CPU for LeNet

# Called after each epoch's training and evaluation with (epoch, record); it may change the model
# and add keys to the record.  Returning True says the model was reset (a rewind): see ``fit``.
EpochHook = Callable[[int, dict], "bool | None"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so the same params give the same metrics."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: not repeatable
    torch.backends.cudnn.deterministic = True


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` over ``loader`` (the same on any number of threads)."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in loader:
        logits = training_forward.forward(model, images)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
        count += len(labels)
    return loss_sum / count, correct / count


def train_epoch(model: nn.Module, loader: BatchLoader, optimizer: torch.optim.Optimizer,
                loss_fn: nn.Module, desc: str,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                compiled_conv: bool = True) -> tuple[float, float]:
    """One pass over ``loader``; returns mean training loss and accuracy.

    ``scheduler`` (if given) steps after every optimizer step; ``compiled_conv``: see
    :mod:`sparsenet.training_forward`.  A non-finite loss raises
    :class:`NonFiniteLoss` naming ``desc`` and the step, before the weights are touched.
    """
    model.train()
    loss_sum, count = 0.0, 0
    correct = torch.zeros((), dtype=torch.int64, device=next(model.parameters()).device)
    # Images (not batches) as the unit: the bar shows img/s and the ETA; off when not a terminal.
    bar = tqdm(total=len(loader.split), desc=desc, unit="img", unit_scale=True, leave=False, disable=None)
    for step, (images, labels) in enumerate(loader, start=1):
        logits = training_forward.forward(model, images, compiled_conv)
        loss = loss_fn(logits, labels)
        loss_value = loss.item()  # the step's one read back to the host
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(f"{desc}, step {step}: loss became {loss_value}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss_value * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        count += len(labels)
        bar.update(len(labels))
    bar.close()
    return loss_sum / count, correct.item() / count


class NonFiniteLoss(SparseNetError):
    """Training diverged (loss NaN or infinite)."""


def lr_scheduler(optimizer: torch.optim.Optimizer, schedule: str,
                 total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``constant``: none; ``cosine``: the learning rate falls from its start to 0 over ``total_steps``."""
    if schedule == "constant":
        return None
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of: {', '.join(LR_SCHEDULES)}")


def _fresh_optimizer(model: nn.Module, lr: float, lr_schedule: str, steps: int):
    """Adam with zero moments and step count, its schedule at the start, the masks enforced."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    enforce_masks_after_steps(optimizer, model)
    return optimizer, lr_scheduler(optimizer, lr_schedule, steps)


def fit(model: nn.Module, train: BatchLoader, test: BatchLoader, epochs: int, lr: float,
        desc: str = "train", after_epoch: EpochHook | None = None,
        log: Callable[[dict], None] | None = None, lr_schedule: str = "constant",
        checkpoint: Path | None = None, fingerprint: str = "",
        extra: dict[str, torch.Tensor] | None = None, compiled_conv: bool = True) -> list[dict]:
    """Adam + CrossEntropyLoss for ``epochs`` epochs; returns one record per epoch.

    ``lr_schedule`` is ``constant`` or ``cosine`` (per step, from ``lr`` down to 0 at the end).
    ``compiled_conv`` (params ``train.conv_block``) picks how CPU steps compute the conv blocks
    (:mod:`sparsenet.training_forward`).

    Each record holds ``epoch``, ``train_loss``, ``train_accuracy``, ``test_loss``,
    ``test_accuracy``; ``after_epoch(epoch, record)`` may prune the model and add keys to the
    record before ``log(record)`` is called.  If it returns True, the model was reset to earlier
    weights (a rewind): as in lottery-ticket practice, training then goes on with a fresh Adam
    (zero moments and step count) and the learning-rate schedule from its start, spread over the
    epochs that remain.  Sparse layers' masks hold after every step.

    With ``checkpoint``, everything needed to go on (model and masks, optimizer, schedule, RNG
    states, the records so far and the caller's ``extra`` tensors) is saved there, atomically,
    after every epoch.  If that file already holds a run with the same ``fingerprint``, training
    resumes after its last epoch — replaying its records to ``log`` and refilling ``extra`` — and
    ends exactly as an uninterrupted run would; a file with another fingerprint is ignored with
    one notice line.  The file is left for the caller to delete once its outputs are safe.
    """
    training_forward.refuse_hooked(model)
    loss_fn = nn.CrossEntropyLoss()
    extra = {} if extra is None else extra
    history: list[dict] = []
    schedule_start = 0  # the epoch after which the current optimizer and schedule began
    saved, notice = load_resume_state(checkpoint, fingerprint)
    if notice:
        tqdm.write(f"{desc}: {notice}")
    if saved is not None:
        schedule_start = saved["schedule_start"]
        model.load_state_dict(saved["model"])
    optimizer, scheduler = _fresh_optimizer(model, lr, lr_schedule, (epochs - schedule_start) * len(train))
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        _set_rng_states(saved["rng"], train)
        extra.update(saved["extra"])
        history = list(saved["history"])
        for record in history:
            if log is not None:
                log(record)
        tqdm.write(f"{desc}: resuming after epoch {len(history)} of {epochs} from {checkpoint}")
    for epoch in tqdm(range(len(history) + 1, epochs + 1), desc=desc, unit="epoch", disable=None,
                      initial=len(history), total=epochs):
        started = time.perf_counter()
        epoch_desc = f"{desc} epoch {epoch}"
        try:
            train_loss, train_acc = train_epoch(model, train, optimizer, loss_fn, epoch_desc, scheduler,
                                                 compiled_conv)
        except NonFiniteLoss as exc:
            kept = (f"; the last good checkpoint (epoch {len(history)}) is kept in {checkpoint}"
                    if checkpoint is not None and history else "")
            raise NonFiniteLoss(f"{exc}{kept}") from None
        test_loss, test_acc = evaluate(model, test)
        record = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                  "test_loss": test_loss, "test_accuracy": test_acc}
        if after_epoch is not None and after_epoch(epoch, record):
            schedule_start = epoch
            optimizer, scheduler = _fresh_optimizer(model, lr, lr_schedule, (epochs - epoch) * len(train))
        history.append(record)
        if log is not None:
            log(record)
        if checkpoint is not None:
            save_resume_state(checkpoint, {
                "fingerprint": fingerprint, "history": history, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else {},
                "schedule_start": schedule_start, "rng": _rng_states(train), "extra": extra,
            })
        tqdm.write(f"{desc} epoch {epoch}/{epochs} ({time.perf_counter() - started:.1f}s): " + ", ".join(
            f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
    return history


def _rng_states(train: BatchLoader) -> dict:
    numpy_state = np.random.get_state()
    return {
        "loader": train.generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }


def _set_rng_states(states: dict, train: BatchLoader) -> None:
    train.generator.set_state(states["loader"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
