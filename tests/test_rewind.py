"""prune.rewind: after pruning, surviving weights go back to their dense values at init / an epoch."""

from dataclasses import fields

import pytest
import torch

from sparsenet.config import ConfigError, config_from_dict
from sparsenet.data import make_synthetic, save_prepared
from sparsenet.errors import SparseNetError
from sparsenet.io import load_checkpoint
from sparsenet.models import SparseNet
from sparsenet.pipeline import Paths, prune_train, rewind_state, train_dense
from sparsenet.pruning import prune_model


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


def small_config(**prune):
    return config_from_dict({"seed": 0, "train": {"epochs": 2, "batch_size": 32},
                             "prune": {"method": "magnitude", "sparsity": 0.6, "epochs": 1,
                                       "finetune_epochs": 0, **prune}})


def run_in(tmp_path, cfg):
    paths = Paths(**{f.name: tmp_path / getattr(Paths(), f.name) for f in fields(Paths)})
    save_prepared(make_synthetic(128, 32, 4, 32, seed=0), paths.prepared, {"skipped": []})
    train_dense(cfg, paths)
    prune_train(cfg, paths)
    return paths


@pytest.mark.parametrize("point", ["init", "1"])
def test_prune_train_rewinds_to_the_stored_dense_weights(tmp_path, point):
    paths = run_in(tmp_path, small_config(rewind=point))
    history = load_checkpoint(paths.dense_history)
    assert {k.split(".", 1)[0] for k in history} == {"init", "epoch1", "epoch2"}
    dense = load_checkpoint(paths.dense_model)
    assert all(torch.equal(history[f"epoch2.{k}"], v) for k, v in dense.items())
    target = rewind_state(history, point)
    sparse = load_checkpoint(paths.sparse_model)
    for layer in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        mask = sparse[f"{layer}.mask"]
        assert not mask.all(), "pruning happened"
        assert torch.equal(sparse[f"{layer}.weight"], target[f"{layer}.weight"] * mask)
    assert not torch.equal(target["fc1.weight"], dense["fc1.weight"])


def test_unknown_rewind_point_is_refused():
    with pytest.raises(SparseNetError, match="rewind = .7.: not in the dense training history .has: epoch1, init"):
        rewind_state({"init.a": torch.zeros(1), "epoch1.a": torch.zeros(1)}, "7")


@pytest.mark.parametrize("value,ok", [("none", True), ("init", True), (2, True), (3, False), ("last", False)])
def test_rewind_param_is_validated(value, ok):
    if ok:
        assert small_config(rewind=value).prune.rewind == str(value)
    else:
        with pytest.raises(ConfigError, match="prune.rewind.*none, init or a dense epoch number 1..2"):
            small_config(rewind=value)
