"""LeNet's forward pass as training and its accuracy measurements compute it.

``model(x)`` is plain PyTorch (:mod:`sparsenet.models`): what a user exports, traces or compiles.
Training calls :func:`forward` instead, which computes the same function in two ways of its own:

- each fully connected product on one thread, in one fixed order (:mod:`sparsenet.fixed_threads`),
  so a trained model and its measured accuracy do not depend on the number of threads;
- with ``compiled_conv`` (params ``train.conv_block: compiled``, the default), each
  ``relu(max_pool2d(conv(x), 2))`` of a gradient-taking CPU step through the compiled block and
  its backward (:mod:`sparsenet.conv_block`), faster than PyTorch's on LeNet's few channels and
  summed in a fixed order too.  Where it cannot run (no compiler, a GPU) PyTorch computes it.

It reads the layers' (masked) parameters directly, either way, so module hooks do not run: it
is for the project's own models, which have none.  A model carrying ``torch.nn.utils.prune``'s
reparametrisation (its weight recomputed in a hook) is refused by :func:`refuse_hooked`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.nn.utils.prune
from torch import nn

from sparsenet import fixed_threads
from sparsenet.conv_block import conv_pool_relu
from sparsenet.errors import SparseNetError
from sparsenet.models import LeNet, max_pool_2x2, used_parameters


def forward(model: nn.Module, x: torch.Tensor, compiled_conv: bool = True) -> torch.Tensor:
    """``model(x)`` as training computes it (see the module docstring); another module: ``model(x)``."""
    if not isinstance(model, LeNet):
        return model(x)
    x = conv_block(model.conv1, x, compiled_conv)
    x = conv_block(model.conv2, x, compiled_conv)
    x = torch.flatten(x, 1)
    x = F.relu(fully_connected(model.fc1, x))
    x = F.relu(fully_connected(model.fc2, x))
    return fully_connected(model.fc3, x)


def refuse_hooked(model: nn.Module) -> None:
    """One error line for a model this forward would compute wrongly: one pruned by ``torch.nn.utils.prune``."""
    if torch.nn.utils.prune.is_pruned(model):
        raise SparseNetError("the model carries torch.nn.utils.prune's masks (a weight recomputed in a forward "
                             "hook), which the training forward does not run: call torch.nn.utils.prune.remove on "
                             "each pruned layer first, or prune with SparseNet's masks (sparsenet.pruning)")


def conv_block(conv: nn.Conv2d, x: torch.Tensor, compiled: bool) -> torch.Tensor:
    """``relu(max_pool2d(conv(x), 2))``, through the compiled block where a CPU step takes gradients.

    Pooling before the ReLU gives the same values and gradients (both are monotone; ties go to
    the same element) while the ReLU touches a quarter of the data.
    """
    weight, bias = used_parameters(conv)
    if compiled and torch.is_grad_enabled() and x.device.type == "cpu" and _lenet_geometry(conv):
        return conv_pool_relu(x, weight, bias)
    return F.relu(max_pool_2x2(F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)))


def fully_connected(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, on CPU with each product on one thread (values independent of the thread count)."""
    if x.device.type == "cpu":
        return fixed_threads.linear(x, *used_parameters(layer))
    return layer(x)


def _lenet_geometry(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` is the plain stride-1, unpadded convolution the compiled block computes."""
    return (conv.stride == (1, 1) and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")
