"""Every checkpoint format the project writes, and the one way each is read back.

All files open with ``torch.load(path, weights_only=True)``: tensors and plain values only.

- model (``models/dense.pt``, ``control.pt``, ``sparse.pt``): a plain state dict; a SparseNet's
  masks are ``<layer>.mask`` / ``<layer>.bias_mask``;
- compact (``models/compact.pt``): ``{"state_dict", "widths", "image_size", "num_classes"}``;
- packed (``models/packed.pt``): a SparseNet's state dict with only the weights its masks keep
  and their positions (see :func:`packed_checkpoint`); :func:`load_packed` restores it exactly;
- compressed (``models/compressed.pt``): a SparseNet with shared weights, its codes and index
  gaps Huffman-coded (see :func:`compressed_checkpoint`); :func:`decompress_state` decodes it;
- dense history (``models/dense_history.pt``): ``init.<param>`` and ``epoch<N>.<param>``, the
  weights at initialisation and after every dense epoch (the points ``prune.rewind`` goes to);
- resume state (``.sparsenet/resume/<stage>.pt``): what a training stage needs to go on after
  a kill (see :func:`sparsenet.training.fit`).
"""

from __future__ import annotations

import io
import pickle
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from sparsenet.errors import SparseNetError
from sparsenet.io import write_bytes
from sparsenet.models import KERNEL_SIZE, LAYER_NAMES, LeNet, SparseNet, default_device, feature_side


# What reading a foreign or crafted file's contents as a model can raise (beyond torch's own
# errors on load): each ends as one error line naming the file.
FOREIGN_FILE_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, RuntimeError, OverflowError)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save a plain state dict (tensors and plain Python values) atomically.

    Serialised in memory first: torch names the archive after the file it writes, and a temporary
    file name would make identical models differ byte for byte.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load any file :func:`save_checkpoint` wrote, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise SparseNetError(f"{path}: checkpoint not found (run the stage that writes it first: dvc repro)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise SparseNetError(f"{path}: not a SparseNet checkpoint (not a torch file, or one holding objects other "
                             "than tensors and plain values, which are never unpickled)") from None
    except Exception as exc:  # torch raises many types for corrupt / foreign files
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SparseNetError(f"{path}: not a readable SparseNet checkpoint ({type(exc).__name__}: {first_line})") from None


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU, contiguous copy of the state dict (never aliasing the live parameters)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- models

def lenet_from_state_dict(state: Any, sparse: bool, image_size: int | None = None) -> LeNet:
    """Rebuild LeNet / SparseNet from a state dict's tensor shapes (widths, classes, flatten).

    Also takes the compact form (see :func:`compact_checkpoint`).  ``image_size`` defaults to the
    one stored there, else the smallest input whose flatten fits fc1.  A SparseNet's masks are
    applied on load, so weights a foreign optimizer left under a mask read as the zeros they are.
    Raises ``ValueError`` when the state dict is not a LeNet of that size (or holds no masks when
    ``sparse``).
    """
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a state dict")
    if state.get("format") in (PACKED_FORMAT, COMPRESSED_FORMAT):
        image_size = image_size or state.get("image_size")
        state = (unpack_state if state["format"] == PACKED_FORMAT else decompress_state)(state)
    declared = None
    if "state_dict" in state:
        declared = state.get("widths")
        image_size = image_size or state.get("image_size")
        state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError("its state_dict is not a state dict")
    try:
        widths = tuple(int(state[f"{name}.weight"].shape[0]) for name in LAYER_NAMES[:-1])
        classes, flat = int(state["fc3.weight"].shape[0]), int(state["fc1.weight"].shape[1])
        in_channels = int(state["conv1.weight"].shape[1])
    except (KeyError, AttributeError, IndexError):
        raise ValueError(f"not a LeNet state dict (keys: {', '.join(map(str, list(state)[:6]))}, ...)") from None
    if declared is not None and list(declared) != list(widths):
        raise ValueError(f"declares widths {list(declared)} but its tensors have widths {list(widths)}")
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool)):
        raise ValueError(f"declares an image size {image_size!r}, not a number of pixels")
    if image_size is None:
        image_size = next((s for s in range(16, 2048) if widths[1] * feature_side(s) ** 2 == flat), 0)
    if image_size < 16 or widths[1] * feature_side(image_size) ** 2 != flat:
        raise ValueError(f"fc1 reads {flat} features, which does not fit {image_size}x{image_size} input")
    if sparse and "conv1.mask" not in state:
        raise ValueError("holds a dense LeNet, expected a SparseNet with masks")
    c1, c2, f1, f2 = widths
    params = (c1 * in_channels + c2 * c1) * KERNEL_SIZE**2 + flat * f1 + f1 * f2 + f2 * classes
    if params > MAX_ELEMENTS:  # checked before building: the widths come from the file
        raise ValueError(f"widths {list(widths)} would make a LeNet of {params:,} weights, more than any this "
                         f"project builds ({MAX_ELEMENTS:,})")
    model = (SparseNet if sparse else LeNet)(classes, image_size, in_channels, widths)
    try:
        model.load_state_dict(state if sparse else {k: v for k, v in state.items() if not k.endswith("mask")})
    except RuntimeError as exc:  # unexpected / missing keys or shapes: a different architecture
        detail = " ".join(str(exc).split())
        raise ValueError(f"not a LeNet of widths {list(widths)}: {detail[:300]}") from None
    if isinstance(model, SparseNet):
        model.apply_masks()
    return model


def load_model(path: Path, sparse: bool, image_size: int, num_classes: int | None = None) -> LeNet:
    """Rebuild LeNet / SparseNet from a checkpoint for ``image_size`` input (and ``num_classes``)."""
    try:
        model = lenet_from_state_dict(load_checkpoint(path), sparse, image_size)
    except FOREIGN_FILE_ERRORS as exc:
        raise SparseNetError(f"{path}: {exc}; re-run dvc repro") from None
    if num_classes is not None and model.num_classes != num_classes:
        raise SparseNetError(f"{path}: checkpoint is for {model.num_classes} classes, the prepared data has "
                             f"{num_classes}; re-run dvc repro")
    return model.to(default_device(), memory_format=torch.channels_last)


def compact_checkpoint(model: LeNet) -> dict:
    """What ``models/compact.pt`` holds: the plain state dict and the layer widths (and input
    size) that rebuild the smaller LeNet."""
    return {"state_dict": plain_state(model), "widths": list(model.widths), "image_size": model.image_size,
            "num_classes": model.num_classes}


# --------------------------------------------------------------------------- packed

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
        positions = positions_from_gaps(_uint8_array(packed["gaps"], "gaps"))
    elif "bitmask" in packed:
        bits = np.unpackbits(_uint8_array(packed["bitmask"], "bitmask"))
        if bits.size != (numel + 7) // 8 * 8 or bits[numel:].any():
            raise ValueError(f"a bitmask of {bits.size} bits does not fit {numel} weights")
        positions = np.flatnonzero(bits[:numel])
    else:
        raise ValueError("no positions (expected gaps or a bitmask)")
    if positions.size and positions[-1] >= numel:
        raise ValueError(f"a position {int(positions[-1])} lies beyond its {numel} weights")
    return positions


def _uint8_array(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.dim() != 1:
        raise ValueError(f"its {what} are not a 1-D uint8 tensor")
    return value.numpy()


class _Budget:
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


def _mask_from(entry: dict, budget: _Budget) -> tuple[torch.Tensor, torch.Tensor]:
    """(boolean mask, its flat positions) of a mask entry of either format."""
    shape = budget.shape(entry)
    positions = torch.from_numpy(unpack_positions(entry, shape.numel()))
    mask = torch.zeros(shape.numel(), dtype=torch.bool)
    mask[positions] = True
    return mask.reshape(shape), positions


@contextmanager
def _damaged(what: str) -> Iterator[None]:
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


def _is_version(value: Any, version: int) -> bool:
    """Whether a file's ``version`` entry is ``version`` (a crafted tensor there cannot raise)."""
    return type(value) is int and value == version


def unpack_state(packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict :func:`packed_checkpoint` packed; ``ValueError`` naming the entry if it is damaged."""
    if not _is_version(packed.get("version"), PACKED_VERSION) or not isinstance(packed.get("tensors"), dict):
        raise ValueError(f"a packed checkpoint of version {packed.get('version')!r}; this release reads version "
                         f"{PACKED_VERSION}")
    entries = packed["tensors"]
    state: dict[str, torch.Tensor] = {}
    masks: set[str] = set()
    budget = _Budget()
    for key, entry in entries.items():  # masks and whole tensors first: the values need their masks
        with _damaged(str(key)):
            if "whole" in entry:
                if not isinstance(entry["whole"], torch.Tensor):
                    raise ValueError("not a tensor")
                state[key] = entry["whole"].reshape(budget.shape(entry))
            elif "values" not in entry:
                state[key] = _mask_from(entry, budget)[0]
                masks.add(key)
    for key, entry in entries.items():
        if "values" not in entry:
            continue
        with _damaged(str(key)):
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


def load_packed(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict ``models/packed.pt`` holds, equal bit for bit to ``models/sparse.pt``'s."""
    packed = load_checkpoint(path)
    if not isinstance(packed, dict) or packed.get("format") != PACKED_FORMAT:
        raise SparseNetError(f"{path}: not a packed checkpoint (expected one prune_train wrote as models/packed.pt)")
    try:
        return unpack_state(packed)
    except ValueError as exc:
        raise SparseNetError(f"{path}: {exc}") from None


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold the same keys in the same order and the same tensors bit for bit
    (dtype, shape and bytes: unlike ``torch.equal``, -0.0 differs from 0.0 and NaN equals itself)."""
    def raw(t: torch.Tensor) -> torch.Tensor:
        return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)

    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(raw(a[k]), raw(b[k])) for k in a)


# --------------------------------------------------------------------------- compressed

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
    if not _is_version(compressed.get("version"), COMPRESSED_VERSION) or not isinstance(compressed.get("layers"), dict):
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

    budget = _Budget()

    def mask_and_positions(entry: dict) -> tuple[torch.Tensor, torch.Tensor]:
        numel = budget.shape(entry).numel()  # charged for the values; the mask is charged below
        if not isinstance(entry["gap_count"], int) or not 0 <= entry["gap_count"] <= most_gap_bytes(numel):
            raise ValueError(f"gap_count {entry['gap_count']!r} does not fit {numel} weights")
        gaps = huffman_decode(load("bytes", entry["gaps"]).numpy().tobytes(), entry["gap_count"])
        return _mask_from({"shape": entry["shape"], "gaps": torch.from_numpy(gaps.copy())}, budget)

    state: dict[str, torch.Tensor] = {}
    for name, entry in compressed["layers"].items():
        with _damaged(f"{name}.weight"):
            mask, positions = mask_and_positions(entry["weight"])
            centroids = load("floats", entry["weight"]["centroids"])
            codes = huffman_decode(load("bytes", entry["weight"]["codes"]).numpy().tobytes(), positions.numel())
            codes = torch.from_numpy(codes.astype(np.int64))
            if codes.numel() and int(codes.max()) >= centroids.numel():
                raise ValueError(f"a code beyond its {centroids.numel()} shared values")
            weight = torch.zeros(mask.numel())
            weight[positions] = centroids[codes]
        with _damaged(f"{name}.bias"):
            bias_mask, bias_positions = mask_and_positions(entry["bias"])
            values = load("floats", entry["bias"]["values"])
            if values.numel() != bias_positions.numel():
                raise ValueError(f"{values.numel()} values for {bias_positions.numel()} positions")
            bias = torch.zeros(bias_mask.numel())
            bias[bias_positions] = values
        state.update({f"{name}.weight": weight.reshape(mask.shape), f"{name}.bias": bias.reshape(bias_mask.shape),
                      f"{name}.mask": mask, f"{name}.bias_mask": bias_mask})
    return state


# --------------------------------------------------------------------------- dense history

def _history_prefix(point: str) -> str:
    return "init." if point == "init" else f"epoch{point}."


def history_entries(point: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` under the keys of one history point: ``init`` or an epoch number."""
    prefix = _history_prefix(point)
    return {prefix + key: value for key, value in state.items()}


def history_points(history: dict[str, Any]) -> list[str]:
    """The points a dense history holds, in training order: ``init``, ``epoch1``, ``epoch2``, …"""
    return sorted({key.split(".", 1)[0] for key in history}, key=lambda p: (p != "init", len(p), p))


def rewind_state(history: dict[str, torch.Tensor], point: str) -> dict[str, torch.Tensor]:
    """The dense weights at ``point`` (``init`` or an epoch number) from ``dense_history.pt``."""
    prefix = _history_prefix(point)
    state = {k[len(prefix):]: v for k, v in history.items() if k.startswith(prefix)}
    if not state:
        raise SparseNetError(f"prune.rewind = '{point}': not in the dense training history "
                             f"(has: {', '.join(history_points(history))})")
    return state


# --------------------------------------------------------------------------- what a file holds

def unwrap(state: Any) -> tuple[str | None, Any]:
    """(what holds the model, the model's state) for any file the project writes.

    A resume checkpoint holds the model it is training, a dense history the weights at each point
    (its ``init`` weights stand for the model); a model file, packed and compressed ones too
    (:func:`lenet_from_state_dict` reads them), holds itself.
    """
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a state dict")
    if "history" in state and "model" in state:
        if not isinstance(state["history"], list):
            raise ValueError("a resume checkpoint whose history is not a list of epochs")
        return f"resume checkpoint after epoch {len(state['history'])}", untied_state(state["model"])
    if state.get("format") == PACKED_FORMAT:
        return "packed SparseNet (kept weights and their positions only)", state
    if state.get("format") == COMPRESSED_FORMAT:
        return "compressed SparseNet (shared weights, Huffman-coded codes and index gaps)", state
    if "init.conv1.weight" in state:
        if not all(isinstance(key, str) for key in state):
            raise ValueError("a dense history with keys that are not names")
        return (f"dense weights at {', '.join(history_points(state))} (the points prune.rewind can go back to)",
                rewind_state(state, "init"))
    return None, state


SHARED_WEIGHT_KEYS = (".parametrizations.weight.original", ".parametrizations.weight.0.positions",
                      ".parametrizations.weight.0.codes")


def untied_state(state: Any) -> Any:
    """A state dict with shared weights (the ``compress`` stage's model while it trains, see
    :class:`sparsenet.compress.SharedWeights`) as plain ``<layer>.weight`` tensors; others as they are."""
    if not isinstance(state, dict):
        return state
    untied = {}
    budget = _Budget()
    with _damaged("its model's shared weights"):
        for key, value in state.items():
            if key.endswith(SHARED_WEIGHT_KEYS[0]):
                layer = key[: -len(SHARED_WEIGHT_KEYS[0])]
                positions, codes = (state[layer + suffix] for suffix in SHARED_WEIGHT_KEYS[1:])
                shape = budget.shape({"shape": list(state[f"{layer}.mask"].shape)})
                weight = torch.zeros(shape.numel(), dtype=value.dtype)
                weight[positions] = value[codes]
                untied[f"{layer}.weight"] = weight.reshape(shape)
            elif not key.endswith(SHARED_WEIGHT_KEYS[1:]):
                untied[key] = value
    return untied


def is_sparse(state: dict) -> bool:
    """Whether a model state (plain, packed or compressed) holds a SparseNet."""
    return state.get("format") in (PACKED_FORMAT, COMPRESSED_FORMAT) or "conv1.mask" in state


def model_kind(state: dict) -> str:
    """What kind of LeNet a model state holds."""
    if is_sparse(state):
        return "SparseNet (masked)"
    if "state_dict" in state:
        return "LeNet (compact: pruned structure removed)"
    return "LeNet (dense)"


# --------------------------------------------------------------------------- resume state

RESUME_KEYS = ("fingerprint", "history", "model", "optimizer", "scheduler", "schedule_start", "rng", "extra")


def save_resume_state(path: Path, state: dict[str, Any]) -> None:
    """Write a training stage's per-epoch resume state (the keys of :data:`RESUME_KEYS`)."""
    missing = set(RESUME_KEYS) - set(state)
    if missing:
        raise ValueError(f"resume state lacks {', '.join(sorted(missing))}")
    save_checkpoint(path, state)


def load_resume_state(path: Path | None, fingerprint: str) -> tuple[dict | None, str | None]:
    """(state, None) to resume from, or (None, a one-line notice why not; None if no file)."""
    if path is None or not path.is_file():
        return None, None
    try:
        saved = load_checkpoint(path)
    except SparseNetError as exc:
        return None, f"ignoring unreadable resume checkpoint: {exc}"
    if not isinstance(saved, dict) or set(RESUME_KEYS) - set(saved):
        return None, f"ignoring {path}: not a resume checkpoint of this version"
    if saved["fingerprint"] != fingerprint:
        return None, (f"ignoring {path}: it was left by a run with other code, params, inputs, torch version "
                      "or device; starting at epoch 1")
    return saved, None
