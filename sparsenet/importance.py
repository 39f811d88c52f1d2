"""Importance scores: how much each weight, filter or channel matters (lowest is pruned first).

Scores only; :mod:`sparsenet.pruning` turns them into masks.

- ``magnitude``: ``|w|`` (Han et al. 2015);
- ``random``: uniform noise from a seeded generator — the baseline every criterion must beat;
- ``taylor``: first-order Taylor importance ``|w · ∂L/∂w|`` (Molchanov et al. 2019), the
  loss change removing the weight would cause to first order, summed over a few training
  batches (:func:`taylor_scores`);
- per structure (a filter = an output slice, a channel = an input slice): ``l2``, the slice's
  L2 norm (like ``torch.nn.utils.prune.ln_structured(n=2)``), or ``taylor``, the sum of its
  weights' Taylor scores (:func:`slice_scores`).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from sparsenet import training_forward
from sparsenet.models import SparseConv2d, SparseLinear, sparse_layers
from sparsenet.options import PRUNE_CRITERIA

SparseLayer = SparseConv2d | SparseLinear
UNSTRUCTURED = ("magnitude", "random", "taylor")


def uses_taylor(method: str, criterion: str) -> bool:
    """Whether pruning by ``method`` (and, structured, ``criterion``) ranks by Taylor importance."""
    return method == "taylor" or (method == "structured" and criterion == "taylor")


def weight_scores(layer: SparseLayer, method: str, generator: torch.Generator | None = None,
                  taylor: torch.Tensor | None = None) -> torch.Tensor:
    """One score per weight of ``layer`` for an unstructured ``method``.

    ``taylor`` is the layer's entry of :func:`taylor_scores`, needed for ``method="taylor"``.
    """
    if method == "magnitude":
        return layer.weight.detach().abs()
    if method == "random":
        return torch.rand(layer.weight.shape, generator=generator).to(layer.weight.device)
    if method == "taylor":
        if taylor is None:
            raise ValueError("taylor importance needs the accumulated scores (taylor_scores)")
        return taylor
    raise ValueError(f"unknown unstructured method {method!r}; expected one of: {', '.join(UNSTRUCTURED)}")


def slice_scores(weight: torch.Tensor, mask: torch.Tensor, dim: int, criterion: str,
                 taylor: torch.Tensor | None = None) -> torch.Tensor:
    """One score per slice of ``weight`` along ``dim`` (0: filters / units, 1: channels / inputs).

    ``l2``: the L2 norm of the slice's surviving weights; ``taylor``: the sum of their Taylor
    scores (``taylor`` from :func:`taylor_scores`).
    """
    if criterion == "l2":
        values = weight.detach() * mask
        return values.transpose(0, dim).flatten(1).norm(p=2, dim=1)
    if criterion == "taylor":
        if taylor is None:
            raise ValueError("the taylor criterion needs the accumulated scores (taylor_scores)")
        return (taylor * mask).transpose(0, dim).flatten(1).sum(dim=1)
    raise ValueError(f"unknown criterion {criterion!r}; expected one of: {', '.join(PRUNE_CRITERIA)}")


def taylor_scores(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  compiled_conv: bool = True) -> dict[str, torch.Tensor]:
    """``Σ_b |w ⊙ ∂L_b/∂w|`` for every sparse layer's weight, over the given (images, labels) batches.

    ``L_b`` is the batch's mean cross-entropy.  Each batch's product is taken in absolute value
    before summing, so opposite gradients of two batches do not cancel.  A pruned weight is zero
    and scores zero.  The model's weights and its ``.grad`` fields are left as they were.  The
    gradients are training's (:mod:`sparsenet.training_forward`, ``compiled_conv`` as in training).
    """
    training_forward.refuse_hooked(model)
    layers = dict(sparse_layers(model))
    totals = {name: torch.zeros_like(layer.weight, dtype=torch.float32) for name, layer in layers.items()}
    saved_grads = {name: param.grad for name, param in model.named_parameters()}
    was_training = model.training
    model.train()
    try:
        for images, labels in batches:
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = nn.functional.cross_entropy(training_forward.forward(model, images, compiled_conv), labels)
                loss.backward()
            with torch.no_grad():
                for name, layer in layers.items():
                    if layer.weight.grad is not None:
                        totals[name] += (layer.weight * layer.weight.grad).abs()
    finally:
        for name, param in model.named_parameters():
            param.grad = saved_grads[name]
        model.train(was_training)
    return totals
