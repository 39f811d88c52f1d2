import pytest
import torch
from torch.nn.utils import prune as torch_prune

from sparsenet.models import SparseConv2d, SparseLinear, SparseNet
from sparsenet.pruning import prune_layer, prune_model, scheduled_sparsity

LAYERS = ("conv1", "conv2", "fc1", "fc2", "fc3")


def layer_sparsities(net):
    return {name: 1 - layer.mask.float().mean().item() for name, layer in net.sparse_layers()}


@pytest.mark.parametrize("method", ["magnitude", "random"])
@pytest.mark.parametrize("amount", [0.3, 0.9])
def test_unstructured_methods_hit_the_requested_sparsity(sparse, method, amount):
    prune_model(sparse, method, amount, scope="layer", seed=3)
    for name, layer in sparse.sparse_layers():
        assert int((layer.weight == 0).sum()) == round(amount * layer.weight.numel()), name


def test_structured_filters_zero_whole_filters_with_their_bias(sparse):
    prune_model(sparse, "structured", 0.5, "filters")
    for name in ("conv1", "conv2", "fc1", "fc2"):
        layer = getattr(sparse, name)
        rows = layer.weight.flatten(1)
        dead = (rows == 0).all(dim=1)
        assert dead.sum().item() == round(0.5 * rows.shape[0]), name
        assert ((rows != 0).all(dim=1) | dead).all(), f"{name}: a filter is only partly pruned"
        assert (layer.bias[dead] == 0).all() and not layer.bias_mask[dead].any()
    assert (sparse.fc3.weight != 0).all(), "class outputs must never be pruned"


def test_structured_channels_zero_whole_input_channels(sparse):
    prune_model(sparse, "structured", 0.5, "channels")
    assert (sparse.conv1.weight != 0).all(), "the image's colour channels are kept"
    for name in ("conv2", "fc1", "fc2", "fc3"):
        layer = getattr(sparse, name)
        columns = layer.weight.transpose(0, 1).flatten(1)
        dead = (columns == 0).all(dim=1)
        assert dead.sum().item() == round(0.5 * columns.shape[0]), name
        assert ((columns != 0).all(dim=1) | dead).all()
    assert (sparse.fc3.weight != 0).any(dim=1).all()


@pytest.mark.parametrize("method,structure", [("magnitude", "filters"), ("random", "filters"),
                                              ("structured", "filters"), ("structured", "channels")])
def test_masks_only_lose_entries_across_rounds(sparse, method, structure):
    previous = {name: layer.mask.clone() for name, layer in sparse.sparse_layers()}
    for round_index in range(1, 5):
        with torch.no_grad():  # training between rounds changes magnitudes
            for p in sparse.parameters():
                p.add_(torch.randn_like(p) * 0.05)
            sparse.apply_masks()
        prune_model(sparse, method, scheduled_sparsity(0.8, round_index, 4, "cubic"), structure, seed=0,
                    round_index=round_index)
        for name, layer in sparse.sparse_layers():
            assert not (layer.mask & ~previous[name]).any(), f"{name}: a pruned weight came back"
            previous[name] = layer.mask.clone()


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_every_class_output_keeps_a_weight(sparse, method):
    prune_model(sparse, method, 0.99, scope="layer", seed=0)
    assert sparse.fc3.mask.any(dim=1).all()
    assert (sparse.fc3.weight != 0).any(dim=1).all(), "each class output still reads a non-zero weight"
    assert sparse.fc3.mask.sum() == 10, "exactly one weight per class output survives 99%"


def test_random_pruning_is_reproducible_from_the_seed(dense):
    masks = []
    for seed in (5, 5, 6):
        net = SparseNet.from_dense(dense)
        prune_model(net, "random", 0.5, seed=seed, round_index=1)
        masks.append(net.fc1.mask.clone())
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])


def test_schedules_give_the_documented_values_and_end_at_the_target():
    assert [scheduled_sparsity(0.9, r, 3, "linear") for r in (1, 2, 3)] == pytest.approx([0.3, 0.6, 0.9])
    assert [scheduled_sparsity(0.9, r, 3, "constant") for r in (1, 2, 3)] == [0.9, 0.9, 0.9]
    # Zhu & Gupta: s_t = s_f + (s_i - s_f)(1 - t/n)^3 with s_i = 0, s_f = 0.8, n = 4
    cubic = [scheduled_sparsity(0.8, t, 4, "cubic") for t in (1, 2, 3, 4)]
    assert cubic == pytest.approx([0.8 - 0.8 * 0.75 ** 3, 0.8 - 0.8 * 0.5 ** 3, 0.8 - 0.8 * 0.25 ** 3, 0.8])
    assert cubic == pytest.approx([0.4625, 0.7, 0.7875, 0.8])
    with pytest.raises(ValueError):
        scheduled_sparsity(0.9, 4, 3, "linear")
    with pytest.raises(ValueError, match="constant, linear, cubic"):
        scheduled_sparsity(0.9, 1, 3, "exponential")


def _twin_layers(kind):
    torch.manual_seed(1)
    if kind == "conv":
        ours, theirs = SparseConv2d(6, 16, 5), torch.nn.Conv2d(6, 16, 5)
    else:
        ours, theirs = SparseLinear(120, 84), torch.nn.Linear(120, 84)
    theirs.load_state_dict({k: v for k, v in ours.state_dict().items() if "mask" not in k})
    return ours, theirs


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("amount", [0.2, 0.55, 0.9])
def test_magnitude_masks_equal_torch_l1_unstructured(kind, amount):
    ours, theirs = _twin_layers(kind)
    prune_layer(ours, "magnitude", amount)
    torch_prune.l1_unstructured(theirs, "weight", amount=amount)
    assert torch.equal(ours.mask, theirs.weight_mask.bool())
    assert torch.equal(ours.weight, theirs.weight)


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("amount", [0.25, 0.5, 0.75])
def test_structured_filter_masks_equal_torch_ln_structured(kind, amount):
    ours, theirs = _twin_layers(kind)
    prune_layer(ours, "structured", amount, "filters")
    torch_prune.ln_structured(theirs, "weight", amount=amount, n=2, dim=0)
    assert torch.equal(ours.mask, theirs.weight_mask.bool())


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_structured_channel_masks_equal_torch_ln_structured_on_inputs(kind):
    ours, theirs = _twin_layers(kind)
    prune_layer(ours, "structured", 0.5, "channels")
    torch_prune.ln_structured(theirs, "weight", amount=0.5, n=2, dim=1)
    assert torch.equal(ours.mask, theirs.weight_mask.bool())


def test_unknown_method_is_refused(sparse):
    with pytest.raises(ValueError, match="magnitude, random, taylor, structured"):
        prune_model(sparse, "lottery", 0.5)


def test_global_magnitude_masks_equal_torch_global_unstructured(dense):
    import copy

    net, twin = SparseNet.from_dense(dense), copy.deepcopy(dense)
    prune_model(net, "magnitude", 0.8, scope="global")
    torch_prune.global_unstructured([(getattr(twin, name), "weight") for name in LAYERS],
                                    pruning_method=torch_prune.L1Unstructured, amount=0.8)
    for name in LAYERS:
        assert torch.equal(getattr(net, name).mask, getattr(twin, name).weight_mask.bool()), name
    sparsities = layer_sparsities(net)
    total = sum(getattr(net, name).weight.numel() for name in LAYERS)
    zeros = sum(sparsities[name] * getattr(net, name).weight.numel() for name in LAYERS)
    assert zeros / total == pytest.approx(0.8, abs=1e-6)
    assert sparsities["fc1"] > sparsities["conv1"], "one threshold prunes the small fc1 weights most"


def test_global_pruning_keeps_every_class_output(sparse):
    prune_model(sparse, "magnitude", 0.999, scope="global")
    assert sparse.fc3.mask.any(dim=1).all()


def test_structured_pruning_ignores_global_scope(dense):
    a, b = SparseNet.from_dense(dense), SparseNet.from_dense(dense)
    prune_model(a, "structured", 0.5, "filters", scope="layer")
    prune_model(b, "structured", 0.5, "filters", scope="global")
    for (_, x), (_, y) in zip(a.sparse_layers(), b.sparse_layers()):
        assert torch.equal(x.mask, y.mask)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_excluded_layers_stay_dense_and_the_rest_reach_the_target(sparse, scope):
    prune_model(sparse, "magnitude", 0.8, scope=scope, exclude=("conv1", "fc3"))
    assert sparse.conv1.mask.all() and sparse.fc3.mask.all()
    pruned = [sparse.conv2, sparse.fc1, sparse.fc2]
    zeros = sum(int((~layer.mask).sum()) for layer in pruned)
    assert zeros == pytest.approx(0.8 * sum(layer.mask.numel() for layer in pruned), abs=3)


def test_global_pruning_protects_the_classifier_even_when_it_is_not_last_in_the_ranking(sparse):
    prune_model(sparse, "magnitude", 0.999, scope="global", exclude=("fc1",))
    assert sparse.fc3.mask.any(dim=1).all()


def test_excluding_an_unknown_layer_is_refused(sparse):
    with pytest.raises(ValueError, match="fc9.*conv1, conv2, fc1, fc2, fc3"):
        prune_model(sparse, "magnitude", 0.5, exclude=("fc9",))


@pytest.mark.parametrize("method", ["magnitude", "random"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_every_round_reaches_exactly_its_scheduled_sparsity(sparse, method, scope):
    """Later rounds prune the earlier rounds' zeros first, then new weights up to the round's target."""
    for round_index in range(1, 5):
        with torch.no_grad():  # training between rounds changes magnitudes
            for p in sparse.parameters():
                p.add_(torch.randn_like(p) * 0.05)
            sparse.apply_masks()
        target = scheduled_sparsity(0.9, round_index, 4, "cubic")
        prune_model(sparse, method, target, scope=scope, seed=0, round_index=round_index)
        layers = dict(sparse.sparse_layers())
        if scope == "layer":
            for name, layer in layers.items():
                assert int((~layer.mask).sum()) == round(target * layer.mask.numel()), (round_index, name)
        else:
            total = sum(layer.mask.numel() for layer in layers.values())
            zeros = sum(int((~layer.mask).sum()) for layer in layers.values())
            assert zeros == round(target * total), round_index
