"""Per-layer sensitivity: how much accuracy each layer loses when pruned alone, and the per-layer
shares that reach an overall target with the least loss.

:func:`measure` prunes one layer at a time (no retraining; Han et al. 2015, Fig. 6) and records
accuracy; :func:`allocate` turns those curves into per-layer shares for ``prune.allocation:
sensitivity``: the shares that reach the target (weighted by each layer's weights) with the least
summed drop.  The drops are treated as adding up; layers interact, which is why pruning then
retrains.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from tqdm import tqdm

from sparsenet.data import BatchLoader
from sparsenet.errors import SparseNetError
from sparsenet.models import SparseNet, sparse_layers
from sparsenet.options import SENSITIVITY_MAX_SHARE
from sparsenet.pruning import prune_layer, pruned_layer_names
from sparsenet.training import evaluate

# Shares measured per layer; 0.0 is the unpruned model every drop is measured against.
SHARES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, SENSITIVITY_MAX_SHARE)
_STEP = 0.001  # resolution of the shares allocate() picks


def measure(model: SparseNet, loader: BatchLoader, method: str, structure: str, criterion: str,
            exclude: tuple[str, ...] = (), shares: tuple[float, ...] = SHARES,
            taylor: dict[str, torch.Tensor] | None = None, seed: int = 0) -> list[dict]:
    """Accuracy over ``loader`` with one layer pruned to each share of ``shares``, the others untouched.

    One row per (layer, share): ``layer``, ``weights`` (the layer's weight count), ``share`` (asked
    for), ``sparsity`` (the layer's sparsity reached: structured pruning keeps whole filters, at
    least one), ``accuracy`` and ``drop`` (accuracy lost against the unpruned model).  Layers are
    those the target covers (:func:`sparsenet.pruning.pruned_layer_names`).  ``model`` is left as
    it is.
    """
    covered = pruned_layer_names(method, structure, exclude, [name for name, _ in sparse_layers(model)])
    _, base = evaluate(model, loader)
    classifier = list(sparse_layers(model))[-1][0]
    rows = []
    bar = tqdm(total=len(covered) * len(shares), desc="sensitivity", unit="eval", leave=False, disable=None)
    for name in covered:
        for share in shares:
            accuracy, reached = base, 1.0 - getattr(model, name).mask.float().mean().item()
            if share > 0:
                pruned = copy.deepcopy(model)
                layer = getattr(pruned, name)
                prune_layer(layer, method, share, structure, torch.Generator().manual_seed(seed),
                            protect_outputs=name == classifier, criterion=criterion,
                            taylor=None if taylor is None else taylor[name])
                reached = 1.0 - layer.mask.float().mean().item()
                _, accuracy = evaluate(pruned, loader)
            rows.append({"layer": name, "weights": getattr(model, name).weight.numel(), "share": share,
                         "sparsity": reached, "accuracy": accuracy, "drop": base - accuracy})
            bar.update()
    bar.close()
    return rows


def _curves(rows: list[dict]) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
    """layer → (weights, shares, drops made non-decreasing: a layer never counts as tougher
    at a higher share than at a lower one)."""
    curves = {}
    for name in dict.fromkeys(row["layer"] for row in rows):
        reached: dict[float, float] = {}  # several shares can reach one sparsity (whole filters): keep the worst
        for row in rows:
            if row["layer"] == name:
                reached[row["sparsity"]] = max(reached.get(row["sparsity"], 0.0), row["drop"])
        own = sorted(reached.items())
        shares = np.array([share for share, _ in own])
        drops = np.maximum.accumulate(np.maximum([drop for _, drop in own], 0.0))
        weights = next(row["weights"] for row in rows if row["layer"] == name)
        curves[name] = (weights, shares, drops)
    return curves


def allocate(rows: list[dict], target: float) -> dict[str, float]:
    """Per-layer shares whose weighted mean (by weight count) reaches ``target`` with the least
    summed accuracy drop along the curves of :func:`measure` (the drops taken as adding up).

    A Lagrangian search: for a price ``λ`` on accuracy per pruned weight, each layer takes the
    share (on a 0.001 grid, drops interpolated linearly between measured shares) that minimises
    ``drop − λ · weights/total · share``; ``λ`` is raised until the target is reached, and the
    shares of the two prices around it are blended so the weighted mean is ``target`` itself.
    This is the least summed drop wherever the curves are convex (Everett 1963) and picks
    points of their convex hulls elsewhere.  Raises when even every layer at its largest
    measured share falls short.
    """
    curves = _curves(rows)
    total = sum(weights for weights, _, _ in curves.values())
    grids = {name: np.arange(0.0, shares[-1] + _STEP / 2, _STEP) for name, (_, shares, _) in curves.items()}
    drops = {name: np.interp(grids[name], shares, d) for name, (_, shares, d) in curves.items()}

    def shares_at(price: float) -> dict[str, float]:
        out = {}
        for name, (weights, _, _) in curves.items():
            cost = drops[name] - price * weights / total * grids[name]
            out[name] = float(grids[name][np.flatnonzero(cost <= cost.min() + 1e-12)[0]])  # ties: the smaller share
        return out

    def reached(shares: dict[str, float]) -> float:
        return sum(curves[name][0] * share for name, share in shares.items()) / total

    most = {name: float(grid[-1]) for name, grid in grids.items()}
    if reached(most) < target - 1e-9:
        raise SparseNetError(f"prune.sparsity = {target:g} cannot be reached with prune.allocation = 'sensitivity': "
                             f"the layers it prunes, each at most at its largest measured share "
                             f"({', '.join(f'{name} {share:g}' for name, share in most.items())}), reach "
                             f"{reached(most):.4f}; expected prune.sparsity <= {math.floor(reached(most) * 1e4) / 1e4:.4f} "
                             "or fewer layers in prune.exclude")
    # Past this price every layer goes as far as its curve allows: each extra share costs less.
    steepest = max(float(d.max()) for d in drops.values()) / _STEP
    high = 1.0 + steepest * total / max(1, min(weights for weights, _, _ in curves.values()))
    low = 0.0
    if reached(shares_at(low)) >= target - 1e-9:
        high = low
    for _ in range(100):  # bisect the price down to where the target is first reached
        if high - low <= 1e-12 * max(1.0, high):
            break
        middle = (low + high) / 2
        if reached(shares_at(middle)) >= target - 1e-9:
            high = middle
        else:
            low = middle
    upper = shares_at(high)
    if reached(upper) < target - 1e-9:
        upper = most
    lower = shares_at(low) if low < high else {name: 0.0 for name in curves}
    span = reached(upper) - reached(lower)
    blend = 1.0 if span <= 0 else min(1.0, max(0.0, (target - reached(lower)) / span))
    return {name: round(lower[name] + blend * (upper[name] - lower[name]), 6) for name in curves}
