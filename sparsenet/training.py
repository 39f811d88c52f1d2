"""One training loop for dense training and prune-training (pruning is an end-of-epoch hook)."""

from __future__ import annotations

import math
import random
import time
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sparsenet.data import BatchLoader
from sparsenet.errors import SparseNetError
from sparsenet.models import enforce_masks_after_steps

EpochHook = Callable[[int, dict], None]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so the same params give the same metrics."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: not repeatable
    torch.backends.cudnn.deterministic = True


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` over ``loader``."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in loader:
        logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
        count += len(labels)
    return loss_sum / count, correct / count


def train_epoch(model: nn.Module, loader: BatchLoader, optimizer: torch.optim.Optimizer,
                loss_fn: nn.Module, desc: str) -> tuple[float, float]:
    """One pass over ``loader``; returns mean training loss and accuracy."""
    model.train()
    loss_sum, count = 0.0, 0
    correct = torch.zeros((), dtype=torch.int64, device=next(model.parameters()).device)
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=None)
    for step, (images, labels) in enumerate(bar, start=1):
        logits = model(images)
        loss = loss_fn(logits, labels)
        loss_value = loss.item()  # the step's one read back to the host
        if not math.isfinite(loss_value):
            raise SparseNetError(f"{desc}: loss became {loss_value} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss_value * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        count += len(labels)
    return loss_sum / count, correct.item() / count


def fit(model: nn.Module, train: BatchLoader, test: BatchLoader, epochs: int, lr: float,
        desc: str = "train", after_epoch: EpochHook | None = None,
        log: Callable[[dict], None] | None = None) -> list[dict]:
    """Adam + CrossEntropyLoss for ``epochs`` epochs; returns one record per epoch.

    Each record holds ``epoch``, ``train_loss``, ``train_accuracy``, ``test_loss``,
    ``test_accuracy``; ``after_epoch(epoch, record)`` may prune the model and add keys to the
    record before ``log(record)`` is called.  Sparse layers' masks hold after every step.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    enforce_masks_after_steps(optimizer, model)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in tqdm(range(1, epochs + 1), desc=desc, unit="epoch", disable=None):
        started = time.perf_counter()
        train_loss, train_acc = train_epoch(model, train, optimizer, loss_fn, f"{desc} epoch {epoch}")
        test_loss, test_acc = evaluate(model, test)
        record = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                  "test_loss": test_loss, "test_accuracy": test_acc}
        if after_epoch is not None:
            after_epoch(epoch, record)
        history.append(record)
        if log is not None:
            log(record)
        tqdm.write(f"{desc} epoch {epoch}/{epochs} ({time.perf_counter() - started:.1f}s): " + ", ".join(
            f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
    return history
