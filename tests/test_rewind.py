"""prune.rewind: after pruning, surviving weights go back to their dense values at init / an epoch."""

import copy
from dataclasses import fields

import pytest
import torch

from sparsenet.config import ConfigError, config_from_dict
from sparsenet.data import BatchLoader
from sparsenet.prepared import save_prepared
from sparsenet.sources import make_synthetic
from sparsenet.errors import SparseNetError
from sparsenet.checkpoints import load_checkpoint
from sparsenet.models import LeNet, initial_state
from sparsenet.checkpoints import rewind_state
from stages.prune_train import prune_train
from sparsenet.stage import Paths
from stages.train_dense import train_dense
from sparsenet.pruning import prune_model
from sparsenet.training import fit


def test_rewind_restores_surviving_weights_and_keeps_masks(dense, sparse):
    prune_model(sparse, "magnitude", 0.7)
    masks = {name: layer.mask.clone() for name, layer in sparse.sparse_layers()}
    with torch.no_grad():
        for p in sparse.parameters():
            p.add_(1.0)  # "training" moved every weight
        sparse.apply_masks()
    sparse.rewind(dense.state_dict())
    for name, layer in sparse.sparse_layers():
        original = getattr(dense, name).weight
        assert torch.equal(layer.mask, masks[name])
        assert torch.equal(layer.weight[layer.mask], original[layer.mask])
        assert (layer.weight[~layer.mask] == 0).all()


def small_config(seed=0, **prune):
    return config_from_dict({"seed": seed, "train": {"epochs": 2, "batch_size": 32, "lr": 0.01},
                             "prune": {"method": "magnitude", "sparsity": 0.6, "epochs": 1,
                                       "finetune_epochs": 1, **prune}})


def run_in(tmp_path, cfg):
    paths = Paths(**{f.name: tmp_path / getattr(Paths(), f.name) for f in fields(Paths)})
    save_prepared(make_synthetic(128, 32, 4, 32, seed=0), paths.prepared, {"skipped": []})
    train_dense(cfg, paths)
    prune_train(cfg, paths)
    return paths


@pytest.mark.parametrize("point", ["init", "1"])
def test_prune_train_rewinds_then_trains_the_ticket(tmp_path, point):
    # A tiny learning rate: training moves each weight by ~1e-7 per step, so the model that
    # leaves prune_train must sit right at the rewind target (times the mask), yet not exactly.
    paths = run_in(tmp_path, small_config(rewind=point, lr=1e-7))
    history = load_checkpoint(paths.dense_history)
    assert {k.split(".", 1)[0] for k in history} == {"init", "epoch1", "epoch2"}
    dense = load_checkpoint(paths.dense_model)
    assert all(torch.equal(history[f"epoch2.{k}"], v) for k, v in dense.items())
    target = rewind_state(history, point)
    sparse = load_checkpoint(paths.sparse_model)
    for layer in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        mask, weight = sparse[f"{layer}.mask"], sparse[f"{layer}.weight"]
        assert not mask.all(), "pruning happened"
        assert (weight[~mask] == 0).all()
        assert (dense[f"{layer}.weight"] - target[f"{layer}.weight"]).abs().max() > 1e-3, "rewinding is visible"
        distance = (weight - target[f"{layer}.weight"] * mask).abs().max()
        assert 0 < distance < 1e-4, f"{layer}: the rewound ticket, trained on (moved by {distance})"


def test_reinit_keeps_the_tickets_mask_and_restarts_it_from_a_fresh_draw(tmp_path):
    # Two pruning rounds and a tiny learning rate: the survivors end where the last rewind put them.
    def survivors(seed: int, rewind: str):
        paths = run_in(tmp_path / f"{rewind}{seed}", small_config(rewind=rewind, lr=1e-7, epochs=2, seed=seed))
        return load_checkpoint(paths.sparse_model), rewind_state(load_checkpoint(paths.dense_history), "init")

    reinit, init = survivors(0, "reinit")
    ticket, _ = survivors(0, "init")
    other_seed, _ = survivors(1, "reinit")
    for layer in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        mask, weight = reinit[f"{layer}.mask"], reinit[f"{layer}.weight"]
        assert not mask.all(), "pruning happened"
        # the control of the ticket: its very mask (round 2 pruned the rewound ticket, not a draw)
        assert torch.equal(mask, ticket[f"{layer}.mask"]), f"{layer}: not the init run's mask"
        assert (weight[~mask] == 0).all()
        kept = weight[mask]
        assert (kept - init[f"{layer}.weight"][mask]).abs().max() > 1e-3, "not the dense run's init"
        assert (ticket[f"{layer}.weight"][mask] - init[f"{layer}.weight"][mask]).abs().max() < 1e-4
        # PyTorch's initial distribution: uniform in ±1/sqrt(fan_in), spread over the whole range
        bound = 1 / weight[0].numel() ** 0.5
        assert kept.abs().max() <= bound * 1.001 and kept.abs().max() > 0.9 * bound
        assert kept.std() == pytest.approx(bound / 3 ** 0.5, rel=0.35)
        assert not torch.equal(other_seed[f"{layer}.weight"], weight), "a seed of its own"


def test_initial_state_is_seeded_and_leaves_the_global_random_state_alone():
    model = LeNet(4, 32, widths=(2, 3, 4, 5))
    before = torch.get_rng_state()
    a, b, c = initial_state(model, 7), initial_state(model, 7), initial_state(model, 8)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["fc1.weight"], c["fc1.weight"])
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_rewind_without_fine_tuning_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="prune.rewind = 'init' needs prune.finetune_epochs >= 1"):
        small_config(rewind="init", finetune_epochs=0)


def _loaders(seed=3):
    data = make_synthetic(96, 32, 4, 32, seed=1)
    train = BatchLoader(data.train, 16, 0.5, 0.25, torch.device("cpu"), shuffle=True, seed=seed)
    test = BatchLoader(data.test, 32, 0.5, 0.25, torch.device("cpu"))
    return train, test


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_rewind_restarts_adam_and_the_learning_rate_schedule(schedule):
    torch.manual_seed(0)
    start = LeNet(4, 32)
    first_epoch_end = {}

    def rewind_after_first_epoch(model):
        def hook(epoch, record):
            if epoch == 1:
                first_epoch_end.update({k: v.clone() for k, v in model.state_dict().items()})
                model.load_state_dict(start.state_dict())
                return True
        return hook

    rewound = copy.deepcopy(start)
    train, test = _loaders()
    fit(rewound, train, test, 2, 0.01, after_epoch=rewind_after_first_epoch(rewound), lr_schedule=schedule)

    # The same run built by hand: one epoch's batches drawn, then a fresh Adam whose schedule
    # spans the one remaining epoch, from the start weights.
    fresh = copy.deepcopy(start)
    train, test = _loaders()
    for _ in train:
        pass
    fit(fresh, train, test, 1, 0.01, lr_schedule=schedule)
    for key, value in fresh.state_dict().items():
        assert torch.equal(rewound.state_dict()[key], value), key

    # Without the restart, Adam's moments from epoch 1 would carry over: a different model.
    carried = copy.deepcopy(start)
    train, test = _loaders()
    fit(carried, train, test, 2, 0.01, lr_schedule=schedule,
        after_epoch=lambda epoch, record: carried.load_state_dict(start.state_dict()) and None)
    assert not torch.equal(carried.fc1.weight, rewound.fc1.weight)


def test_unknown_rewind_point_is_refused():
    with pytest.raises(SparseNetError, match="rewind = .7.: not in the dense training history .has: init, epoch1"):
        rewind_state({"init.a": torch.zeros(1), "epoch1.a": torch.zeros(1)}, "7")


@pytest.mark.parametrize("value,ok", [("none", True), ("init", True), ("reinit", True), (2, True), (3, False), ("last", False)])
def test_rewind_param_is_validated(value, ok):
    if ok:
        assert small_config(rewind=value).prune.rewind == str(value)
    else:
        with pytest.raises(ConfigError, match="prune.rewind.*none, init, reinit or a dense epoch number 1..2"):
            small_config(rewind=value)


def test_draw_seeds_of_one_run_never_repeat_and_unknown_purposes_are_refused():
    from sparsenet.draws import PURPOSES, draw_seed

    for seed in (0, 1, 7, 2**32 - 1):
        seeds = [draw_seed(seed, purpose, round_index) for purpose in PURPOSES for round_index in range(50)]
        assert len(set(seeds)) == len(seeds) and seed not in seeds
    assert draw_seed(0, "taylor", 0) != draw_seed(1, "taylor", 0)
    with pytest.raises(ValueError, match="unknown draw 'tylor'; expected one of: taylor, sensitivity, reinit"):
        draw_seed(0, "tylor", 0)
