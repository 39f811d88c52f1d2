"""Step ``train_dense``: LeNet from scratch → ``models/dense.pt`` and its per-epoch history."""

from __future__ import annotations

import torch

from sparsenet.checkpoints import history_entries, plain_state, save_checkpoint
from sparsenet.config import Config
from sparsenet.models import LeNet, default_device
from sparsenet.stage import Paths
from sparsenet.training_stage import live_logger, new_live, resume_args, training_start
from sparsenet.training import fit


def train_dense(cfg: Config, paths: Paths = Paths()) -> list[dict]:
    """Train LeNet with Adam + CrossEntropyLoss; write ``models/dense.pt``, its history and per-epoch logs."""
    dataset, train, test = training_start(cfg, paths)
    model = LeNet(len(dataset.classes), dataset.image_size).to(default_device(), memory_format=torch.channels_last)
    # Weights at initialisation and after every epoch: the points prune.rewind can go back to.
    snapshots = history_entries("init", plain_state(model))

    def snapshot(epoch: int, _: dict) -> None:
        snapshots.update(history_entries(str(epoch), plain_state(model)))

    with new_live(paths.dense_log) as live:
        resume = resume_args(paths, "train_dense", cfg, paths.prepared)
        history = fit(model, train, test, cfg.train.epochs, cfg.train.lr, desc="train_dense",
                      after_epoch=snapshot, log=live_logger(live), lr_schedule=cfg.train.lr_schedule,
                      extra=snapshots, compiled_conv=cfg.train.compiled_conv, **resume)
    save_checkpoint(paths.dense_model, plain_state(model))
    save_checkpoint(paths.dense_history, snapshots)
    resume["checkpoint"].unlink(missing_ok=True)
    return history


if __name__ == "__main__":
    from sparsenet.stage import run_stage

    run_stage(train_dense)
