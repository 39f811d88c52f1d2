"""The small-dense baseline: widths that match the pruned model, trained from scratch as long."""

from dataclasses import fields

import pytest
import torch

from sparsenet.analysis import model_cost
from sparsenet.checkpoints import load_model
from sparsenet.config import config_from_dict
from sparsenet.data import BatchLoader
from sparsenet.prepared import save_prepared
from sparsenet.sources import make_synthetic
from sparsenet.models import LeNet
from stages.prune_train import prune_train
from sparsenet.stage import Paths
from stages.train_dense import train_dense
from stages.train_small import matching_widths, train_small


def lenet_params(widths, classes=10, size=64) -> int:
    return sum(p.numel() for p in LeNet(classes, size, 3, widths).parameters())


@pytest.mark.parametrize("target", [1_500, 6_800, 17_148, 34_000, 101_000, 169_000, 338_486])
def test_matching_widths_come_within_ten_percent_of_the_target(target):
    widths = matching_widths(target, 10, 64)
    assert abs(lenet_params(widths) - target) <= 0.1 * target, widths
    assert all(1 <= w <= 2 * base for w, base in zip(widths, (6, 16, 120, 84)))


def test_matching_widths_keep_lenets_shape_while_shrinking():
    assert matching_widths(lenet_params((6, 16, 120, 84)), 10, 64) == (6, 16, 120, 84)
    c1, c2, f1, f2 = matching_widths(30_000, 10, 64)
    assert c1 <= c2 <= f1 and f2 <= f1  # narrower everywhere, not one layer cut to the bone


def run_small(tmp_path, **prune):
    cfg = config_from_dict({"seed": 0, "train": {"epochs": 1, "batch_size": 32, "lr": 0.01},
                            "prune": {"sparsity": 0.8, "epochs": 1, "finetune_epochs": 1, **prune}})
    paths = Paths(**{f.name: tmp_path / getattr(Paths(), f.name) for f in fields(Paths)})
    save_prepared(make_synthetic(128, 32, 4, 32, seed=0), paths.prepared, {"skipped": []})
    train_dense(cfg, paths)
    prune_train(cfg, paths)
    return paths, train_small(cfg, paths)


def test_unstructured_small_model_has_about_the_pruned_models_nonzero_parameters(tmp_path):
    paths, history = run_small(tmp_path, method="magnitude")
    assert len(history) == 3  # train.epochs + prune.epochs + prune.finetune_epochs, from scratch
    small = load_model(paths.small_model, False, 32, 4)
    sparse = load_model(paths.sparse_model, True, 32, 4)
    nonzero = model_cost(sparse, 32).nonzero_params
    params = sum(p.numel() for p in small.parameters())
    assert abs(params - nonzero) <= 0.1 * nonzero and small.widths != sparse.widths
    assert history[-1]["train_accuracy"] > 0.5  # it learned


def test_structured_small_model_takes_the_compact_widths(tmp_path):
    paths, history = run_small(tmp_path, method="structured")
    compact = load_model(paths.compact_model, False, 32, 4)
    small = load_model(paths.small_model, False, 32, 4)
    assert small.widths == compact.widths and small.widths != (6, 16, 120, 84)
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]  # trained, from scratch


def test_a_sample_leaves_the_loaders_own_order_alone():
    data = make_synthetic(64, 8, 4, 16, seed=0)
    loader = BatchLoader(data.train, 8, 0.5, 0.25, torch.device("cpu"), shuffle=True, seed=5)
    twin = BatchLoader(data.train, 8, 0.5, 0.25, torch.device("cpu"), shuffle=True, seed=5)
    sample = loader.sample(3, seed=9)
    first = [labels for _, labels in sample]
    assert len(sample) == 3 and all(torch.equal(a, b) for a, b in zip(first, [labels for _, labels in sample]))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(loader, twin))  # the same order as without the sample
