"""The compiled training block against PyTorch's conv2d → max_pool2d → relu under autograd."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sparsenet import cbuild, conv_block
from sparsenet.models import SparseNet



def _can_build() -> bool:
    """A compiler and a vector extension are here (whether the kernels then build is tested)."""
    try:
        cbuild.compiler()
        cbuild.choose_isa()
    except cbuild.BuildError:
        return False
    return True


needs_kernels = pytest.mark.skipif(not _can_build(), reason="no C compiler / AVX2 here")


@needs_kernels
def test_the_kernels_build_for_the_pipelines_layers():
    assert conv_block.available()
    assert conv_block.kernels(3, 6, 5, 64, 64) is not None and conv_block.kernels(6, 16, 5, 30, 30) is not None


def reference(x, weight, bias):
    return F.relu(F.max_pool2d(F.conv2d(x, weight, bias), 2))


def grads(block, x, weight, bias, upstream):
    x, weight, bias = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    out = block(x, weight, bias)
    out.backward(upstream)
    return out.detach(), x.grad, weight.grad, bias.grad


def integer_case(n, cin, cout, side, seed=0):
    """Small integers: every sum is exact in float32, so gradients must match bit for bit, and
    the conv output holds many ties (the first element of a tied window must win, as in PyTorch)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (n, cin, side, side), generator=g).float().contiguous(memory_format=torch.channels_last)
    weight = torch.randint(-1, 2, (cout, cin, 5, 5), generator=g).float()
    bias = torch.randint(-2, 3, (cout,), generator=g).float()
    pooled = (side - 4) // 2
    upstream = torch.randint(-3, 4, (n, cout, pooled, pooled), generator=g).float()
    return x, weight, bias, upstream


@needs_kernels
@pytest.mark.parametrize("n, cin, cout, side", [(3, 3, 6, 64), (9, 6, 16, 30), (2, 3, 3, 33), (17, 1, 2, 12), (1, 2, 5, 10),
                                             (5, 17, 33, 11)])
def test_values_and_gradients_equal_pytorch_exactly_on_exact_sums(n, cin, cout, side):
    x, weight, bias, upstream = integer_case(n, cin, cout, side)
    ties = F.conv2d(x, weight, bias).unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)
    assert (ties == ties.amax(-1, keepdim=True)).sum(-1).gt(1).any()  # the case has tied windows
    ours, expected = grads(conv_block.conv_pool_relu, x, weight, bias, upstream), grads(reference, x, weight, bias, upstream)
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), ours, expected):
        assert torch.equal(a, b), name
    assert ours[0].is_contiguous(memory_format=torch.channels_last)


@needs_kernels
def test_gradients_match_autograd_on_real_values_in_both_memory_formats():
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(16, 6, 5, 5, generator=g), torch.randn(16, generator=g)
    weight[torch.rand(weight.shape, generator=g) < 0.8] = 0.0  # a pruned layer's masked weight
    upstream = torch.randn(20, 16, 13, 13, generator=g)
    x_nchw = torch.randn(20, 6, 30, 30, generator=g)
    x_nhwc = x_nchw.contiguous(memory_format=torch.channels_last)
    # A channels-last weight, as the pipeline's models have (.to(memory_format=channels_last)).
    for x, w in ((x_nchw, weight), (x_nhwc, weight), (x_nhwc, weight.contiguous(memory_format=torch.channels_last))):
        ours, expected = grads(conv_block.conv_pool_relu, x, w, bias, upstream), grads(reference, x, w, bias, upstream)
        if x is x_nhwc:  # the same oneDNN convolution: the same values
            assert torch.equal(ours[0], expected[0])
        for a, b in zip(ours[1:], expected[1:]):  # sums of thousands of terms, in another order
            assert (a - b).abs().max() <= 1e-5 * b.abs().max()


@needs_kernels
def test_nan_propagates_forward_and_backward_like_pytorch():
    x, weight, bias, upstream = integer_case(2, 3, 4, 16)
    x[0, 1, 3, 3] = float("nan")
    ours, expected = grads(conv_block.conv_pool_relu, x, weight, bias, upstream), grads(reference, x, weight, bias, upstream)
    assert ours[0].isnan().any()
    assert torch.equal(ours[0].isnan(), expected[0].isnan())
    torch.testing.assert_close(ours[0], expected[0], equal_nan=True, rtol=0, atol=0)
    assert torch.equal(ours[1], expected[1]) and torch.equal(ours[3], expected[3])  # input and bias
    # The weight gradient is NaN where a NaN input meets a gradient; oneDNN also multiplies the
    # NaN by the zeros of the windows' losers, so only NaN's presence is comparable.
    assert ours[2].isnan().any() and expected[2].isnan().any()


@needs_kernels
def test_same_bytes_whatever_the_thread_count():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(37, 3, 64, 64, generator=g).contiguous(memory_format=torch.channels_last)
    weight, bias, upstream = torch.randn(6, 3, 5, 5, generator=g), torch.randn(6, generator=g), torch.randn(37, 6, 30, 30, generator=g)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(grads(conv_block.conv_pool_relu, x, weight, bias, upstream))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@needs_kernels
def test_a_sparse_net_trains_through_the_block_and_evaluates_through_pytorch():
    torch.manual_seed(0)
    net = SparseNet(4, 32).to(memory_format=torch.channels_last)  # as the training stages hold it
    mask = torch.rand(net.conv2.weight.shape) > 0.5
    net.conv2.set_mask(mask)
    images = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    reference_net = SparseNet(4, 32).to(memory_format=torch.channels_last)
    reference_net.load_state_dict(net.state_dict())
    F.cross_entropy(net(images), torch.arange(8) % 4).backward()
    logits = images
    for conv in (reference_net.conv1, reference_net.conv2):  # the block by plain PyTorch ops
        logits = reference(logits, conv.masked_weight(), conv.masked_bias())
    logits = reference_net.fc3(F.relu(reference_net.fc2(F.relu(reference_net.fc1(logits.flatten(1))))))
    F.cross_entropy(logits, torch.arange(8) % 4).backward()
    for (name, a), b in zip(net.named_parameters(), reference_net.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert not net.conv2.weight.grad[~mask].any()  # pruned weights get no gradient
    with torch.no_grad():
        assert torch.equal(net.eval()(images), logits.detach())


def test_without_a_compiler_training_runs_on_pytorch_with_one_notice(tmp_path):
    script = """
import torch, torch.nn.functional as F
from sparsenet import conv_block
from sparsenet.models import LeNet
net = LeNet(3, 32)
for _ in range(2):
    F.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0])).backward()
assert not conv_block.available()
from sparsenet.training_stage import _device_name
print("trained", _device_name())
"""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"PATH": str(empty), "SPARSENET_CACHE": str(tmp_path)}  # no compiler anywhere on PATH
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    trained, device = result.stdout.rstrip("\n").split(" ", 1)
    assert trained == "trained" and device.endswith("training block: pytorch")
    if _can_build():  # a resume checkpoint from the compiled path would not be taken up, nor the reverse
        from sparsenet.training_stage import _device_name

        assert conv_block.available() and _device_name() != device
    notices = [line for line in result.stderr.splitlines() if line.startswith("sparsenet:")]
    assert len(notices) == 1 and "no C compiler found" in notices[0] and "PyTorch" in notices[0], result.stderr


def test_a_compiler_that_writes_nothing_gives_one_notice_naming_it(tmp_path):
    script = """
import torch
from sparsenet import conv_block
x, w = torch.randn(2, 3, 16, 16), torch.randn(4, 3, 5, 5, requires_grad=True)
conv_block.conv_pool_relu(x, w, None).sum().backward()
print(w.grad.shape == w.shape)
"""
    env = {**os.environ, "SPARSENET_CC": shutil.which("true") or "/bin/true", "SPARSENET_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and result.stdout == "True\n", result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "wrote an empty library" in lines[0] and "PyTorch" in lines[0], result.stderr


def test_a_layer_wider_than_the_kernels_take_runs_on_pytorch():
    filters = conv_block.MAX_FILTERS + 1  # would overflow a thread's stack in the compiled pooling
    x, weight, bias = torch.randn(1, 1, 2, 2), torch.randn(filters, 1, 1, 1), torch.zeros(filters)
    upstream = torch.randn(1, filters, 1, 1)
    ours = grads(conv_block.conv_pool_relu, x, weight, bias, upstream)
    expected = grads(reference, x, weight, bias, upstream)
    assert all(torch.equal(a, b) for a, b in zip(ours, expected))


@needs_kernels
def test_avx2_and_avx512_builds_give_the_same_bytes(monkeypatch):
    isas = [isa for isa in cbuild.ISA_FLAGS if cbuild.cpu_flags() >= cbuild.ISA_FLAGS[isa][0]]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 6, 30, 30, generator=g).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(16, 6, 5, 5, generator=g), torch.randn(16, generator=g)
    upstream = torch.randn(12, 16, 13, 13, generator=g)
    results = {}
    for isa in isas:
        library = conv_block._bind(cbuild.load(conv_block.source(6, 16, 5, 30, 30), isa))
        monkeypatch.setitem(conv_block._libraries, (6, 16, 5, 30, 30), library)
        results[isa] = grads(conv_block.conv_pool_relu, x, weight, bias, upstream)
    if len(results) < 2:
        pytest.skip("this CPU has one vector extension only")
    for other in results.values():
        assert all(torch.equal(a, b) for a, b in zip(results["avx2"], other))
    expected = grads(reference, x, weight, bias, upstream)
    for a, b in zip(results["avx2"][1:], expected[1:]):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


@needs_kernels
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True), (True, True, True)])
def test_only_the_gradients_asked_for_and_no_bias(needs):
    x, weight, bias, upstream = integer_case(4, 6, 16, 30, seed=4)
    for with_bias in (True, False):
        if not with_bias and not (needs[0] or needs[1]):
            continue
        results = []
        for block in (conv_block.conv_pool_relu, reference):
            args = [t.detach().clone().requires_grad_(need) for t, need in zip((x, weight, bias), needs)]
            if not with_bias:
                args[2] = None
            out = block(*args)
            out.backward(upstream)
            results.append([out.detach()] + [None if t is None else t.grad for t in args])
        for a, b in zip(*results):
            assert (a is None and b is None) or torch.equal(a, b)


@needs_kernels
def test_autocast_and_a_float64_default_dtype_fall_back_or_stay_float32():
    x, weight, bias, upstream = integer_case(2, 3, 6, 20, seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the conv would return bfloat16: PyTorch runs it
        out = conv_block.conv_pool_relu(x.clone().requires_grad_(), weight, bias)
        assert out.dtype == torch.bfloat16 and torch.equal(out, reference(x, weight, bias))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours = grads(conv_block.conv_pool_relu, x, weight, bias, upstream)
    finally:
        torch.set_default_dtype(default)
    expected = grads(reference, x, weight, bias, upstream)
    assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(ours, expected))
