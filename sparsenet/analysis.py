"""Sparsity per layer and the ``interpret_sparsity`` printout."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from torch import nn

from sparsenet.models import sparse_layers


@dataclass(frozen=True)
class LayerSparsity:
    name: str
    zeros: int
    total: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total


def layer_sparsity(model: nn.Module) -> list[LayerSparsity]:
    """Exact zeros in each sparse layer's stored weight, input to output."""
    return [LayerSparsity(name, int((layer.weight == 0).sum()), layer.weight.numel())
            for name, layer in sparse_layers(model)]


def overall_sparsity(layers: list[LayerSparsity]) -> float:
    """Zero fraction over all sparse-layer weights together."""
    return sum(layer.zeros for layer in layers) / sum(layer.total for layer in layers)


def interpret_sparsity(model: nn.Module, file: TextIO | None = None) -> None:
    """Print ``<name> (sparsity = 0.xx): Z weights are zero out of N`` per sparse layer."""
    out = file or sys.stdout
    for layer in layer_sparsity(model):
        print(f"{layer.name} (sparsity = {layer.sparsity:.2f}): {layer.zeros} weights are zero out of {layer.total}",
              file=out)
