"""Sparsity per layer, the ``interpret_sparsity`` printout, model cost (params, MACs) and speed."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import torch
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
    nonzero_macs = sum(positions[m] * int((m.weight != 0).sum()) for m in positions)
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return ModelCost(params, nonzero, macs, nonzero_macs)


@torch.no_grad()
def throughput(models: dict[str, nn.Module], image_size: int, batch_size: int = 256, repeats: int = 30,
               warmup: int = 10, in_channels: int = 3) -> dict[str, float]:
    """Inference images per second of each model: median over ``repeats`` timed batches.

    The models take turns batch by batch, so a drift in the machine's speed hits them alike.
    """
    inputs, seconds = {}, {name: [] for name in models}
    for name, model in models.items():
        device = next(model.parameters()).device
        x = torch.randn(batch_size, in_channels, image_size, image_size, device=device)
        inputs[name] = x.contiguous(memory_format=torch.channels_last)
        model.eval()
    for i in range(warmup + repeats):
        for name, model in models.items():
            cuda = inputs[name].is_cuda
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(inputs[name])
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return {name: batch_size / statistics.median(times) for name, times in seconds.items()}
