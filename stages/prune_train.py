"""Step ``prune_train``: SparseNet from the dense model, pruned after every epoch on a schedule."""

from __future__ import annotations

import torch

from sparsenet.analysis import layer_sparsity, overall_sparsity
from sparsenet.checkpoints import (compact_checkpoint, load_checkpoint, load_model, plain_state, rewind_state, save_checkpoint)
from sparsenet.packed import packed_checkpoint
from sparsenet.compact import compact
from sparsenet.config import Config
from sparsenet.data import BatchLoader
from sparsenet.draws import draw_seed
from sparsenet.importance import taylor_scores, uses_taylor
from sparsenet.models import SparseNet, initial_state
from sparsenet.stage import Paths
from sparsenet.training_stage import live_logger, new_live, resume_args, training_start
from sparsenet.pruning import prune_model, pruned_layer_names, scheduled_sparsity
from sparsenet.sensitivity import allocate, measure
from sparsenet.training import evaluate, fit


SENSITIVITY_BATCHES = 16  # training batches the sensitivity curves are measured on (2,048 images at 128)


def _taylor(net: SparseNet, train: BatchLoader, cfg: Config, round_index: int) -> dict[str, torch.Tensor]:
    """Taylor scores of ``net`` over ``prune.score_batches`` batches drawn for this round."""
    batches = train.sample(cfg.prune.score_batches, draw_seed(cfg.seed, "taylor", round_index))
    return taylor_scores(net, batches, cfg.train.compiled_conv)


def prune_train(cfg: Config, paths: Paths = Paths()) -> list[dict]:
    """Train, then prune on schedule, after every epoch → ``models/sparse.pt``, ``packed.pt``, ``compact.pt``.

    Each of the ``prune.epochs`` rounds trains one epoch, records the test accuracy, prunes to
    the round's scheduled sparsity and records the test accuracy again.  Taylor importance is
    summed over ``prune.score_batches`` training batches drawn afresh each round (its own random
    draw: the training order is the same as without it).  With ``prune.allocation: sensitivity``
    each layer's share of the target comes from its sensitivity curve, measured once on the
    dense model over training images (:mod:`sparsenet.sensitivity`; the test set stays unseen),
    and every round scales those shares by its scheduled fraction of the target.

    With ``prune.rewind`` the surviving weights then go back to their dense values at
    initialisation or that epoch, or (``reinit``, the random-reinitialisation control of Frankle &
    Carbin 2019) as with ``init`` after every round but the last, after which they are drawn
    afresh from the initial distribution with a seed of their own (derived from ``seed``): the
    same mask as the ``init`` run's ticket, other weights.  Training
    then goes on with a fresh Adam and the learning-rate schedule from its start (see
    :func:`sparsenet.training.fit`).  ``prune.finetune_epochs`` further epochs then train with
    the final masks fixed; a rewind needs at least one, so the model that leaves this step is
    always trained (the config refuses ``rewind`` with ``finetune_epochs: 0``).  Every record
    holds ``sparsity`` (over the layers the target covers) and ``sparsity_all_layers``.

    ``models/packed.pt`` is the same model without its zeros (see
    :func:`sparsenet.packed.packed_checkpoint`).
    """
    dataset, train, test = training_start(cfg, paths)
    dense = load_model(paths.dense_model, False, dataset.image_size, len(dataset.classes))
    net = SparseNet.from_dense(dense).to(memory_format=torch.channels_last)
    p = cfg.prune
    fixed_target = None
    if p.rewind != "none":  # reinit rewinds as init does until its last round
        fixed_target = rewind_state(load_checkpoint(paths.dense_history), "init" if p.rewind == "reinit" else p.rewind)

    def rewind_target(epoch: int) -> dict[str, torch.Tensor] | None:
        """The weights the survivors restart from after pruning round ``epoch`` (None: they train on)."""
        if p.rewind == "reinit" and epoch == p.epochs:
            # the ticket's control: every round so far went as with init, so the mask is the
            # ticket's; only its weights are new, drawn afresh instead of rewound
            return initial_state(net, draw_seed(cfg.seed, "reinit", epoch))
        return fixed_target  # lottery-ticket style: the dense weights at init or an epoch

    if uses_taylor(p.method, p.criterion) and p.score_batches > len(train):
        print(f"notice: prune.score_batches = {p.score_batches} but the training split holds {len(train)} batches "
              f"of {train.batch_size}: Taylor scores are summed over all of them")
    covered = pruned_layer_names(p.method, p.structure, p.exclude)
    shares = None
    if p.allocation == "sensitivity":
        curves = measure(net, train.sample(SENSITIVITY_BATCHES, draw_seed(cfg.seed, "sensitivity", 0)), p.method,
                         p.structure, p.criterion, tuple(p.exclude),
                         taylor=_taylor(net, train, cfg, 0) if uses_taylor(p.method, p.criterion) else None,
                         seed=cfg.seed)
        shares = allocate(curves, p.sparsity)
        print("sensitivity allocation: " + ", ".join(f"{name} {share:.3f}" for name, share in shares.items()))

    def prune_after_epoch(epoch: int, record: dict) -> bool:
        rewound = False
        if epoch <= p.epochs:  # pruning round; later epochs fine-tune the final masks
            target = scheduled_sparsity(p.sparsity, epoch, p.epochs, p.schedule)
            scale = target / p.sparsity if p.sparsity > 0 else 0.0
            prune_model(net, p.method, target, p.structure, p.scope, seed=cfg.seed, round_index=epoch,
                        exclude=tuple(p.exclude), criterion=p.criterion,
                        taylor=_taylor(net, train, cfg, epoch) if uses_taylor(p.method, p.criterion) else None,
                        layer_amounts=None if shares is None else {k: v * scale for k, v in shares.items()},
                        round_to=p.round_to)
            loss, accuracy = evaluate(net, test)
            record.update({"test_loss_after_prune": loss, "test_accuracy_after_prune": accuracy})
            target_state = rewind_target(epoch)
            if target_state is not None:
                net.rewind(target_state)
                rewound = True
        layers = layer_sparsity(net)
        record["sparsity"] = overall_sparsity(layers, covered)
        record["sparsity_all_layers"] = overall_sparsity(layers)
        return rewound

    with new_live(paths.prune_log) as live:
        resume = resume_args(paths, "prune_train", cfg, paths.prepared, paths.dense_model, paths.dense_history)
        history = fit(net, train, test, p.epochs + p.finetune_epochs, p.lr, desc=f"prune_train ({p.method})",
                      after_epoch=prune_after_epoch, log=live_logger(live), lr_schedule=p.lr_schedule,
                      compiled_conv=cfg.train.compiled_conv, **resume)
    state = plain_state(net)
    save_checkpoint(paths.sparse_model, state)
    save_checkpoint(paths.packed_model, packed_checkpoint(state, net.image_size))
    small = compact(net)
    save_checkpoint(paths.compact_model, compact_checkpoint(small))
    resume["checkpoint"].unlink(missing_ok=True)
    print(f"packed model: {paths.packed_model.stat().st_size:,} bytes ({paths.sparse_model} "
          f"{paths.sparse_model.stat().st_size:,}) -> {paths.packed_model}")
    print(f"compact model: widths {small.widths} (dense LeNet {net.widths}) -> {paths.compact_model}")
    return history


if __name__ == "__main__":
    from sparsenet.stage import run_stage

    run_stage(prune_train)
