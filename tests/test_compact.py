import pytest
import torch

from sparsenet.compact import compact
from sparsenet.models import LeNet, SparseNet
from sparsenet.pruning import prune_model


def trained_like(image_size: int) -> SparseNet:
    torch.manual_seed(0)
    net = SparseNet.from_dense(LeNet(num_classes=10, image_size=image_size))
    with torch.no_grad():  # non-zero biases everywhere, as after training
        for _, layer in net.sparse_layers():
            layer.bias.uniform_(-0.5, 0.5)
    return net


@pytest.mark.parametrize("structure", ["filters", "channels"])
@pytest.mark.parametrize("image_size", [32, 64])
def test_compact_model_computes_what_the_masked_model_computes(structure, image_size):
    net = trained_like(image_size)
    prune_model(net, "structured", 0.5, structure)
    small = compact(net)
    x = torch.randn(16, 3, image_size, image_size)
    with torch.no_grad():
        assert (small(x) - net(x)).abs().max().item() <= 1e-5
    assert sum(p.numel() for p in small.parameters()) < 0.6 * sum(p.numel() for p in net.parameters())


def test_filter_pruning_halves_every_hidden_width_and_slices_the_flatten():
    net = trained_like(64)
    prune_model(net, "structured", 0.5, "filters")
    small = compact(net)
    assert small.widths == (3, 8, 60, 42)
    assert small.fc1.in_features == 8 * 13 * 13
    assert small.fc3.out_features == 10


def test_channel_pruning_removes_producers_whose_outputs_nobody_reads():
    net = trained_like(64)
    prune_model(net, "structured", 0.5, "channels")
    small = compact(net)
    # conv2 reads 3 of conv1's 6 channels; fc2 reads 60 of fc1's units; fc3 reads 42 of fc2's.
    assert small.widths[0] == 3 and small.widths[2] == 60 and small.widths[3] == 42


def test_unpruned_model_compacts_to_itself():
    net = trained_like(32)
    small = compact(net)
    assert small.widths == net.widths
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(small(x), net(x), atol=1e-6)


def test_compact_checkpoint_holds_state_and_widths_and_rebuilds_with_weights_only(tmp_path):
    from sparsenet.checkpoints import compact_checkpoint, lenet_from_state_dict, load_checkpoint, save_checkpoint

    net = trained_like(64)
    prune_model(net, "structured", 0.5, "filters")
    small = compact(net)
    save_checkpoint(tmp_path / "compact.pt", compact_checkpoint(small))
    saved = torch.load(tmp_path / "compact.pt", weights_only=True)
    assert saved["widths"] == [3, 8, 60, 42] and saved["image_size"] == 64 and saved["num_classes"] == 10
    assert saved["state_dict"]["conv2.weight"].shape == (8, 3, 5, 5)
    again = lenet_from_state_dict(load_checkpoint(tmp_path / "compact.pt"), sparse=False)
    x = torch.randn(2, 3, 64, 64)
    assert again.widths == small.widths and torch.equal(again.eval()(x), small.eval()(x))
    saved["widths"] = [3, 8, 60, 41]
    with pytest.raises(ValueError, match=r"declares widths \[3, 8, 60, 41\] but its tensors have widths"):
        lenet_from_state_dict(saved, sparse=False)


def test_compaction_follows_the_masks_not_the_stored_weights():
    net = trained_like(64)
    prune_model(net, "structured", 0.5, "filters")
    with torch.no_grad():  # a user's own optimizer, without the mask hook, moved every weight
        for _, layer in net.sparse_layers():
            layer.weight.add_(0.01)
            layer.bias.add_(0.01)
    small = compact(net)
    assert small.widths == (3, 8, 60, 42)
    x = torch.randn(8, 3, 64, 64)
    with torch.no_grad():
        assert (small(x) - net(x)).abs().max().item() <= 1e-5
    assert (net.conv1.weight != 0).all(), "the model given is left as it was"
