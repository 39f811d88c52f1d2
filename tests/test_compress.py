"""Deep Compression: k-means weight sharing, centroid fine-tuning, Huffman-coded checkpoints."""

from dataclasses import fields

import numpy as np
import pytest
import torch

from sparsenet.checkpoints import lenet_from_state_dict, load_checkpoint, load_model, save_checkpoint
from sparsenet.compressed import compressed_checkpoint, huffman_decode, huffman_encode
from sparsenet.packed import packed_checkpoint, same_tensors
from sparsenet.compress import kmeans_1d, shared_weights, tie_weights, untie_weights
from sparsenet.config import ConfigError, config_from_dict
from sparsenet.data import BatchLoader
from sparsenet.prepared import save_prepared
from sparsenet.sources import make_synthetic
from sparsenet.errors import SparseNetError
from sparsenet.models import SparseNet
from stages.compress import compress
from sparsenet.stage import Paths
from sparsenet.pruning import prune_model
from sparsenet.training import fit


def test_kmeans_by_hand():
    centroids, codes = kmeans_1d(torch.tensor([0.0, 0.1, 1.0, 1.1, 0.05]), 2)
    assert torch.allclose(centroids, torch.tensor([0.05, 1.05])) and codes.tolist() == [0, 0, 1, 1, 0]
    # evenly spaced start at 0, 10/3, 20/3, 10: the middle two stay empty and are dropped
    centroids, codes = kmeans_1d(torch.tensor([0.0, 0.0, 0.0, 10.0]), 4)
    assert centroids.tolist() == [0.0, 10.0] and codes.tolist() == [0, 0, 0, 1]
    # as many clusters as values: every value is its own centroid
    values = torch.tensor([0.3, -0.2, 0.7])
    centroids, codes = kmeans_1d(values, 8)
    assert torch.equal(centroids[codes], values)


def pruned_net(sparsity=0.9) -> SparseNet:
    torch.manual_seed(0)
    net = SparseNet(4, 32)
    prune_model(net, "magnitude", sparsity, scope="global")
    return net


def test_tied_layers_are_their_k_means_clusters_and_keep_their_masks():
    net = pruned_net()
    before = {name: layer.weight[layer.mask].detach().clone() for name, layer in net.sparse_layers()}
    masks = {name: layer.mask.clone() for name, layer in net.sparse_layers()}
    tie_weights(net, conv_bits=3, fc_bits=2)
    for name, layer in net.sparse_layers():
        # what makes a clustering k-means (a fixed point of Lloyd's steps), checked without the
        # clustering code: at most k shared values, each weight on the shared value nearest its
        # own, each shared value the mean of the weights on it
        values, original = layer.weight[layer.mask].detach(), before[name]
        shared = torch.unique(values)
        assert 1 < len(shared) <= (8 if name.startswith("conv") else 4), name
        nearest = shared[(original[:, None] - shared[None, :]).abs().argmin(dim=1)]
        assert torch.equal(values, nearest), name
        for value in shared:
            assert original[values == value].mean().item() == pytest.approx(value.item(), abs=1e-6), name
        assert torch.equal(layer.mask, masks[name]) and (layer.weight[~layer.mask] == 0).all()


def loaders():
    data = make_synthetic(96, 32, 4, 32, seed=1)
    train = BatchLoader(data.train, 16, 0.5, 0.25, torch.device("cpu"), shuffle=True, seed=0)
    test = BatchLoader(data.test, 32, 0.5, 0.25, torch.device("cpu"))
    return train, test


def test_each_shared_value_moves_by_the_summed_gradient_of_its_weights():
    net, plain = pruned_net(), pruned_net()
    tie_weights(net, 4, 3)
    tie_weights(plain, 4, 3)
    untie_weights(plain)  # the same weights, each its own parameter
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    for model in (net, plain):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    for name, layer in net.sparse_layers():
        centroids, codes = shared_weights(net)[name]
        weight_grad = getattr(plain, name).weight.grad.flatten()[layer.mask.flatten()]
        expected = torch.zeros(len(centroids)).index_add_(0, codes, weight_grad)
        got = layer.parametrizations.weight.original.grad
        assert torch.allclose(got, expected, atol=1e-6), name


def test_fine_tuning_moves_the_shared_values_not_the_grouping_or_the_masks():
    net = pruned_net()
    tie_weights(net, 8, 5)
    before = shared_weights(net)
    masks = {name: layer.mask.clone() for name, layer in net.sparse_layers()}
    train, test = loaders()
    fit(net, train, test, 1, 0.01)
    after = shared_weights(net)
    untie_weights(net)
    for name, layer in net.sparse_layers():
        assert torch.equal(after[name][1], before[name][1]), "each weight keeps its cluster"
        assert not torch.equal(after[name][0], before[name][0]), "the shared values trained"
        assert torch.equal(layer.mask, masks[name]) and (layer.weight[~layer.mask] == 0).all()
        assert torch.equal(layer.weight[layer.mask], after[name][0][after[name][1]])


def test_huffman_round_trip_and_damage():
    symbols = np.random.default_rng(0).geometric(0.3, 5000).clip(max=255).astype(np.uint8)
    coded = huffman_encode(symbols)
    assert len(coded) < 0.5 * len(symbols)  # a skewed distribution takes few bits per symbol
    assert np.array_equal(huffman_decode(coded, len(symbols)), symbols)
    with pytest.raises(ValueError, match="expected 4999"):
        huffman_decode(coded, 4999)
    with pytest.raises(ValueError):
        huffman_decode(coded[: len(coded) // 2], len(symbols))


def structured_net() -> SparseNet:
    torch.manual_seed(0)
    net = SparseNet(4, 32)
    prune_model(net, "structured", 0.5, "filters")  # masks whole filters and their biases
    return net


@pytest.mark.parametrize("make", [lambda: pruned_net(0.95), structured_net], ids=["magnitude", "filters"])
def test_a_compressed_checkpoint_decodes_to_the_tied_model(tmp_path, make):
    net = make()
    tie_weights(net, 8, 5)
    shared = shared_weights(net)
    untie_weights(net)
    save_checkpoint(tmp_path / "compressed.pt", compressed_checkpoint(net, shared))
    save_checkpoint(tmp_path / "packed.pt", packed_checkpoint(net.state_dict()))
    assert (tmp_path / "compressed.pt").stat().st_size < (tmp_path / "packed.pt").stat().st_size / 2
    decoded = lenet_from_state_dict(torch.load(tmp_path / "compressed.pt", weights_only=True), sparse=True)
    # (untying re-registers each weight after its bias: the same tensors, in another key order)
    assert same_tensors(dict(sorted(decoded.state_dict().items())), dict(sorted(net.state_dict().items())))
    assert not decoded.conv1.bias_mask.all() or not decoded.fc1.mask.all()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(decoded(x), net(x))


def _damaged(tmp_path, damage):
    net = pruned_net()
    tie_weights(net, 8, 5)
    checkpoint = compressed_checkpoint(net, shared_weights(net))
    damage(checkpoint)
    save_checkpoint(tmp_path / "damaged.pt", checkpoint)
    return tmp_path / "damaged.pt"


def _codes_with_top_value(checkpoint, layer, symbol):
    """``layer``'s codes stream replaced by one whose last code is ``symbol``."""
    entry = checkpoint["layers"][layer]["weight"]
    start, stop = entry["codes"]
    count = entry["gap_count"]  # magnitude masks of this model: one gap byte per kept weight
    codes = np.frombuffer(huffman_encode(np.array([0] * (count - 1) + [symbol], dtype=np.uint8)), dtype=np.uint8)
    checkpoint["bytes"] = torch.cat([checkpoint["bytes"], torch.from_numpy(codes.copy())])
    total = checkpoint["bytes"].numel()
    entry["codes"] = [total - codes.size, total]


@pytest.mark.parametrize("damage,message", [
    (lambda c: c.update(bytes=c["bytes"][:100]), r"conv1.weight: a slice \[.*\) beyond its 100 bytes"),
    (lambda c: c["layers"]["fc1"]["weight"].update(gap_count=-1), "fc1.weight: gap_count -1 does not fit"),
    (lambda c: c["layers"]["fc2"]["weight"].update(gap_count=c["layers"]["fc2"]["weight"]["gap_count"] - 1),
     "fc2.weight: a Huffman stream of [0-9]+ symbols, expected"),
    (lambda c: c["layers"]["fc1"]["weight"].update(shape=[3_000_000_000]), "fc1.weight: a shape"),
    (lambda c: _codes_with_top_value(c, "fc3", 200), "fc3.weight: a code beyond its .* shared values"),
    (lambda c: c["layers"]["fc2"]["bias"].update(values=[0, 3]), "fc2.bias: 3 values for 84 positions"),
    (lambda c: c["layers"]["conv1"].update(bias=None), "conv1.bias: TypeError"),
])
def test_a_damaged_compressed_file_gives_one_line_naming_the_part(tmp_path, damage, message):
    with pytest.raises(SparseNetError, match=message):
        load_model(_damaged(tmp_path, damage), True, 32)


def test_a_stream_with_bytes_after_its_end_is_refused():
    coded = huffman_encode(np.arange(10, dtype=np.uint8))
    with pytest.raises(ValueError, match="1 bytes after the end of a Huffman stream"):
        huffman_decode(coded + b"x", 10)
    with pytest.raises(ValueError, match="a Huffman stream of 10 symbols, expected 9"):
        huffman_decode(coded, 9)


@pytest.mark.parametrize("key,value", [("conv_bits", 9), ("fc_bits", 0), ("epochs", -1), ("lr", 0.0)])
def test_compress_params_are_validated(key, value):
    with pytest.raises(ConfigError, match=f"compress.{key} = {value!r} is not allowed"):
        config_from_dict({"compress": {key: value}})


def test_compress_step_without_fine_tuning_writes_the_k_means_model(tmp_path):
    cfg = config_from_dict({"train": {"batch_size": 32}, "compress": {"epochs": 0, "fc_bits": 2, "conv_bits": 2}})
    paths = Paths(**{f.name: tmp_path / getattr(Paths(), f.name) for f in fields(Paths)})
    save_prepared(make_synthetic(64, 32, 4, 32, seed=0), paths.prepared, {"skipped": []})
    paths.sparse_model.parent.mkdir(parents=True)
    save_checkpoint(paths.sparse_model, pruned_net().state_dict())
    assert compress(cfg, paths) == []
    decoded = lenet_from_state_dict(load_checkpoint(paths.compressed_model), sparse=True)
    sparse = load_checkpoint(paths.sparse_model)
    for name, layer in decoded.sparse_layers():
        assert torch.equal(layer.mask, sparse[f"{name}.mask"])
        assert len(torch.unique(layer.weight[layer.mask])) <= 4
        assert torch.equal(layer.bias, sparse[f"{name}.bias"]), "no fine-tuning: biases untouched"
