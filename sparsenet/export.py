"""ONNX export of any model checkpoint the project writes (``sparsenet export``).

    sparsenet export models/sparse.pt                    # -> models/sparse.onnx
    sparsenet export models/compact.pt -o out/small.onnx
    sparsenet export models/dense.pt --batch 1           # a fixed batch size instead of a dynamic one

What it reads: ``models/dense.pt``, ``control.pt``, ``sparse.pt``, ``compact.pt``, ``packed.pt`` and
``compressed.pt`` (every model file, opened as ``sparsenet inspect`` opens it:
:func:`sparsenet.checkpoints.unwrap` and :func:`~sparsenet.checkpoints.lenet_from_state_dict`).  A
dense history or a resume checkpoint holds a model but is not one, and is refused.

What the ONNX holds: one input ``images`` of shape ``[batch, 3, S, S]`` (``batch`` dynamic unless
``--batch`` fixes it; ``S`` the size the model was trained for), float32 and normalised as training
normalised it: ``(pixel / 255 - mean) / std`` with ``mean`` and ``std`` from
``data/prepared/meta.json``, a gray image repeated into the three channels; and one output
``logits`` of shape ``[batch, classes]`` (the classes in ``meta.json``'s order).  Where the
prepared data is at hand (``--prepared``, default ``data/prepared``), its mean, std and class
names travel in the file's metadata.  The
graph is the plain LeNet: Conv, MaxPool, Relu, a flatten, Gemm.  A SparseNet is exported as the
plain LeNet its masks make: its masked weights, pruned entries as exact zeros, are ordinary dense
Conv / Gemm initializers (no masks, no sparse storage; ONNX Runtime computes the zeros like any
other weight).  A compact model is the narrower dense LeNet it is.  A packed or compressed
model is decoded first (its shared values become plain weights).

The model is exported in eval mode on the CPU by ``torch.onnx.export``'s default (``dynamo``)
exporter, which needs ``onnxscript`` (and ``onnx``); both run offline.  The file is written
atomically (a temporary file beside it, flushed, renamed over the target): a kill leaves the old
file or the new one.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

from sparsenet.checkpoints import is_sparse, lenet_from_state_dict, load_checkpoint, model_kind, unwrap
from sparsenet.errors import FOREIGN_FILE_ERRORS, SparseNetError
from sparsenet.io import write_bytes
from sparsenet.models import LeNet, used_parameters
from sparsenet.options import LAYER_NAMES
from sparsenet.prepared import load_meta

INPUT_NAME, OUTPUT_NAME = "images", "logits"
EXPORTER_PACKAGES = ("onnx", "onnxscript")  # what torch.onnx.export's dynamo exporter imports
EXAMPLE_BATCH = 2  # the traced input's batch: torch.export specialises a dimension of size 0 or 1


def load_exportable(path: Path) -> tuple[LeNet, str]:
    """(the model a checkpoint holds, what kind it is); one :class:`SparseNetError` line for anything else."""
    path = Path(path)
    raw = load_checkpoint(path)
    try:
        holder, state = unwrap(raw)
        if state is not raw:  # unwrap took the model out of a resume checkpoint or a dense history
            raise SparseNetError(f"{path}: not a model file (it holds {holder}); export one a stage wrote "
                                 "(models/dense.pt, sparse.pt, compact.pt, packed.pt, compressed.pt)")
        return lenet_from_state_dict(state, sparse=is_sparse(state)), model_kind(state)
    except FOREIGN_FILE_ERRORS as exc:
        raise SparseNetError(f"{path}: {exc}") from None


@torch.no_grad()
def plain_lenet(model: LeNet) -> LeNet:
    """``model`` as a plain LeNet in eval mode on the CPU: a SparseNet's masked weights (zeros where
    pruned) become ordinary weights; it computes what ``model`` computes."""
    plain = LeNet(model.num_classes, model.image_size, model.in_channels, model.widths)
    for name in LAYER_NAMES:
        weight, bias = used_parameters(getattr(model, name))
        target = getattr(plain, name)
        target.weight.copy_(weight)
        target.bias.copy_(bias)
    return plain.eval()


def export_onnx(checkpoint: Path, out: Path | None = None, batch: int | None = None,
                prepared: Path | None = None, strict: bool = True) -> Path:
    """Write the ONNX of a model checkpoint to ``out`` (default: the checkpoint's path with ``.onnx``).

    ``batch`` None gives a dynamic batch dimension; a number fixes it.  With ``prepared`` (the
    ``data/prepared`` folder the model was trained from), the file carries what a user needs to
    feed it: metadata ``sparsenet.mean`` and ``sparsenet.std`` (the input normalisation) and
    ``sparsenet.classes`` (the class names, JSON, in the logits' order); prepared data of another
    class count or image size is an error, or with ``strict`` False a notice and no metadata.  A SparseNet's masked
    weights are exported as ordinary dense Conv / Gemm weights holding exact zeros (see the module
    docstring for what the file holds).  Returns ``out``.  A missing or unreadable file, a file
    that is not a model checkpoint, or an ``out`` that cannot be written is one
    :class:`SparseNetError` naming the file; nothing is written then.
    """
    checkpoint = Path(checkpoint)
    out = checkpoint.with_suffix(".onnx") if out is None else Path(out)
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise SparseNetError(f"--batch {batch!r}: expected a number of images of at least 1 (or none: dynamic)")
    if out.exists() and checkpoint.exists() and out.resolve() == checkpoint.resolve():
        raise SparseNetError(f"{out}: is the checkpoint itself; name another output (-o)")
    if out.is_dir():
        raise SparseNetError(f"{out}: is a folder; name the .onnx file to write (-o)")
    missing = [name for name in EXPORTER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise SparseNetError(f"sparsenet export needs {' and '.join(missing)} (torch.onnx's exporter): "
                             "pip install -r requirements.txt")
    model, kind = load_exportable(checkpoint)
    extra = {}
    if prepared is not None:
        try:
            extra = data_metadata(Path(prepared), model)
        except SparseNetError as exc:
            if strict:
                raise
            print(f"notice: no normalisation in the file: {exc}", file=sys.stderr)
    data = onnx_bytes(plain_lenet(model), batch, source=f"{checkpoint.name}: {kind}", extra=extra)
    try:
        write_bytes(out, data)
    except OSError as exc:
        raise SparseNetError(f"{out}: cannot write the ONNX file ({exc.strerror or exc})") from None
    return out


def data_metadata(prepared: Path, model: LeNet) -> dict[str, str]:
    """The normalisation and class names of the prepared data ``model`` was trained from, as metadata."""
    meta = load_meta(prepared)
    if len(meta["classes"]) != model.num_classes or meta["image_size"] != model.image_size:
        raise SparseNetError(f"{prepared / 'meta.json'}: {len(meta['classes'])} classes at {meta['image_size']} px, "
                             f"but the model has {model.num_classes} at {model.image_size} px: name the prepared "
                             "data it was trained from (--prepared)")
    return {"sparsenet.mean": repr(float(meta["mean"])), "sparsenet.std": repr(float(meta["std"])),
            "sparsenet.classes": json.dumps(list(meta["classes"]))}


def onnx_bytes(model: LeNet, batch: int | None = None, source: str = "", extra: dict[str, str] | None = None) -> bytes:
    """The serialised ONNX model of a plain LeNet (``batch`` None: a dynamic batch dimension).

    Traced with gradients enabled whatever the caller's mode, so the export is the same from
    ``torch.no_grad()`` as from a user's default state, and the model pools with ``max_pool2d``:
    one ONNX MaxPool per conv.  (Without gradients :func:`sparsenet.models.max_pool_2x2` pools by
    two element-wise maxima, faster in PyTorch on the CPU: the same values, traced as four Slice
    and two Max nodes.)
    """
    size = (batch or EXAMPLE_BATCH, model.in_channels, model.image_size, model.image_size)
    example = torch.randn(size, generator=torch.Generator().manual_seed(0))
    dynamic = None if batch is not None else {"x": {0: torch.export.Dim("batch")}}
    with torch.enable_grad():
        program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=dynamic, dynamo=True, verbose=False)
    proto = program.model_proto
    proto.doc_string = (f"sparsenet LeNet{' from ' + source if source else ''}; input {INPUT_NAME} "
                        f"[{batch or 'batch'}, {model.in_channels}, {model.image_size}, {model.image_size}] "
                        f"normalised as in training ((pixel / 255 - mean) / std, data/prepared/meta.json); output "
                        f"{OUTPUT_NAME} [{batch or 'batch'}, {model.num_classes}]")
    for key, value in (("sparsenet.widths", ",".join(map(str, model.widths))),
                       ("sparsenet.image_size", str(model.image_size)),
                       ("sparsenet.num_classes", str(model.num_classes)), *(extra or {}).items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def describe_onnx(path: Path) -> str:
    """One line on what an exported file holds (its doc string) and its size, read back from the file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    opset = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), "?")
    return f"{proto.doc_string}; opset {opset}, {Path(path).stat().st_size:,} bytes"
