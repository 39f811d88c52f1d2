"""Pruning: importance scores → masks, one interface for every method.

- ``magnitude``, ``random``, ``taylor``: zero single weights, lowest score first (scores from
  :mod:`sparsenet.importance`; ``magnitude`` is like ``prune.l1_unstructured``);
- ``structured``: zero whole filters / output units (``structure="filters"``, with their bias) or
  whole input channels / input features (``structure="channels"``), lowest ``criterion`` first:
  ``l2`` norm (like ``prune.ln_structured(n=2)``) or summed ``taylor`` importance.  Per layer, the
  share to remove is the target (``uniform``) or a layer's own share from
  :mod:`sparsenet.sensitivity`; ``round_to`` rounds the kept count to a multiple.

Masks only ever lose entries: already-pruned weights are ranked first, so a later round keeps them
pruned.  The class outputs are never removed: ``filters`` skips the classifier, unstructured
methods keep each class's largest weight, and ``channels`` skips the first layer, whose inputs are
the image's colour channels.  At least one filter / channel survives in every pruned layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparsenet.importance import slice_scores, uses_taylor, weight_scores
from sparsenet.models import SparseConv2d, SparseLinear, sparse_layers
from sparsenet.options import (LAYER_NAMES, PRUNE_CRITERIA, PRUNE_METHODS, PRUNE_SCHEDULES, PRUNE_SCOPES,
                               PRUNE_STRUCTURES, STRUCTURE_KEEPS, default)

_FIRST = float("-inf")  # score of an already-pruned entry: pruned again before anything else
_NEVER = float("inf")   # score of a protected entry


def scheduled_sparsity(target: float, round_index: int, rounds: int, schedule: str) -> float:
    """The sparsity after pruning round ``round_index`` (1-based) of ``rounds``.

    ``constant``: the target every round; ``linear``: ``target · t/n``; ``cubic`` (Zhu & Gupta
    2017): ``target · (1 − (1 − t/n)³)`` — prunes most while the network is most redundant and
    eases in towards the end.
    """
    if not 1 <= round_index <= rounds:
        raise ValueError(f"round {round_index} is outside 1..{rounds}")
    progress = round_index / rounds
    if schedule == "constant":
        return target
    if schedule == "linear":
        return target * progress
    if schedule == "cubic":
        return target * (1.0 - (1.0 - progress) ** 3)
    raise ValueError(f"unknown schedule {schedule!r}; expected one of: {', '.join(PRUNE_SCHEDULES)}")


def unstructured_mask(scores: torch.Tensor, mask: torch.Tensor, amount: float,
                      protect: torch.Tensor | None = None) -> torch.Tensor:
    """Mask that zeros the ``round(amount · numel)`` lowest-scoring entries (old zeros first)."""
    scores = scores.detach().float().masked_fill(~mask, _FIRST)
    if protect is not None:
        scores = scores.masked_fill(protect, _NEVER)
    count = min(round(amount * scores.numel()), scores.numel() - (0 if protect is None else int(protect.sum())))
    keep = torch.ones(mask.numel(), dtype=torch.bool, device=mask.device)
    if count > 0:
        keep[torch.topk(scores.flatten(), count, largest=False).indices] = False
    return keep.view(mask.shape) & mask


def kept_slices(count: int, amount: float, round_to: int = 1) -> int:
    """How many of ``count`` slices survive pruning ``amount`` of them: ``count − round(amount · count)``,
    rounded to the nearest multiple of ``round_to`` (halves up; at least ``round_to``, at most
    ``count``), and never below one.  A layer with at most ``round_to`` slices keeps the
    unrounded count, and ``amount`` 0 keeps every slice.
    """
    keep = count - round(amount * count)
    if round_to > 1 and count > round_to and amount > 0:
        keep = min(count, max(round_to, math.floor(keep / round_to + 0.5) * round_to))
    return max(keep, 1)


def structured_mask(scores: torch.Tensor, mask: torch.Tensor, amount: float, dim: int,
                    round_to: int = 1) -> torch.Tensor:
    """Mask that zeros the lowest-scoring slices along ``dim``, keeping :func:`kept_slices` of them.

    ``scores`` holds one score per slice.  Slices already fully pruned are ranked first.
    """
    alive = mask.transpose(0, dim).flatten(1).any(dim=1)
    scores = scores.detach().float().masked_fill(~alive, _FIRST)
    count = scores.numel() - kept_slices(scores.numel(), amount, round_to)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if count > 0:
        keep[torch.topk(scores, count, largest=False).indices] = False
    shape = [1] * mask.dim()
    shape[dim] = -1
    return mask & keep.view(shape).expand_as(mask)


def strongest_per_output(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The highest-scoring surviving weight of each output unit, so no output is cut off."""
    rows = scores.masked_fill(~mask, _FIRST).flatten(1)
    protect = torch.zeros_like(rows, dtype=torch.bool)
    protect[torch.arange(rows.shape[0]), rows.argmax(dim=1)] = True
    return protect.view(mask.shape) & mask


def prune_layer(layer: SparseConv2d | SparseLinear, method: str, amount: float,
                structure: str = default("prune.structure"),
                generator: torch.Generator | None = None, protect_outputs: bool = False,
                criterion: str = default("prune.criterion"), taylor: torch.Tensor | None = None,
                round_to: int = 1) -> None:
    """Prune one sparse layer in place to ``amount`` (see the module doc for the meaning).

    ``taylor``: the layer's accumulated Taylor scores, for ``method="taylor"`` or
    ``criterion="taylor"`` (:func:`sparsenet.importance.taylor_scores`).
    """
    if method == "structured":
        dim = 0 if structure == "filters" else 1
        scores = slice_scores(layer.weight, layer.mask, dim, criterion, taylor)
        mask = structured_mask(scores, layer.mask, amount, dim, round_to)
        bias_mask = mask.flatten(1).any(dim=1) if structure == "filters" else None
        layer.set_mask(mask, bias_mask)
        return
    scores = weight_scores(layer, method, generator, taylor)
    protect = strongest_per_output(scores, layer.mask) if protect_outputs else None
    layer.set_mask(unstructured_mask(scores, layer.mask, amount, protect))


def prune_globally(layers: list[SparseConv2d | SparseLinear], method: str, amount: float,
                   generator: torch.Generator | None = None,
                   classifier: SparseConv2d | SparseLinear | None = None,
                   taylor: list[torch.Tensor | None] | None = None) -> None:
    """One ranking across all ``layers`` (like ``prune.global_unstructured``).

    ``classifier``, when among ``layers``, keeps each class output's strongest weight.
    ``taylor``: each layer's Taylor scores, in the order of ``layers`` (``method="taylor"``).
    """
    taylor = taylor or [None] * len(layers)
    scores = [weight_scores(layer, method, generator, t) for layer, t in zip(layers, taylor)]
    masks = [layer.mask for layer in layers]
    protect = [strongest_per_output(score, layer.mask) if layer is classifier else torch.zeros_like(layer.mask)
               for score, layer in zip(scores, layers)]
    flat = unstructured_mask(torch.cat([s.flatten() for s in scores]), torch.cat([m.flatten() for m in masks]),
                             amount, torch.cat([p.flatten() for p in protect]))
    for layer, part in zip(layers, torch.split(flat, [m.numel() for m in masks])):
        layer.set_mask(part.view(layer.mask.shape))


@torch.no_grad()
def prune_model(model: nn.Module, method: str, amount: float, structure: str = default("prune.structure"),
                scope: str = default("prune.scope"), seed: int = 0, round_index: int = 0,
                exclude: tuple[str, ...] = (), criterion: str = default("prune.criterion"),
                taylor: dict[str, torch.Tensor] | None = None, layer_amounts: dict[str, float] | None = None,
                round_to: int = default("prune.round_to")) -> dict[str, float]:
    """Prune the sparse layers of ``model`` to ``amount``; returns each layer's weight sparsity.

    ``scope="layer"`` gives every layer the same sparsity; ``"global"`` ranks all weights
    together (unstructured methods only: filter scores of different layers are not comparable, so
    structured pruning is always per layer).  ``seed`` and ``round_index`` make random pruning
    reproducible and different per round.  Layers named in ``exclude`` stay as they are.

    ``taylor`` maps layer names to accumulated Taylor scores (:func:`sparsenet.importance.taylor_scores`),
    needed by ``method="taylor"`` and by structured pruning with ``criterion="taylor"``.
    ``layer_amounts`` gives per-layer shares instead of ``amount`` (a non-uniform allocation):
    each layer is then pruned on its own, whatever ``scope`` says; ``round_to`` rounds structured pruning's kept counts (:func:`kept_slices`).
    """
    if method not in PRUNE_METHODS:
        raise ValueError(f"unknown pruning method {method!r}; expected one of: {', '.join(PRUNE_METHODS)}")
    if structure not in PRUNE_STRUCTURES:
        raise ValueError(f"unknown structure {structure!r}; expected one of: {', '.join(PRUNE_STRUCTURES)}")
    if scope not in PRUNE_SCOPES:
        raise ValueError(f"unknown scope {scope!r}; expected one of: {', '.join(PRUNE_SCOPES)}")
    if criterion not in PRUNE_CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of: {', '.join(PRUNE_CRITERIA)}")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + round_index)
    named = list(sparse_layers(model))
    unknown = sorted(set(exclude) - {name for name, _ in named})
    if unknown:
        raise ValueError(f"cannot exclude {', '.join(unknown)}: the sparse layers are {', '.join(n for n, _ in named)}")
    covered = set(pruned_layer_names(method, structure, exclude, [name for name, _ in named]))
    taylor_needed = uses_taylor(method, criterion)
    if taylor_needed and (taylor is None or not covered <= set(taylor)):
        raise ValueError("taylor importance needs taylor scores for every pruned layer (importance.taylor_scores)")
    taylor = taylor if taylor_needed else {}
    classifier = named[-1][1]
    layers = [(name, layer) for name, layer in named if name in covered]
    if scope == "global" and method != "structured" and layer_amounts is None:
        if layers:
            prune_globally([layer for _, layer in layers], method, amount, generator, classifier,
                           [taylor.get(name) for name, _ in layers])
    else:
        for name, layer in layers:
            share = amount if layer_amounts is None else layer_amounts.get(name, 0.0)
            prune_layer(layer, method, share, structure, generator, protect_outputs=layer is classifier,
                        criterion=criterion, taylor=taylor.get(name), round_to=round_to)
    return {name: 1.0 - layer.mask.float().mean().item() for name, layer in named}


def pruned_layer_names(method: str, structure: str, exclude: tuple[str, ...] | list[str] = (),
                       layers: list[str] | tuple[str, ...] = LAYER_NAMES) -> list[str]:
    """The layers a pruning target covers, input to output: what ``prune.sparsity`` is measured over.

    Every layer not in ``exclude``, except that structured ``filters`` never removes the
    classifier's class outputs and ``channels`` never removes the image's colour channels
    (:data:`sparsenet.options.STRUCTURE_KEEPS`).
    """
    skipped = set(exclude)
    if method == "structured":
        skipped.add(STRUCTURE_KEEPS[structure])
    return [name for name in layers if name not in skipped]
