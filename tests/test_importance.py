"""Importance scores: magnitude, Taylor (|w · dL/dw| summed over batches), per-slice criteria."""

import copy
import math

import pytest
import torch
from torch import nn

from sparsenet.importance import slice_scores, taylor_scores, uses_taylor
from sparsenet.models import SparseLinear
from sparsenet.pruning import prune_model


def identity_classifier() -> nn.Sequential:
    layer = SparseLinear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2))
        layer.bias.zero_()
    return nn.Sequential(layer)


def test_taylor_scores_match_a_hand_computed_case():
    # W = diag(2, 0.5), no bias: logits = W x, dL/dW = (softmax − onehot) xᵀ, and only the diagonal
    # weights are non-zero, so the scores there are |w00 · g00| and |w11 · g11|.  With
    # r = e/(1+e) = 0.7311 and t = 1/(1+e^−3.5) = 0.9707:
    #   x = (1, 2), label 0: logits (2, 1), softmax (r, 1 − r); g00 = −(1 − r), g11 = 2(1 − r)
    #       → |2 · g00| = 2(1 − r), |0.5 · g11| = 1 − r
    #   x = (2, 1), label 1: logits (4, 0.5), softmax (t, 1 − t); g00 = 2t, g11 = −t
    #       → |2 · g00| = 4t, |0.5 · g11| = 0.5t
    # summed: 2(1 − r) + 4t = 4.4207 and (1 − r) + 0.5t = 0.7543.  Summing the products before the
    # absolute value would give 3.3449 and 0.2165; |w|² · |g| or |g| alone other numbers again.
    model = identity_classifier()
    with torch.no_grad():
        model[0].weight.copy_(torch.diag(torch.tensor([2.0, 0.5])))
    batches = [(torch.tensor([[1.0, 2.0]]), torch.tensor([0])), (torch.tensor([[2.0, 1.0]]), torch.tensor([1]))]
    scores = taylor_scores(model, batches)
    r, t = math.e / (1 + math.e), 1 / (1 + math.exp(-3.5))
    expected = torch.tensor([[2 * (1 - r) + 4 * t, 0.0], [0.0, (1 - r) + 0.5 * t]])
    assert torch.allclose(scores["0"], expected, atol=1e-6)
    assert torch.allclose(expected, torch.tensor([[4.4207, 0.0], [0.0, 0.7543]]), atol=1e-4)
    assert model[0].weight.grad is None  # the model's gradients are left as they were


def test_taylor_scores_of_one_batch_are_the_products_of_weight_and_gradient():
    model = identity_classifier()
    x = torch.tensor([[1.0, 2.0]])
    (score,) = taylor_scores(model, [(x, torch.tensor([0]))]).values()
    p = 1 / (1 + math.e)
    assert torch.allclose(score, torch.tensor([[1 - p, 0.0], [0.0, 2 * (1 - p)]]), atol=1e-6)


def test_slice_scores_sum_taylor_per_filter_and_take_l2_norms():
    weight = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    taylor = torch.tensor([[0.1, 0.2], [0.5, 9.0]])  # 9.0 sits under the mask: not counted
    assert torch.allclose(slice_scores(weight, mask, 0, "l2"), torch.tensor([5.0, 1.0]))
    assert torch.allclose(slice_scores(weight, mask, 0, "taylor", taylor), torch.tensor([0.3, 0.5]))
    assert torch.allclose(slice_scores(weight, mask, 1, "taylor", taylor), torch.tensor([0.6, 0.2]))
    with pytest.raises(ValueError, match="criterion"):
        slice_scores(weight, mask, 0, "l1")


def test_structured_taylor_removes_the_filter_that_matters_least_not_the_smallest(sparse):
    # conv2's filter 0 gets the largest weights but no Taylor importance: l2 keeps it, taylor removes it.
    with torch.no_grad():
        sparse.conv2.weight[0] = 10.0
    taylor = {name: torch.ones_like(layer.weight) for name, layer in sparse.sparse_layers()}
    taylor["conv2"][0] = 0.0
    by_l2 = copy.deepcopy(sparse)
    prune_model(by_l2, "structured", 0.25, criterion="l2")
    prune_model(sparse, "structured", 0.25, criterion="taylor", taylor=taylor)
    assert not sparse.conv2.mask[0].any() and not sparse.conv2.bias_mask[0]
    assert sparse.conv2.mask.flatten(1).any(dim=1).sum() == 12  # 16 − round(0.25 · 16)
    assert by_l2.conv2.mask[0].all() and by_l2.conv2.mask.flatten(1).any(dim=1).sum() == 12


def test_global_taylor_ranks_all_layers_by_their_scores(sparse):
    taylor = {name: torch.full_like(layer.weight, 5.0) for name, layer in sparse.sparse_layers()}
    taylor["fc2"].fill_(0.1)  # fc2 holds 10,080 of the weights: everything pruned comes from it
    total = sum(layer.weight.numel() for _, layer in sparse.sparse_layers())
    amount = 5000 / total
    prune_model(sparse, "taylor", amount, scope="global", taylor=taylor)
    zeros = {name: int((~layer.mask).sum()) for name, layer in sparse.sparse_layers()}
    assert zeros["fc2"] == round(amount * total) and sum(zeros.values()) == zeros["fc2"]


def test_taylor_pruning_without_scores_is_refused(sparse):
    with pytest.raises(ValueError, match="taylor scores"):
        prune_model(sparse, "taylor", 0.5)
    with pytest.raises(ValueError, match="taylor scores"):
        prune_model(sparse, "structured", 0.5, criterion="taylor")
    assert uses_taylor("structured", "taylor") and not uses_taylor("structured", "l2")
    assert uses_taylor("taylor", "l2") and not uses_taylor("magnitude", "taylor")


def test_taylor_scores_of_lenet_match_plain_autograd(sparse):
    # The model's forward runs the compiled conv blocks under autograd; the reference is a plain
    # functional LeNet (PyTorch's conv2d, max_pool2d, relu) differentiated by autograd.
    import torch.nn.functional as F

    prune_model(sparse, "magnitude", 0.5)  # masked weights must score zero
    torch.manual_seed(3)
    batches = [(torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (8,)))
               for _ in range(2)]
    scores = taylor_scores(sparse, batches)

    names = [name for name, _ in sparse.sparse_layers()]
    params = {name: (getattr(sparse, name).masked_weight().detach().clone().requires_grad_(),
                     getattr(sparse, name).masked_bias().detach().clone()) for name in names}

    def forward(x):
        for conv in ("conv1", "conv2"):
            x = F.relu(F.max_pool2d(F.conv2d(x, *params[conv]), 2))
        x = torch.flatten(x, 1)
        x = F.relu(F.linear(x, *params["fc1"]))
        x = F.relu(F.linear(x, *params["fc2"]))
        return F.linear(x, *params["fc3"])

    expected = {name: torch.zeros_like(params[name][0]) for name in names}
    for images, labels in batches:
        grads = torch.autograd.grad(F.cross_entropy(forward(images), labels), [params[n][0] for n in names])
        for name, grad in zip(names, grads):
            expected[name] += (params[name][0].detach() * grad).abs()
    for name in names:
        assert torch.allclose(scores[name], expected[name], rtol=1e-4, atol=1e-7), name
        assert (scores[name][~getattr(sparse, name).mask] == 0).all()
