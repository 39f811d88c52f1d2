import io
from contextlib import redirect_stdout

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
    prune_model(sparse, "magnitude", 0.63)
    ours = io.StringIO()
    interpret_sparsity(sparse, file=ours)
    seed = io.StringIO()
    with redirect_stdout(seed):
        seed_interpret_sparsity(sparse)
    assert ours.getvalue() == seed.getvalue()
    lines = ours.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert lines[0] == "conv1 (sparsity = 0.63): 284 weights are zero out of 450"


def test_overall_sparsity_weights_layers_by_size(sparse):
    prune_model(sparse, "magnitude", 0.5)
    layers = layer_sparsity(sparse)
    total = sum(layer.total for layer in layers)
    assert overall_sparsity(layers) == sum(layer.zeros for layer in layers) / total


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
