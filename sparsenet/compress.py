"""Weight sharing after pruning, as in Deep Compression (Han, Mao & Dally 2016).

Each layer's kept weights are clustered by 1-D k-means into at most ``2**bits`` shared values
(centroids); a weight then stores only its centroid's index.  While the weights are tied
(:func:`tie_weights`), a layer's weight is a function of its centroids, so training moves the
centroids: each one by the summed gradient of the weights that share it, Han et al.'s centroid
fine-tuning.  The masks never change.  How the tied model is stored (the codes and index gaps,
Huffman-coded) is :func:`sparsenet.compressed.compressed_checkpoint`'s business.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsenet.models import SparseConv2d, SparseNet

KMEANS_ITERATIONS = 50


def kmeans_1d(values: torch.Tensor, clusters: int, iterations: int = KMEANS_ITERATIONS
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids ascending, each value's centroid index) of ``values`` in at most ``clusters`` groups.

    Centroids start evenly spaced between the smallest and the largest value: Han et al. found
    this linear start best, as it keeps centroids for the few large weights that matter most.
    Lloyd's iterations follow (in one dimension the nearest centroid is found by bisection);
    clusters that end up empty are dropped.  Deterministic: no random start.
    """
    values = values.detach().double().flatten().cpu()
    if values.numel() == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    centroids = torch.linspace(float(values.min()), float(values.max()), max(1, min(clusters, values.numel())),
                               dtype=torch.float64)
    codes = torch.zeros(values.numel(), dtype=torch.long)
    for _ in range(iterations):
        codes = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
        updated = _cluster_means(values, codes, centroids)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    used = torch.unique(codes)  # ascending, so the centroids stay sorted
    renumber = torch.full((centroids.numel(),), -1, dtype=torch.long)
    renumber[used] = torch.arange(used.numel())
    codes = renumber[codes]
    return _cluster_means(values, codes, centroids[used]).float(), codes


def _cluster_means(values: torch.Tensor, codes: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Each cluster's mean value; an empty cluster keeps its centroid."""
    sums = torch.zeros_like(centroids).index_add_(0, codes, values)
    counts = torch.zeros_like(centroids).index_add_(0, codes, torch.ones_like(values))
    return torch.where(counts > 0, sums / counts.clamp(min=1), centroids)


class SharedWeights(nn.Module):
    """A parametrization: a layer's weight as its centroids, placed by each kept weight's code.

    ``positions`` are the kept weights' flat positions (the mask's), ``codes`` their centroid
    indices; every other weight is zero.  The trained tensor is the centroids
    (:func:`torch.nn.utils.parametrize` calls it ``original``).  Only the kept weights are
    gathered and scattered, so a step costs what the non-zeros cost, not the whole layer.
    """

    def __init__(self, shape: torch.Size, positions: torch.Tensor, codes: torch.Tensor) -> None:
        super().__init__()
        self.shape = shape
        self.register_buffer("positions", positions)
        self.register_buffer("codes", codes)

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        flat = centroids.new_zeros(self.shape.numel())
        return flat.index_put((self.positions,), centroids[self.codes]).view(self.shape)

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The centroids that best give ``weight``: each the mean of the kept weights sharing it."""
        slots = int(self.codes.max()) + 1 if self.codes.numel() else 0
        kept = weight.detach().flatten()[self.positions]
        sums = kept.new_zeros(slots).index_add_(0, self.codes, kept)
        return sums / torch.bincount(self.codes, minlength=slots).clamp(min=1).to(kept.dtype)


@torch.no_grad()
def tie_weights(model: SparseNet, conv_bits: int, fc_bits: int) -> None:
    """Replace every layer's kept weights by at most ``2**bits`` shared values, in place.

    After this the model trains its centroids (and its biases) instead of its weights; the masks
    hold.  :func:`shared_weights` reads the result, :func:`untie_weights` makes the weights plain
    tensors again (holding the shared values).
    """
    for _, layer in model.sparse_layers():
        positions = torch.flatten(layer.mask).nonzero().flatten()
        bits = conv_bits if isinstance(layer, SparseConv2d) else fc_bits
        centroids, codes = kmeans_1d(layer.weight.flatten()[positions], 2 ** bits)
        parametrize.register_parametrization(
            layer, "weight", SharedWeights(layer.weight.shape, positions, codes.to(positions.device)), unsafe=True)
        # right_inverse gave the clusters' float32 means, summed on the model's device (in no fixed
        # order on CUDA); k-means' own, computed on the CPU in float64, are exact and the same anywhere
        layer.parametrizations.weight.original.copy_(centroids)


def shared_weights(model: SparseNet) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per tied layer: (centroids, each kept weight's centroid index in the mask's flat order)."""
    shared = {}
    for name, layer in model.sparse_layers():
        if not parametrize.is_parametrized(layer, "weight"):
            raise ValueError(f"{name}: weights are not shared (call tie_weights first)")
        centroids = layer.parametrizations.weight.original
        shared[name] = (centroids.detach().cpu().clone(), layer.parametrizations.weight[0].codes.cpu().clone())
    return shared


def untie_weights(model: SparseNet) -> None:
    """Plain weight tensors again, holding the shared values (and exact zeros where masked)."""
    for _, layer in model.sparse_layers():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    model.apply_masks()
