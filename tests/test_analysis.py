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
