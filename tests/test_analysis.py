import io
from contextlib import redirect_stdout

import pytest
import torch

from sparsenet.analysis import interpret_sparsity, layer_sparsity, overall_sparsity
from sparsenet.models import SparseConv2d, SparseLinear
from sparsenet.pruning import prune_model


def seed_interpret_sparsity(model):
    """The function exactly as the project description gives it."""
    for name, module in model.named_modules():
        if isinstance(module, SparseConv2d) or isinstance(module, SparseLinear):
            weights = module.weight.data.cpu().numpy()
            sparsity = 1 - (weights != 0).sum() / weights.size
            print(f'{name} (sparsity = {sparsity:.2f}): {int((weights == 0).sum())} weights are zero out of {weights.size}')


def test_interpret_sparsity_matches_the_seed_format_and_counts(sparse):
    prune_model(sparse, "magnitude", 0.63, scope="layer")
    ours = io.StringIO()
    interpret_sparsity(sparse, file=ours)
    seed = io.StringIO()
    with redirect_stdout(seed):
        seed_interpret_sparsity(sparse)
    assert ours.getvalue() == seed.getvalue()
    lines = ours.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert lines[0] == "conv1 (sparsity = 0.63): 284 weights are zero out of 450"


def _hand_pruned(sparse):
    """conv1 loses 90 of its 450 weights, fc3 its first class's 84 (32x32 input, 10 classes)."""
    conv1 = torch.ones_like(sparse.conv1.mask)
    conv1.view(-1)[:90] = False
    fc3 = torch.ones_like(sparse.fc3.mask)
    fc3[0] = False
    sparse.conv1.set_mask(conv1)
    sparse.fc3.set_mask(fc3)
    return sparse


def test_overall_sparsity_weights_layers_by_size_over_the_chosen_layers(sparse):
    layers = layer_sparsity(_hand_pruned(sparse))
    assert [(layer.name, layer.zeros, layer.total) for layer in layers] == [
        ("conv1", 90, 450), ("conv2", 0, 2400), ("fc1", 0, 48000), ("fc2", 0, 10080), ("fc3", 84, 840)]
    assert overall_sparsity(layers) == pytest.approx(174 / 61770)          # 0.00282
    assert overall_sparsity(layers, ["conv1", "fc3"]) == pytest.approx(0.134884, abs=1e-6)
    with pytest.raises(ValueError, match="no layer"):
        overall_sparsity(layers, ["fc9"])


def test_sparsity_counts_the_masks_even_where_a_foreign_optimizer_left_weights(sparse, tmp_path):
    from sparsenet.analysis import model_cost
    from sparsenet.checkpoints import lenet_from_state_dict, load_checkpoint, save_checkpoint

    _hand_pruned(sparse)
    with torch.no_grad():  # a user's own optimizer, without the mask hook, moved every weight
        for _, layer in sparse.sparse_layers():
            layer.weight.fill_(0.5)
    layers = layer_sparsity(sparse)
    assert layers[0].zeros == 90 and layers[-1].zeros == 84
    assert model_cost(sparse, 32).nonzero_params == 61770 - 174 + 6 + 16 + 120 + 84 + 10
    save_checkpoint(tmp_path / "sparse.pt", sparse.state_dict())
    loaded = lenet_from_state_dict(load_checkpoint(tmp_path / "sparse.pt"), sparse=True)
    assert int((loaded.conv1.weight == 0).sum()) == 90, "masks are applied on load"
    out = io.StringIO()
    interpret_sparsity(loaded, file=out)
    assert out.getvalue().splitlines()[0] == "conv1 (sparsity = 0.20): 90 weights are zero out of 450"


def test_macs_and_params_of_lenet_match_a_hand_computation():
    from sparsenet.analysis import model_cost
    from sparsenet.models import LeNet

    cost = model_cost(LeNet(num_classes=10, image_size=64), 64)
    conv1 = 60 * 60 * 6 * 3 * 5 * 5        # output positions × weights
    conv2 = 26 * 26 * 16 * 6 * 5 * 5
    fc = 16 * 13 * 13 * 120 + 120 * 84 + 84 * 10
    assert cost.macs == conv1 + conv2 + fc == 3_577_800
    weights = 6 * 3 * 25 + 16 * 6 * 25 + 16 * 13 * 13 * 120 + 120 * 84 + 84 * 10
    assert cost.params == weights + 6 + 16 + 120 + 84 + 10
    assert cost.nonzero_macs == cost.macs


def test_nonzero_macs_count_only_surviving_weights(sparse):
    from sparsenet.analysis import model_cost

    prune_model(sparse, "structured", 0.5, "filters")
    cost = model_cost(sparse, 32)
    conv1_kept = 28 * 28 * 3 * 3 * 25
    conv2_kept = 10 * 10 * 8 * 6 * 25   # conv2 keeps 8 filters but still reads all 6 inputs
    fc = 400 * 60 + 120 * 42 + 84 * 10
    assert cost.nonzero_macs == conv1_kept + conv2_kept + fc
