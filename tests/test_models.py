import subprocess
import sys

import pytest
import torch

from sparsenet.data import Split, BatchLoader
from sparsenet.checkpoints import load_checkpoint, save_checkpoint
from sparsenet.models import LeNet, SparseConv2d, SparseLinear, SparseNet, feature_side
from sparsenet.pruning import prune_model
from sparsenet import training_forward
from sparsenet.training import fit


def test_lenet_shapes_follow_the_input_size():
    assert feature_side(64) == 13
    net = LeNet(num_classes=10, image_size=64)
    assert net.fc1.in_features == 16 * 13 * 13
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    small = LeNet(num_classes=4, image_size=32)
    assert small.fc1.in_features == 16 * 5 * 5


def test_sparsenet_is_built_from_sparse_layers_and_loads_dense_weights(dense, sparse):
    assert isinstance(sparse.conv1, SparseConv2d) and isinstance(sparse.fc3, SparseLinear)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(dense(x), sparse(x))
    assert torch.equal(sparse.fc1.weight, dense.fc1.weight)


def test_forward_uses_the_masked_weight(sparse):
    layer = sparse.fc3
    mask = torch.rand_like(layer.weight) > 0.5
    layer.set_mask(mask)
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        layer.weight.add_(1.0)  # corrupt the stored weight: the forward must still mask it
    expected = torch.nn.functional.linear(x, layer.weight * mask, layer.bias)
    assert torch.allclose(layer(x), expected)


def test_masked_weights_stay_exactly_zero_after_optimizer_steps(sparse):
    prune_model(sparse, "magnitude", 0.7, scope="layer")
    zero_before = {name: (p == 0) for name, p in sparse.named_parameters() if name.endswith("weight")}
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (64, 3, 32, 32), dtype=torch.uint8, generator=generator)
    split = Split(images, torch.randint(0, 10, (64,), generator=generator))
    loader = BatchLoader(split, 16, 0.5, 0.25, torch.device("cpu"), shuffle=True)
    before = {k: v.clone() for k, v in sparse.state_dict().items()}
    fit(sparse, loader, loader, epochs=2, lr=0.05)  # large lr: Adam would move anything unmasked
    for name, param in sparse.named_parameters():
        if name.endswith("weight"):
            mask = getattr(sparse, name.split(".")[0]).mask
            assert torch.equal(zero_before[name], ~mask)
            assert (param[~mask] == 0).all(), name
            assert not torch.equal(param[mask], before[name][mask]), f"{name} did not train"


def test_pruned_weights_stay_zero_even_with_adam_momentum_from_before_pruning(sparse):
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    optimizer = torch.optim.Adam(sparse.parameters(), lr=0.1)
    from sparsenet.models import enforce_masks_after_steps

    enforce_masks_after_steps(optimizer, sparse)
    for _ in range(3):  # build up momentum on every weight
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(sparse(x), y).backward()
        optimizer.step()
    prune_model(sparse, "random", 0.5, scope="layer", seed=1)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(sparse(x), y).backward()
        optimizer.step()
    for _, layer in sparse.sparse_layers():
        assert (layer.weight[~layer.mask] == 0).all()


def test_checkpoint_is_a_plain_state_dict_with_named_masks(tmp_path, sparse):
    prune_model(sparse, "structured", 0.5, "filters")
    path = tmp_path / "sparse.pt"
    save_checkpoint(path, sparse.state_dict())
    state = torch.load(path, weights_only=True)
    for layer in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        assert state[f"{layer}.mask"].dtype == torch.bool
        assert f"{layer}.bias_mask" in state
    again = SparseNet(10, 32)
    again.load_state_dict(load_checkpoint(path))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again(x), sparse(x))


def test_saving_the_same_model_twice_gives_identical_bytes(tmp_path, sparse):
    save_checkpoint(tmp_path / "a.pt", sparse.state_dict())
    save_checkpoint(tmp_path / "b.pt", sparse.state_dict())
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert not list(tmp_path.glob("*.tmp*")), "no temporary file is left behind"


def test_rebuilding_from_a_state_dict_infers_widths_and_image_size(sparse):
    from sparsenet.compact import compact
    from sparsenet.checkpoints import lenet_from_state_dict

    prune_model(sparse, "structured", 0.5, "filters")
    small = compact(sparse)
    again = lenet_from_state_dict(small.state_dict(), sparse=False)
    assert again.widths == small.widths == (3, 8, 60, 42) and again.image_size == 32
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again(x), small(x))


def test_a_checkpoint_that_does_not_fit_gives_one_clear_error(tmp_path, dense):
    import pytest

    from sparsenet.errors import SparseNetError
    from sparsenet.checkpoints import load_model

    path = tmp_path / "dense.pt"
    save_checkpoint(path, dense.state_dict())
    with pytest.raises(SparseNetError, match="checkpoint is for 10 classes, the prepared data has 4"):
        load_model(path, sparse=False, image_size=32, num_classes=4)
    with pytest.raises(SparseNetError, match="does not fit 64x64 input; re-run dvc repro"):
        load_model(path, sparse=False, image_size=64, num_classes=10)
    with pytest.raises(SparseNetError, match="expected a SparseNet with masks"):
        load_model(path, sparse=True, image_size=32, num_classes=10)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(SparseNetError, match="tensor.pt: holds a Tensor, not a state dict"):
        load_model(tmp_path / "tensor.pt", sparse=False, image_size=32, num_classes=10)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SparseNetError, match="junk.pt: not a SparseNet checkpoint"):
        load_model(tmp_path / "junk.pt", sparse=False, image_size=32, num_classes=10)


def _trained_after_steps(threads: int, model_type: type[LeNet]) -> dict[str, torch.Tensor]:
    """A LeNet of 64-pixel input after three Adam steps of batch 128 on ``threads`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = model_type(num_classes=10, image_size=64).to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
        draws = torch.Generator().manual_seed(1)
        for _ in range(3):
            images = torch.randn(128, 3, 64, 64, generator=draws).contiguous(memory_format=torch.channels_last)
            labels = torch.randint(0, 10, (128,), generator=draws)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(training_forward.forward(model, images), labels).backward()
            optimizer.step()
        return {name: value.detach().clone() for name, value in model.state_dict().items()}
    finally:
        torch.set_num_threads(before)


def test_training_gives_the_same_bytes_on_one_thread_and_on_two():
    # Two threads may split a small layer's weight-gradient sum over the batch (fc3's 10 x 84)
    # and add the parts in another order; a sweep's one-thread points must train what a
    # two-thread `dvc repro` trains.
    for model_type in (LeNet, SparseNet):
        one, two = _trained_after_steps(1, model_type), _trained_after_steps(2, model_type)
        assert all(torch.equal(one[name], two[name]) for name in one), model_type.__name__


def test_one_thread_restores_the_thread_count():
    from sparsenet.fixed_threads import one_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_measured_accuracy_has_the_same_logits_on_one_thread_and_on_two():
    # A test batch of a few images (7 here) makes PyTorch's BLAS split fc1's product among two
    # threads differently: evaluation computes it as training does.
    torch.manual_seed(0)
    model = LeNet(num_classes=10, image_size=64).eval()
    images = torch.randn(7, 3, 64, 64)
    before = torch.get_num_threads()
    logits = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                logits[threads] = training_forward.forward(model, images)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(logits[1], logits[2])


def test_the_models_module_loads_no_compiled_code():
    # model(x) is plain PyTorch: importing and calling the models builds and loads nothing.
    code = ("import sys, torch; from sparsenet.models import SparseNet; "
            "SparseNet(num_classes=10, image_size=32)(torch.randn(2, 3, 32, 32)).sum().backward(); "
            "print(sorted(m for m in sys.modules if m.startswith('sparsenet')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["sparsenet", "sparsenet.models", "sparsenet.options"]


@pytest.mark.parametrize("conv_block", ["compiled", "pytorch"])
def test_training_forward_computes_what_the_plain_model_computes(conv_block):
    torch.manual_seed(0)
    model = SparseNet(num_classes=10, image_size=64).to(memory_format=torch.channels_last)
    model.conv1.set_mask(torch.rand_like(model.conv1.weight) > 0.5)
    images = torch.randn(16, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (16,))
    grads = []
    for forward in (model, lambda x: training_forward.forward(model, x, conv_block == "compiled")):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(images), labels)
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
        grads[-1]["loss"] = loss.detach()
    plain, trained = grads
    for name in plain:
        torch.testing.assert_close(trained[name], plain[name], rtol=1e-4, atol=1e-5, msg=name)


def test_the_plain_model_runs_hooks_and_trains_under_torch_prune():
    from torch.nn.utils import prune

    torch.manual_seed(0)
    net = LeNet(10, 32)
    prune.l1_unstructured(net.conv1, "weight", amount=0.5)  # recomputes the weight in a forward pre-hook
    calls = []
    net.conv2.register_forward_hook(lambda *_: calls.append(1))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    assert len(calls) == 2
    assert not net.conv1.weight[net.conv1.weight_mask == 0].any()


def test_training_refuses_a_model_pruned_by_torch_prune_in_one_line():
    # The training forward reads the parameters directly: torch's pruning hook would not run
    # (and its recomputed weight would break the second backward), so fit says so up front.
    from torch.nn.utils import prune

    from sparsenet.errors import SparseNetError
    from sparsenet.importance import taylor_scores

    net = LeNet(4, 32)
    prune.l1_unstructured(net.fc1, "weight", amount=0.5)
    data = Split(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 4, (16,)))
    loader = BatchLoader(data, 8, 0.5, 0.25, torch.device("cpu"))
    for call in (lambda: fit(net, loader, loader, epochs=1, lr=0.01), lambda: taylor_scores(net, list(loader))):
        with pytest.raises(SparseNetError, match="torch.nn.utils.prune.remove") as err:
            call()
        assert "\n" not in str(err.value)
