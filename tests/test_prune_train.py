"""prune_train applies what its params ask for: the sensitivity allocation's per-layer shares,
Taylor scores summed over ``prune.score_batches`` batches, unstructured Taylor per layer."""

import pytest
import torch

from sparsenet.checkpoints import load_checkpoint
from tests.test_rewind import run_in, small_config

LAYERS = ("conv1", "conv2", "fc1", "fc2", "fc3")


def _layer_sparsity(paths) -> dict[str, float]:
    state = load_checkpoint(paths.sparse_model)
    return {layer: 1 - state[f"{layer}.mask"].float().mean().item() for layer in LAYERS}


def test_sensitivity_allocation_prunes_each_layer_by_the_share_it_prints(tmp_path, capsys):
    paths = run_in(tmp_path, small_config(method="structured", allocation="sensitivity", sparsity=0.5,
                                          epochs=1, finetune_epochs=0))
    printed = capsys.readouterr().out.split("sensitivity allocation: ")[1].splitlines()[0]
    shares = {name: float(share) for name, share in (item.split() for item in printed.split(", "))}
    reached = _layer_sparsity(paths)
    state = load_checkpoint(paths.sparse_model)
    for layer, share in shares.items():
        filters = state[f"{layer}.mask"].shape[0]
        assert reached[layer] == pytest.approx(share, abs=1 / filters), (layer, reached, shares)
    assert len({round(reached[layer], 2) for layer in shares}) > 1, "not the uniform 50% of every layer"
    weights = {layer: state[f"{layer}.mask"].numel() for layer in shares}
    overall = sum(reached[layer] * weights[layer] for layer in shares) / sum(weights.values())
    assert overall == pytest.approx(0.5, abs=0.01)
    assert reached["fc3"] == 0.0  # the classifier's outputs stay


def test_taylor_masks_follow_the_batches_scored(tmp_path, monkeypatch):
    import stages.prune_train as stage

    scored = []  # (batches, images) each call scored: the real scores, only counted

    def counting(net, batches, *args):
        scored.append((sum(1 for _ in batches), sum(len(labels) for _, labels in batches)))
        return real(net, batches, *args)

    real = stage.taylor_scores
    monkeypatch.setattr(stage, "taylor_scores", counting)
    masks = {}
    for batches in (1, 4, 10):  # the training split holds 4 batches of 32: 10 asked for, all 4 scored
        scored.clear()
        paths = run_in(tmp_path / str(batches), small_config(method="taylor", score_batches=batches, sparsity=0.8,
                                                             epochs=2))
        held = min(batches, 4)
        assert scored == [(held, held * 32)] * 2, "each of the 2 rounds scores score_batches batches of 32"
        state = load_checkpoint(paths.sparse_model)
        masks[batches] = torch.cat([state[f"{layer}.mask"].flatten() for layer in LAYERS])
    assert masks[1].sum() == masks[4].sum(), "the same sparsity"
    assert not torch.equal(masks[1], masks[4]), "other batches, other scores"


def test_more_taylor_batches_than_the_split_holds_are_named(tmp_path, capsys):
    run_in(tmp_path, small_config(method="taylor", score_batches=10, sparsity=0.8))
    assert ("notice: prune.score_batches = 10 but the training split holds 4 batches of 32: Taylor scores are "
            "summed over all of them") in capsys.readouterr().out
