"""Step ``train_control``: the fair baseline — the dense model trained on, never pruned."""

from __future__ import annotations

from sparsenet.checkpoints import load_model, plain_state, save_checkpoint
from sparsenet.config import Config
from sparsenet.stage import Paths
from sparsenet.training_stage import live_logger, new_live, resume_args, training_start
from sparsenet.training import fit


def train_control(cfg: Config, paths: Paths = Paths()) -> list[dict]:
    """The dense model trained on without pruning → ``models/control.pt``.

    Same start (``models/dense.pt``), epochs (``prune.epochs + prune.finetune_epochs``), learning
    rate, schedule, seed and batch order as ``prune_train``; only the pruning is missing.  So the
    control has seen as many epochs in total as the pruned model, and ``evaluate`` reports the
    pruned accuracy against it (``accuracy_drop_vs_control``) as well as against the dense model.
    """
    dataset, train, test = training_start(cfg, paths)
    model = load_model(paths.dense_model, False, dataset.image_size, len(dataset.classes))
    p = cfg.prune
    with new_live(paths.control_log) as live:
        resume = resume_args(paths, "train_control", cfg, paths.prepared, paths.dense_model)
        history = fit(model, train, test, p.epochs + p.finetune_epochs, p.lr, desc="train_control",
                      log=live_logger(live), lr_schedule=p.lr_schedule,
                      compiled_conv=cfg.train.compiled_conv, **resume)
    save_checkpoint(paths.control_model, plain_state(model))
    resume["checkpoint"].unlink(missing_ok=True)
    return history


if __name__ == "__main__":
    from sparsenet.stage import run_stage

    run_stage(train_control)
