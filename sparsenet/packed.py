"""The packed checkpoint (``models/packed.pt``): a SparseNet's state dict without its zeros.

Each masked tensor keeps only the values its mask keeps, and each mask becomes its positions: a
bitmask or one byte per gap between positions, whichever is smaller.  Unpacking gives back every
tensor bit for bit.  The position coding and the element budget a reader may allocate are shared
with the compressed format (:mod:`sparsenet.compressed`).  Files are read by
:mod:`sparsenet.checkpoints`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from sparsenet.errors import FOREIGN_FILE_ERRORS

PACKED_FORMAT = "sparsenet.packed"
PACKED_VERSION = 1
# A mask and the tensor it masks, by key suffix: ``conv1.mask`` masks ``conv1.weight``.
MASK_SUFFIXES = {".mask": ".weight", ".bias_mask": ".bias"}
# The most elements a packed or compressed file may declare, all its tensors together, and the
# most weights a rebuilt LeNet may have: fc1 at the largest input (``data.image_size`` 512) has 30M
# weights, its mask as many.  A damaged or crafted file cannot make a reader allocate more.
MAX_ELEMENTS = 2**26


def index_gaps(positions: np.ndarray) -> np.ndarray:
    """Ascending flat positions → one byte per gap to the previous position (the first counts from -1).

    Gaps are at least 1, so the byte 0 is free to mean "255 further on, no position here": a gap
    of 600 is written 0, 0, 90.  Every index fits in bytes this way, and sparse layers' gaps are
    mostly small (Deep Compression's relative indices, with its filler entries made explicit).
    """
    gaps = np.diff(positions.astype(np.int64), prepend=-1)
    skips = (gaps - 1) // 255  # zero bytes before each position's own byte, which is then 1..255
    out = np.zeros(int(gaps.size + skips.sum()), dtype=np.uint8)
    out[np.cumsum(skips + 1) - 1] = gaps - 255 * skips
    return out


def positions_from_gaps(gaps: np.ndarray) -> np.ndarray:
    """Inverse of :func:`index_gaps`."""
    steps = np.where(gaps == 0, 255, gaps.astype(np.int64))
    return (np.cumsum(steps) - 1)[gaps != 0]


def most_gap_bytes(numel: int) -> int:
    """The most bytes :func:`index_gaps` can write for positions among ``numel``."""
    return numel + numel // 255 + 1


def pack_positions(mask: torch.Tensor) -> dict[str, Any]:
    """A boolean mask as the smaller of its bitmask and its index gaps (:func:`index_gaps`)."""
    flat = mask.detach().cpu().flatten().bool().numpy()
    gaps = index_gaps(np.flatnonzero(flat))
    if gaps.size < (flat.size + 7) // 8:
        return {"gaps": torch.from_numpy(gaps)}
    return {"bitmask": torch.from_numpy(np.packbits(flat))}


def unpack_positions(packed: dict[str, Any], numel: int) -> np.ndarray:
    """The flat positions :func:`pack_positions` stored; ``ValueError`` if they do not fit ``numel``."""
    if "gaps" in packed:
        positions = positions_from_gaps(uint8_array(packed["gaps"], "gaps"))
    elif "bitmask" in packed:
        bits = np.unpackbits(uint8_array(packed["bitmask"], "bitmask"))
        if bits.size != (numel + 7) // 8 * 8 or bits[numel:].any():
            raise ValueError(f"a bitmask of {bits.size} bits does not fit {numel} weights")
        positions = np.flatnonzero(bits[:numel])
    else:
        raise ValueError("no positions (expected gaps or a bitmask)")
    if positions.size and positions[-1] >= numel:
        raise ValueError(f"a position {int(positions[-1])} lies beyond its {numel} weights")
    return positions


def uint8_array(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.dim() != 1:
        raise ValueError(f"its {what} are not a 1-D uint8 tensor")
    return value.numpy()


class ElementBudget:
    """The elements a file's decoding may still allocate (:data:`MAX_ELEMENTS` for all its tensors)."""

    def __init__(self) -> None:
        self.left = MAX_ELEMENTS

    def shape(self, entry: dict, tensors: int = 1) -> torch.Size:
        """An entry's declared shape, charged ``tensors`` times; ``ValueError`` if it is not a list of
        sizes or the file would declare more than :data:`MAX_ELEMENTS` elements in all."""
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(isinstance(n, int) and 0 <= n <= MAX_ELEMENTS for n in shape):
            raise ValueError(f"a shape {shape!r} that is not a list of sizes")
        size = torch.Size(shape)
        self.left -= size.numel() * tensors
        if self.left < 0:
            raise ValueError(f"a shape {shape} that takes the file past {MAX_ELEMENTS:,} elements, more than a "
                             "LeNet here has")
        return size


def mask_from(entry: dict, budget: ElementBudget) -> tuple[torch.Tensor, torch.Tensor]:
    """(boolean mask, its flat positions) of a mask entry of either format."""
    shape = budget.shape(entry)
    positions = torch.from_numpy(unpack_positions(entry, shape.numel()))
    mask = torch.zeros(shape.numel(), dtype=torch.bool)
    mask[positions] = True
    return mask.reshape(shape), positions


@contextmanager
def damaged_entry(what: str) -> Iterator[None]:
    """Turns what a damaged or crafted entry raises into one ``ValueError`` naming the entry."""
    try:
        yield
    except FOREIGN_FILE_ERRORS as exc:
        detail = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{what}: {detail}") from None


def packed_checkpoint(state: dict[str, torch.Tensor], image_size: int | None = None) -> dict[str, Any]:
    """What ``models/packed.pt`` holds: a SparseNet state dict without its zeros.

    Every masked tensor (``<layer>.weight`` under ``<layer>.mask``, ``<layer>.bias`` under
    ``<layer>.bias_mask``) keeps only its values where the mask is on, in flat order, and the mask
    becomes those positions: a bitmask or index gaps, whichever is smaller
    (:func:`pack_positions`).  Other tensors are kept whole.  :func:`unpack_state` gives back every
    tensor bit for bit (dtype and key order too), with the pruned entries as +0.0, which is what
    the project's masks write.  ``ValueError`` if a weight outside its mask is not zero (it could
    not come back).  ``image_size`` (optional) is stored for the model's rebuild.
    """
    masked = {key[: -len(suffix)] + tensor: key for key in state for suffix, tensor in MASK_SUFFIXES.items()
              if key.endswith(suffix)}  # masked tensor's key -> its mask's key
    tensors: dict[str, Any] = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if key in masked:
            mask = state[masked[key]].detach().cpu().bool()
            if value.shape != mask.shape:
                raise ValueError(f"{key} has shape {list(value.shape)} but {masked[key]} {list(mask.shape)}")
            if value[~mask].any():
                raise ValueError(f"{key} has non-zero weights where {masked[key]} is off: cannot pack them")
            tensors[key] = {"shape": list(value.shape), "values": value[mask].contiguous(), "mask": masked[key]}
        elif key in masked.values():
            if value.dtype != torch.bool:
                raise ValueError(f"{key} is a {value.dtype} tensor; masks are bool")
            tensors[key] = {"shape": list(value.shape), **pack_positions(value)}
        else:
            tensors[key] = {"shape": list(value.shape), "whole": value.contiguous()}
    packed = {"format": PACKED_FORMAT, "version": PACKED_VERSION, "tensors": tensors}
    return packed if image_size is None else {**packed, "image_size": image_size}


def is_version(value: Any, version: int) -> bool:
    """Whether a file's ``version`` entry is ``version`` (a crafted tensor there cannot raise)."""
    return type(value) is int and value == version


def unpack_state(packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict :func:`packed_checkpoint` packed; ``ValueError`` naming the entry if it is damaged."""
    if not is_version(packed.get("version"), PACKED_VERSION) or not isinstance(packed.get("tensors"), dict):
        raise ValueError(f"a packed checkpoint of version {packed.get('version')!r}; this release reads version "
                         f"{PACKED_VERSION}")
    entries = packed["tensors"]
    state: dict[str, torch.Tensor] = {}
    masks: set[str] = set()
    budget = ElementBudget()
    for key, entry in entries.items():  # masks and whole tensors first: the values need their masks
        with damaged_entry(str(key)):
            if "whole" in entry:
                if not isinstance(entry["whole"], torch.Tensor):
                    raise ValueError("not a tensor")
                state[key] = entry["whole"].reshape(budget.shape(entry))
            elif "values" not in entry:
                state[key] = mask_from(entry, budget)[0]
                masks.add(key)
    for key, entry in entries.items():
        if "values" not in entry:
            continue
        with damaged_entry(str(key)):
            if entry["mask"] not in masks:
                raise ValueError(f"its mask {entry['mask']!r} is not a mask entry of this file (or masks another too)")
            masks.remove(entry["mask"])  # one tensor per mask
            mask, values = state[entry["mask"]], entry["values"]
            if budget.shape(entry) != mask.shape:
                raise ValueError(f"its shape {entry['shape']} is not its mask's {list(mask.shape)}")
            if not isinstance(values, torch.Tensor) or values.dim() != 1 or not values.is_floating_point():
                raise ValueError("its values are not a 1-D floating-point tensor")
            if values.numel() != int(mask.sum()):
                raise ValueError(f"{values.numel()} values for {int(mask.sum())} positions")
            tensor = torch.zeros(mask.shape, dtype=values.dtype)
            tensor[mask] = values
            state[key] = tensor
    return {key: state[key] for key in entries}


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold the same keys in the same order and the same tensors bit for bit
    (dtype, shape and bytes: unlike ``torch.equal``, -0.0 differs from 0.0 and NaN equals itself)."""
    def raw(t: torch.Tensor) -> torch.Tensor:
        return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)

    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(raw(a[k]), raw(b[k])) for k in a)
