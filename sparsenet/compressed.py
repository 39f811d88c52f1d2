"""The compressed checkpoint (``models/compressed.pt``): Deep Compression's storage of a SparseNet.

Per layer, the mask as Huffman-coded index gaps, the weights as shared values (centroids) and one
Huffman-coded code per kept weight, the bias kept whole.  The shared values themselves come from
:mod:`sparsenet.compress`; files are read by :mod:`sparsenet.checkpoints`.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch

from sparsenet.models import SparseNet
from sparsenet.packed import MAX_ELEMENTS, ElementBudget, damaged_entry, index_gaps, is_version, mask_from, most_gap_bytes

COMPRESSED_FORMAT = "sparsenet.compressed"
COMPRESSED_VERSION = 1


def huffman_encode(symbols: np.ndarray) -> bytes:
    """Bytes Huffman-coded by zlib (raw deflate, Huffman only: no LZ77 matches, no header).

    The stream carries its own code table; measured on the default 95% model's codes and index
    gaps, it comes within 3% of their entropy.
    """
    coder = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_HUFFMAN_ONLY)
    return coder.compress(np.ascontiguousarray(symbols, dtype=np.uint8).tobytes()) + coder.flush()


def huffman_decode(data: bytes, count: int) -> np.ndarray:
    """The ``count`` bytes :func:`huffman_encode` coded; ``ValueError`` if the stream holds anything else."""
    if not isinstance(count, int) or not 0 <= count <= most_gap_bytes(MAX_ELEMENTS):
        raise ValueError(f"a stream said to hold {count!r} symbols")
    decoder = zlib.decompressobj(-15)
    try:
        out = decoder.decompress(bytes(data), count + 1)  # bounded: a damaged stream cannot fill memory
    except (zlib.error, TypeError) as exc:
        raise ValueError(f"a damaged Huffman stream ({exc})") from None
    if len(out) != count:
        more = "" if decoder.eof else " or more"
        raise ValueError(f"a Huffman stream of {len(out)}{more} symbols, expected {count}")
    if not decoder.eof:
        raise ValueError("a Huffman stream that does not end")
    if decoder.unused_data:
        raise ValueError(f"{len(decoder.unused_data)} bytes after the end of a Huffman stream")
    return np.frombuffer(out, dtype=np.uint8)


def compressed_checkpoint(model: SparseNet, shared: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """What ``models/compressed.pt`` holds: a SparseNet whose layers share weights (Deep Compression).

    Per layer, for the weight and for the bias: its ``shape``, its mask as index gaps
    (:func:`index_gaps`, Huffman-coded by :func:`huffman_encode`) and their ``gap_count``, and the
    kept values.  A weight's kept values are its ``centroids`` and one Huffman-coded code per kept
    weight (``codes``: the centroid's index, in the mask's flat order); a bias keeps its values
    whole (``values``).  Streams and floats are [start, stop) slices of one uint8 tensor
    (``bytes``) and one float32 tensor (``floats``): each tensor costs the archive a few hundred
    bytes, a Python ``bytes`` object half again its length.  ``shared`` is
    :func:`sparsenet.compress.shared_weights`'s result.
    """
    blobs: dict[str, list[np.ndarray]] = {"bytes": [], "floats": []}

    def store(kind: str, values: np.ndarray) -> list[int]:
        start = sum(part.size for part in blobs[kind])
        blobs[kind].append(values)
        return [start, start + values.size]

    def masked(mask: torch.Tensor) -> dict[str, Any]:
        gaps = index_gaps(np.flatnonzero(mask.detach().cpu().flatten().numpy()))
        stream = np.frombuffer(huffman_encode(gaps), dtype=np.uint8)
        return {"shape": list(mask.shape), "gaps": store("bytes", stream), "gap_count": int(gaps.size)}

    layers: dict[str, Any] = {}
    for name, layer in model.sparse_layers():
        centroids, codes = shared[name]
        if centroids.numel() > 256:
            raise ValueError(f"{name}: {centroids.numel()} shared values; codes are bytes, at most 256")
        bias_mask = layer.bias_mask.detach().cpu().bool()
        layers[name] = {
            "weight": {**masked(layer.mask), "centroids": store("floats", centroids.float().numpy()),
                       "codes": store("bytes", np.frombuffer(huffman_encode(codes.numpy()), dtype=np.uint8))},
            "bias": {**masked(bias_mask), "values": store("floats", layer.bias.detach().cpu()[bias_mask].numpy())},
        }
    return {"format": COMPRESSED_FORMAT, "version": COMPRESSED_VERSION, "image_size": model.image_size,
            "layers": layers, "bytes": torch.from_numpy(np.concatenate(blobs["bytes"])),
            "floats": torch.from_numpy(np.concatenate(blobs["floats"]).astype(np.float32))}


def decompress_state(compressed: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The SparseNet state dict ``models/compressed.pt`` codes; ``ValueError`` naming the part that is damaged."""
    if not is_version(compressed.get("version"), COMPRESSED_VERSION) or not isinstance(compressed.get("layers"), dict):
        raise ValueError(f"a compressed checkpoint of version {compressed.get('version')!r}; this release reads "
                         f"version {COMPRESSED_VERSION}")
    blobs = {"bytes": compressed.get("bytes"), "floats": compressed.get("floats")}
    for kind, dtype in (("bytes", torch.uint8), ("floats", torch.float32)):
        if not isinstance(blobs[kind], torch.Tensor) or blobs[kind].dtype != dtype or blobs[kind].dim() != 1:
            raise ValueError(f"its {kind} are not a 1-D {dtype} tensor")

    def load(kind: str, where: Any) -> torch.Tensor:
        if not (isinstance(where, list) and len(where) == 2 and all(isinstance(i, int) for i in where)):
            raise ValueError(f"a slice {where!r} that is not [start, stop]")
        start, stop = where
        if not 0 <= start <= stop <= blobs[kind].numel():
            raise ValueError(f"a slice [{start}, {stop}) beyond its {blobs[kind].numel()} {kind}")
        return blobs[kind][start:stop]

    budget = ElementBudget()

    def mask_and_positions(entry: dict) -> tuple[torch.Tensor, torch.Tensor]:
        numel = budget.shape(entry).numel()  # charged for the values; the mask is charged below
        if not isinstance(entry["gap_count"], int) or not 0 <= entry["gap_count"] <= most_gap_bytes(numel):
            raise ValueError(f"gap_count {entry['gap_count']!r} does not fit {numel} weights")
        gaps = huffman_decode(load("bytes", entry["gaps"]).numpy().tobytes(), entry["gap_count"])
        return mask_from({"shape": entry["shape"], "gaps": torch.from_numpy(gaps.copy())}, budget)

    state: dict[str, torch.Tensor] = {}
    for name, entry in compressed["layers"].items():
        with damaged_entry(f"{name}.weight"):
            mask, positions = mask_and_positions(entry["weight"])
            centroids = load("floats", entry["weight"]["centroids"])
            codes = huffman_decode(load("bytes", entry["weight"]["codes"]).numpy().tobytes(), positions.numel())
            codes = torch.from_numpy(codes.astype(np.int64))
            if codes.numel() and int(codes.max()) >= centroids.numel():
                raise ValueError(f"a code beyond its {centroids.numel()} shared values")
            weight = torch.zeros(mask.numel())
            weight[positions] = centroids[codes]
        with damaged_entry(f"{name}.bias"):
            bias_mask, bias_positions = mask_and_positions(entry["bias"])
            values = load("floats", entry["bias"]["values"])
            if values.numel() != bias_positions.numel():
                raise ValueError(f"{values.numel()} values for {bias_positions.numel()} positions")
            bias = torch.zeros(bias_mask.numel())
            bias[bias_positions] = values
        state.update({f"{name}.weight": weight.reshape(mask.shape), f"{name}.bias": bias.reshape(bias_mask.shape),
                      f"{name}.mask": mask, f"{name}.bias_mask": bias_mask})
    return state
