"""Structure-pruned SparseNet → a smaller *dense* LeNet with the removed parts physically gone.

Between two consecutive layers a channel / unit ``c`` can go when either side makes it useless:
the producer's filter ``c`` is entirely zero, bias included (its activation is ReLU(0) = 0), or
every weight of the consumer that reads ``c`` is zero.  Removing it then changes no output, so
the compact model computes what the masked model computes, with fewer MACs.  conv2 → fc1 is
sliced through the flatten: channel ``c`` owns fc1's inputs ``c·s² … (c+1)·s² − 1``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sparsenet.models import LeNet, sparse_layers
from sparsenet.options import LAYER_NAMES


def _producer_dead(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight.detach().flatten(1)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros(weight.shape[0])
    return (weight == 0).all(dim=1) & (bias == 0)


def _consumer_dead(layer: nn.Module, channels: int) -> torch.Tensor:
    """Input channels of ``layer`` no weight reads (fc1's inputs are grouped per conv2 channel)."""
    weight = layer.weight.detach()
    per_input = weight.transpose(0, 1).reshape(channels, -1)
    return (per_input == 0).all(dim=1)


def kept_channels(model: LeNet) -> list[torch.Tensor]:
    """For each of the four boundaries (conv1|conv2, conv2|fc1, fc1|fc2, fc2|fc3): a keep mask."""
    keeps = []
    for producer_name, consumer_name in zip(LAYER_NAMES[:-1], LAYER_NAMES[1:]):
        producer, consumer = getattr(model, producer_name), getattr(model, consumer_name)
        width = producer.weight.shape[0]
        dead = _producer_dead(producer) | _consumer_dead(consumer, width)
        keep = ~dead
        if not keep.any():  # a zero-width layer cannot be built; one idle unit is harmless
            keep[0] = True
        keeps.append(keep)
    return keeps


@torch.no_grad()
def compact(model: LeNet) -> LeNet:
    """A dense LeNet without the removable filters, channels and units of ``model``.

    Works on any LeNet / SparseNet; a SparseNet's masks decide what is zero, even where its stored
    weights are not (an optimizer that ignores the masks).  ``model`` itself is left as it is (the
    compact copy is built on the CPU).
    """
    model = copy.deepcopy(model).cpu()
    for _, layer in sparse_layers(model):  # what the forward pass uses, whatever an optimizer stored
        layer.apply_mask()
    k1, k2, k3, k4 = kept_channels(model)
    side = model.flat_side
    features = k2.repeat_interleave(side * side)  # conv2 channel → its fc1 inputs
    small = LeNet(model.num_classes, model.image_size, model.in_channels,
                  (int(k1.sum()), int(k2.sum()), int(k3.sum()), int(k4.sum())))
    slices = {
        "conv1": (k1, slice(None)),
        "conv2": (k2, k1),
        "fc1": (k3, features),
        "fc2": (k4, k3),
        "fc3": (slice(None), k4),
    }
    for name, (rows, cols) in slices.items():
        source, target = getattr(model, name), getattr(small, name)
        target.weight.copy_(source.weight[rows][:, cols])
        target.bias.copy_(source.bias[rows])
    return small
