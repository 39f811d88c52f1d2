"""Sparsity per layer, the ``interpret_sparsity`` printout and model cost (params, MACs)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

import torch
from torch import nn

from sparsenet.models import SPARSE_LAYER_TYPES


@dataclass(frozen=True)
class LayerSparsity:
    """Pruned (masked) weights of one layer; for a layer without a mask, its zero weights."""

    name: str
    zeros: int
    total: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total


def layer_sparsity(model: nn.Module) -> list[LayerSparsity]:
    """Each weight layer's pruned weights, input to output.

    A sparse layer's are counted from its mask, whatever its stored weight holds (an optimizer
    that ignores the mask may leave non-zero values there; the forward pass never uses them).  A
    plain ``Conv2d`` / ``Linear`` layer (dense or compact LeNet) has no mask: its zeros count.
    """
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, SPARSE_LAYER_TYPES):
            layers.append(LayerSparsity(name, int((~module.mask).sum()), module.mask.numel()))
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            layers.append(LayerSparsity(name, int((module.weight == 0).sum()), module.weight.numel()))
    return layers


def overall_sparsity(layers: list[LayerSparsity], names: list[str] | tuple[str, ...] | None = None) -> float:
    """Pruned fraction of the weights of ``layers`` together (only those in ``names``, if given)."""
    chosen = [layer for layer in layers if names is None or layer.name in names]
    if not chosen:
        raise ValueError(f"no layer among {[layer.name for layer in layers]} is in {list(names or [])}")
    return sum(layer.zeros for layer in chosen) / sum(layer.total for layer in chosen)


def interpret_sparsity(model: nn.Module, file: TextIO | None = None) -> None:
    """Print ``<name> (sparsity = 0.xx): Z weights are zero out of N`` per weight layer."""
    out = file or sys.stdout
    for layer in layer_sparsity(model):
        print(f"{layer.name} (sparsity = {layer.sparsity:.2f}): {layer.zeros} weights are zero out of {layer.total}",
              file=out)


@dataclass(frozen=True)
class ModelCost:
    """Size and compute of one forward pass of one image.

    ``macs`` counts every weight of every layer (what a dense kernel computes); ``nonzero_macs``
    only the non-zero weights (what an ideal sparse kernel would compute).
    """

    params: int
    nonzero_params: int
    macs: int
    nonzero_macs: int


@torch.no_grad()
def model_cost(model: nn.Module, image_size: int, in_channels: int = 3) -> ModelCost:
    """Parameters and multiply-accumulates per image, from one traced forward pass."""
    positions: dict[nn.Module, int] = {}
    hooks = [module.register_forward_hook(lambda mod, _, out: positions.__setitem__(mod, out[0, 0].numel()))
             for module in model.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    try:
        device = next(model.parameters()).device
        model.eval()(torch.zeros(1, in_channels, image_size, image_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    macs = sum(positions[m] * m.weight.numel() for m in positions)
    nonzero_macs = sum(positions[m] * int((_used(m, "weight") != 0).sum()) for m in positions)
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((_used(m, name) != 0).sum()) for m in model.modules()
                  for name, p in m.named_parameters(recurse=False))
    return ModelCost(params, nonzero, macs, nonzero_macs)


def _used(module: nn.Module, name: str) -> torch.Tensor:
    """The values of a parameter the forward pass uses: a sparse layer's masked weight / bias."""
    if isinstance(module, SPARSE_LAYER_TYPES):
        return module.masked_weight() if name == "weight" else module.masked_bias()
    return getattr(module, name)
