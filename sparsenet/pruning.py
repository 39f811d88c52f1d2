"""Pruning: scores → masks, one interface for every method.

- ``magnitude``: zero the weights with the smallest |w| (like ``prune.l1_unstructured``);
- ``random``: zero weights chosen at random (seeded);
- ``structured``: zero whole filters / output units (``structure="filters"``, with their bias) or
  whole input channels / input features (``structure="channels"``) by L2 norm
  (like ``prune.ln_structured(n=2)``).

Masks only ever lose entries: already-pruned weights are ranked first, so a later round keeps them
pruned.  The class outputs are never removed: ``filters`` skips the classifier, unstructured
methods keep each class's largest weight, and ``channels`` skips the first layer, whose inputs are
the image's colour channels.  At least one filter / channel survives in every pruned layer.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsenet.models import SparseConv2d, SparseLinear, sparse_layers
from sparsenet.options import (LAYER_NAMES, PRUNE_METHODS, PRUNE_SCHEDULES, PRUNE_SCOPES, PRUNE_STRUCTURES,
                               STRUCTURE_KEEPS, default)
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


def structured_mask(weight: torch.Tensor, mask: torch.Tensor, amount: float, dim: int) -> torch.Tensor:
    """Mask that zeros the ``round(amount · n)`` slices along ``dim`` with the smallest L2 norm.

    One slice always survives.  Slices already fully pruned are ranked first.
    """
    moved = (weight.detach() * mask).transpose(0, dim).flatten(1)
    norms = moved.norm(p=2, dim=1)
    alive = mask.transpose(0, dim).flatten(1).any(dim=1)
    norms = norms.masked_fill(~alive, _FIRST)
    count = min(round(amount * norms.numel()), norms.numel() - 1)
    keep = torch.ones_like(norms, dtype=torch.bool)
    if count > 0:
        keep[torch.topk(norms, count, largest=False).indices] = False
    shape = [1] * weight.dim()
    shape[dim] = -1
    return mask & keep.view(shape).expand_as(mask)


def weight_scores(layer: SparseConv2d | SparseLinear, method: str,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Importance of each weight for an unstructured method: lowest is pruned first."""
    if method == "magnitude":
        return layer.weight.detach().abs()
    if method == "random":
        return torch.rand(layer.weight.shape, generator=generator).to(layer.weight.device)
    raise ValueError(f"unknown unstructured method {method!r}; expected magnitude or random")


def strongest_per_output(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The highest-scoring surviving weight of each output unit, so no output is cut off."""
    rows = scores.masked_fill(~mask, _FIRST).flatten(1)
    protect = torch.zeros_like(rows, dtype=torch.bool)
    protect[torch.arange(rows.shape[0]), rows.argmax(dim=1)] = True
    return protect.view(mask.shape) & mask


def prune_layer(layer: SparseConv2d | SparseLinear, method: str, amount: float,
                structure: str = default("prune.structure"),
                generator: torch.Generator | None = None, protect_outputs: bool = False) -> None:
    """Prune one sparse layer in place to ``amount`` (see the module doc for the meaning)."""
    if method == "structured":
        dim = 0 if structure == "filters" else 1
        mask = structured_mask(layer.weight, layer.mask, amount, dim)
        bias_mask = mask.flatten(1).any(dim=1) if structure == "filters" else None
        layer.set_mask(mask, bias_mask)
        return
    scores = weight_scores(layer, method, generator)
    protect = strongest_per_output(scores, layer.mask) if protect_outputs else None
    layer.set_mask(unstructured_mask(scores, layer.mask, amount, protect))


def prune_globally(layers: list[SparseConv2d | SparseLinear], method: str, amount: float,
                   generator: torch.Generator | None = None,
                   classifier: SparseConv2d | SparseLinear | None = None) -> None:
    """One ranking across all ``layers`` (like ``prune.global_unstructured``).

    ``classifier``, when among ``layers``, keeps each class output's strongest weight.
    """
    scores = [weight_scores(layer, method, generator) for layer in layers]
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
                exclude: tuple[str, ...] = ()) -> dict[str, float]:
    """Prune the sparse layers of ``model`` to ``amount``; returns each layer's weight sparsity.

    ``scope="layer"`` gives every layer the same sparsity; ``"global"`` ranks all weights
    together (magnitude / random only: filter norms of different layers are not comparable, so
    structured pruning is always per layer).  ``seed`` and ``round_index`` make random pruning
    reproducible and different per round.  Layers named in ``exclude`` stay as they are.
    """
    if method not in PRUNE_METHODS:
        raise ValueError(f"unknown pruning method {method!r}; expected one of: {', '.join(PRUNE_METHODS)}")
    if structure not in PRUNE_STRUCTURES:
        raise ValueError(f"unknown structure {structure!r}; expected one of: {', '.join(PRUNE_STRUCTURES)}")
    if scope not in PRUNE_SCOPES:
        raise ValueError(f"unknown scope {scope!r}; expected one of: {', '.join(PRUNE_SCOPES)}")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + round_index)
    named = list(sparse_layers(model))
    unknown = sorted(set(exclude) - {name for name, _ in named})
    if unknown:
        raise ValueError(f"cannot exclude {', '.join(unknown)}: the sparse layers are {', '.join(n for n, _ in named)}")
    covered = set(pruned_layer_names(method, structure, exclude, [name for name, _ in named]))
    classifier = named[-1][1]
    layers = [layer for name, layer in named if name in covered]
    if scope == "global" and method != "structured":
        if layers:
            prune_globally(layers, method, amount, generator, classifier)
    else:
        for layer in layers:
            prune_layer(layer, method, amount, structure, generator, protect_outputs=layer is classifier)
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
