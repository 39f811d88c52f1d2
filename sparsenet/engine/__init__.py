"""A CPU inference engine for the project's LeNets: compiled C with the weights written in.

    from sparsenet import engine
    forward = engine.compile(model)      # LeNet, SparseNet or compact LeNet; model left untouched
    logits = forward(images)             # normalised float32 N x C x S x S, any memory format

Every non-zero convolution weight becomes a multiply-add over a vector of output pixels and a
zero weight is no instruction at all; each convolution is fused with its 2x2 max-pool, bias and
ReLU; the fully connected layers skip zero weights through CSR arrays (see
:mod:`sparsenet.engine.codegen`).  The source is compiled once and cached
(:mod:`sparsenet.cbuild`).  Both cores are used: whole blocks of images per thread, or,
for fewer images than threads, each image's filters split among the threads.

Where the engine cannot run (a CUDA model, no AVX2, no C compiler, a failed build, a NaN or
infinite weight, a cache folder another user could write in: see :mod:`sparsenet.cbuild`),
:func:`compile` returns the model's own PyTorch forward and says why on one line, once.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from typing import Callable

import numpy as np
import torch
from torch import nn

from sparsenet import cbuild
from sparsenet.engine import codegen
from sparsenet.models import LAYER_NAMES, LeNet, used_parameters

# The stages the engine times separately (milliseconds per call, see CompiledModel.layer_milliseconds).
STAGES = ("input", "conv1", "conv2", "fc1", "fc2", "fc3")
# sparsenet_forward(x, n, sn, sc, sy, sx, logits, ptr, idx, val, bias, offsets, threads, seconds)
# (codegen.RUNTIME_C): declared, so ctypes converts each argument to its C type or refuses it.
FORWARD_ARGTYPES = [ctypes.c_void_p, *[ctypes.c_long] * 5, *[ctypes.c_void_p] * 6, ctypes.c_int, ctypes.c_void_p]
_said: set[str] = set()
_said_lock = threading.Lock()


def _notice(message: str) -> None:
    with _said_lock:  # models may compile in threads at once (sparsenet.speed)
        if message in _said:
            return
        _said.add(message)
    print(f"sparsenet.engine: {message}", file=sys.stderr)


def effective_weights(model: LeNet) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of each layer as the forward pass uses them (a sparse layer's masked ones)."""
    layers = []
    for name in LAYER_NAMES:
        weight, bias = used_parameters(getattr(model, name))
        if bias is None:
            bias = torch.zeros(weight.shape[0])
        layers.append((weight.detach().to("cpu", torch.float32).numpy().copy(),
                       bias.detach().to("cpu", torch.float32).numpy().copy()))
    return layers


def _csr(layers: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """The fully connected layers as one set of CSR arrays: row pointers, column indices, values,
    biases, and each layer's four offsets into them."""
    parts: list[list[np.ndarray]] = [[], [], [], []]  # pointers, indices, values, biases
    offsets = []
    for weight, bias in layers:
        rows, columns = np.nonzero(weight)  # row-major order: each row's columns ascending
        pointer = np.searchsorted(rows, np.arange(weight.shape[0] + 1)).astype(np.int32)
        offsets += [sum(len(a) for a in arrays) for arrays in parts]
        for arrays, array in zip(parts, (pointer, columns.astype(np.int32), weight[rows, columns], bias)):
            arrays.append(array)
    dtypes = (np.int32, np.int32, np.float32, np.float32)
    return [*(np.ascontiguousarray(np.concatenate(a), dtype=t) for a, t in zip(parts, dtypes)),
            np.array(offsets, dtype=np.int64)]


class CompiledModel:
    """A LeNet's inference as a callable: ``logits = compiled(images)``.

    ``engine`` names what runs it: ``avx512`` / ``avx2`` (the compiled engine) or ``pytorch`` (the
    model's own forward; ``reason`` says why).
    """

    def __init__(self, model: LeNet, isa: str | None = None) -> None:
        self.model, self.reason = model, None
        self.image_size, self.in_channels, self.num_classes = model.image_size, model.in_channels, model.num_classes
        self.engine = "pytorch"
        self._library = None
        try:
            if next(model.parameters()).device.type != "cpu":
                raise cbuild.BuildError(f"the model is on {next(model.parameters()).device}; the engine runs on CPU")
            self.engine = cbuild.choose_isa(isa)
            layers = effective_weights(model)
            for name, (weight, bias) in zip(LAYER_NAMES, layers):
                for part, values in (("weight", weight), ("bias", bias)):
                    if not np.isfinite(values).all():  # C has no literal for them (and MAX drops a NaN)
                        raise cbuild.BuildError(f"{name}.{part} holds a NaN or an infinity; the engine compiles "
                                                "finite weights only")
            source = codegen.generate([w for w, _ in layers[:2]], [b for _, b in layers[:2]], model.image_size,
                                      [w.shape for w, _ in layers[2:]], self.engine)
            self._arrays = _csr(layers[2:])
            self._library = self._load(source)
        except cbuild.BuildError as exc:
            self.engine, self.reason = "pytorch", str(exc)
            _notice(f"{exc}; using the PyTorch forward")

    def _load(self, source: str) -> ctypes.CDLL:
        library = cbuild.load(source, self.engine)
        library.sparsenet_forward.argtypes = FORWARD_ARGTYPES
        library.sparsenet_forward.restype = ctypes.c_int
        return library

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (
                self.in_channels, self.image_size, self.image_size):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected a batch N x {self.in_channels} x {self.image_size} x {self.image_size}, "
                             f"got {shape}")
        device = next(self.model.parameters()).device if self._library is None else torch.device("cpu")
        if x.dtype != torch.float32 or x.device != device:
            raise ValueError(f"expected float32 images on {device}, got {x.dtype} on {x.device}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The logits (N x classes) of a normalised float32 batch; NaN logits for an image holding
        a NaN or an infinity."""
        self._check(x)
        if self._library is None:
            with torch.no_grad():
                return self.model(x)
        return self._run(x, None)

    def _run(self, x: torch.Tensor, seconds: np.ndarray | None) -> torch.Tensor:
        out = torch.empty(x.shape[0], self.num_classes)
        if x.shape[0] == 0:
            return out
        status = self._library.sparsenet_forward(
            x.data_ptr(), x.shape[0], *x.stride(), out.data_ptr(), *(a.ctypes.data for a in self._arrays),
            torch.get_num_threads(), None if seconds is None else seconds.ctypes.data)
        if status != 0:
            raise MemoryError("sparsenet.engine: no memory for the engine's scratch buffers")
        return out

    def layer_milliseconds(self, x: torch.Tensor, repeats: int = 10) -> dict[str, float]:
        """Milliseconds per call spent in each stage (:data:`STAGES`), the threads' time averaged."""
        if self._library is None:
            raise ValueError(f"the engine is not running this model ({self.reason})")
        self._check(x)
        seconds = np.zeros(len(STAGES))
        self._run(x, None)
        for _ in range(repeats):
            self._run(x, seconds)
        return {stage: value / repeats * 1e3 for stage, value in zip(STAGES, seconds)}


def compile(model: nn.Module, isa: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:  # noqa: A001
    """A callable computing ``model``'s logits on the engine (see the module's documentation).

    ``isa``: ``avx512`` or ``avx2`` to force a vector extension (default: $SPARSENET_ISA, else the
    best the CPU has).  The model is read, never changed.
    """
    if not isinstance(model, LeNet):
        raise TypeError(f"sparsenet.engine.compile takes a LeNet / SparseNet, not {type(model).__name__}")
    return CompiledModel(model, isa)


__all__ = ["compile", "CompiledModel", "STAGES", "effective_weights"]
