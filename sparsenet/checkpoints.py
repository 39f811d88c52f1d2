"""Every checkpoint format the project writes, and the one way each is read back.

All files open with ``torch.load(path, weights_only=True)``: tensors and plain values only.

- model (``models/dense.pt``, ``control.pt``, ``sparse.pt``): a plain state dict; a SparseNet's
  masks are ``<layer>.mask`` / ``<layer>.bias_mask``;
- compact (``models/compact.pt``): ``{"state_dict", "widths", "image_size", "num_classes"}``;
- packed (``models/packed.pt``): a SparseNet's state dict with only the weights its masks keep
  and their positions (the format: :mod:`sparsenet.packed`); :func:`load_packed` restores it exactly;
- compressed (``models/compressed.pt``): a SparseNet with shared weights, its codes and index
  gaps Huffman-coded (the format: :mod:`sparsenet.compressed`);
- dense history (``models/dense_history.pt``): ``init.<param>`` and ``epoch<N>.<param>``, the
  weights at initialisation and after every dense epoch (the points ``prune.rewind`` goes to);
- resume state (``.sparsenet/resume/<stage>.pt``): what a training stage needs to go on after
  a kill (:mod:`sparsenet.resume`).

This module saves and loads them, rebuilds a model from any of them and says what a file holds.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsenet.compressed import COMPRESSED_FORMAT, decompress_state
from sparsenet.errors import FOREIGN_FILE_ERRORS, SparseNetError
from sparsenet.io import write_bytes
from sparsenet.models import KERNEL_SIZE, LAYER_NAMES, LeNet, SparseNet, default_device, feature_side
from sparsenet.packed import MAX_ELEMENTS, PACKED_FORMAT, ElementBudget, damaged_entry, unpack_state


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

def load_packed(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict ``models/packed.pt`` holds, equal bit for bit to ``models/sparse.pt``'s."""
    packed = load_checkpoint(path)
    if not isinstance(packed, dict) or packed.get("format") != PACKED_FORMAT:
        raise SparseNetError(f"{path}: not a packed checkpoint (expected one prune_train wrote as models/packed.pt)")
    try:
        return unpack_state(packed)
    except ValueError as exc:
        raise SparseNetError(f"{path}: {exc}") from None


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
    budget = ElementBudget()
    with damaged_entry("its model's shared weights"):
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
