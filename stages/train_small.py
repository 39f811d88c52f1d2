"""Step ``train_small``: the small-dense baseline — a narrower LeNet trained from scratch.

Is pruning a large network better than training a small one of the same size (Zhu & Gupta
2017)?  The small network gets as many epochs in total as the pruned model has seen (dense +
pruning + fine-tuning) and is as large as the pruned model: the compact model's widths after
structured pruning, or, after unstructured pruning, LeNet's widths scaled down until its
parameters match the sparse model's non-zero ones.
"""

from __future__ import annotations

import torch

from sparsenet.analysis import model_cost
from sparsenet.checkpoints import compact_checkpoint, load_model, save_checkpoint
from sparsenet.config import Config
from sparsenet.models import KERNEL_SIZE, LENET_WIDTHS, LeNet, default_device, feature_side
from sparsenet.stage import Paths
from sparsenet.training_stage import live_logger, new_live, resume_args, training_start
from sparsenet.training import fit

PARAMS_TOLERANCE = 0.10  # the small model's parameters within 10% of the pruned model's non-zero ones


def count_params(widths: tuple[int, int, int, int], num_classes: int, image_size: int, in_channels: int = 3) -> int:
    """Parameters (weights and biases) of a dense LeNet with ``widths``, without building one
    (building would draw initial weights from the global random state)."""
    c1, c2, f1, f2 = widths
    area = KERNEL_SIZE * KERNEL_SIZE
    flat = c2 * feature_side(image_size) ** 2
    return ((in_channels * area + 1) * c1 + (c1 * area + 1) * c2 + (flat + 1) * f1 + (f1 + 1) * f2
            + (f2 + 1) * num_classes)


def matching_widths(target_params: int, num_classes: int, image_size: int, in_channels: int = 3,
                    base: tuple[int, int, int, int] = LENET_WIDTHS) -> tuple[int, int, int, int]:
    """LeNet's widths scaled to about ``target_params`` parameters.

    First ``base`` scaled by one factor (each width rounded, at least 1; factors 0.001 … 1 in
    steps of 0.001, every one looked at since rounding makes the count jump), then fc1 — the
    layer with most of the parameters — set to the width that brings the count closest.
    """
    def gap(widths: tuple[int, int, int, int]) -> int:
        return abs(count_params(widths, num_classes, image_size, in_channels) - target_params)

    scaled = [tuple(max(1, round(step / 1000 * width)) for width in base) for step in range(1, 1001)]
    c1, c2, f1, f2 = min(scaled, key=gap)  # type: ignore[arg-type]
    candidates = [(c1, c2, units, f2) for units in range(1, max(base[2], f1) * 2 + 1)]
    return min(candidates, key=lambda widths: (gap(widths), abs(widths[2] - f1)))


def small_widths(cfg: Config, paths: Paths, image_size: int, num_classes: int) -> tuple[tuple[int, int, int, int], int]:
    """(widths of the small-dense baseline, the pruned model's non-zero parameters it matches)."""
    sparse = load_model(paths.sparse_model, True, image_size, num_classes)
    nonzero = model_cost(sparse, image_size).nonzero_params
    if cfg.prune.method == "structured":
        return load_model(paths.compact_model, False, image_size, num_classes).widths, nonzero
    return matching_widths(nonzero, num_classes, image_size, sparse.in_channels), nonzero


def train_small(cfg: Config, paths: Paths = Paths()) -> list[dict]:
    """A LeNet of :func:`small_widths` trained from scratch → ``models/small.pt``.

    ``train.epochs + prune.epochs + prune.finetune_epochs`` epochs with ``train.lr`` and
    ``train.lr_schedule`` spread over all of them, the run's seed and batch size.
    """
    dataset, train, test = training_start(cfg, paths)
    classes = len(dataset.classes)
    widths, nonzero = small_widths(cfg, paths, dataset.image_size, classes)
    model = LeNet(classes, dataset.image_size, widths=widths).to(default_device(), memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    how = "the compact model's widths" if cfg.prune.method == "structured" else "parameters matched"
    print(f"small dense LeNet: widths {list(widths)}, {params:,} parameters; the pruned model has "
          f"{nonzero:,} non-zero ({how})")
    if cfg.prune.method != "structured" and abs(params - nonzero) > PARAMS_TOLERANCE * nonzero:
        print(f"notice: no LeNet comes within {PARAMS_TOLERANCE:.0%} of {nonzero:,} parameters; the closest, "
              f"{params:,}, is trained")
    epochs = cfg.train.epochs + cfg.prune.epochs + cfg.prune.finetune_epochs
    with new_live(paths.small_log) as live:
        resume = resume_args(paths, "train_small", cfg, paths.prepared, paths.sparse_model, paths.compact_model)
        history = fit(model, train, test, epochs, cfg.train.lr, desc="train_small", log=live_logger(live),
                      lr_schedule=cfg.train.lr_schedule, compiled_conv=cfg.train.compiled_conv, **resume)
    save_checkpoint(paths.small_model, compact_checkpoint(model))
    resume["checkpoint"].unlink(missing_ok=True)
    return history


if __name__ == "__main__":
    from sparsenet.stage import run_stage

    run_stage(train_small)
