"""sparsenet export: the ONNX of every model file computes PyTorch's logits; torch.compile of a loaded model too.

Real small models (LeNet at 32x32, weights scaled so their logits reach ~8 as a trained model's
do), saved by the project's own checkpoint writers, exported with ``export_onnx`` / the CLI and
run in ONNX Runtime on the CPU.  Nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from sparsenet.checkpoints import compact_checkpoint, history_entries, load_model, plain_state, save_checkpoint
from sparsenet.cli import main
from sparsenet.compact import compact
from sparsenet.compress import shared_weights, tie_weights, untie_weights
from sparsenet.compressed import compressed_checkpoint
from sparsenet.errors import EXIT_USER_ERROR
from sparsenet.export import INPUT_NAME, OUTPUT_NAME, export_onnx
from sparsenet.models import LeNet, SparseNet
from sparsenet.options import LAYER_NAMES
from sparsenet.packed import packed_checkpoint
from sparsenet.pruning import prune_model
from sparsenet.resume import save_resume_state

IMAGE_SIZE = 32
TOLERANCE = 1e-5
BATCHES = (1, 7)  # neither is the traced example's batch (2)
KINDS = ("dense", "sparse", "compact", "packed", "compressed")


def trained_like() -> LeNet:
    """A LeNet with logits of a trained model's magnitude (up to ~8) and non-zero biases."""
    torch.manual_seed(0)
    model = LeNet(num_classes=10, image_size=IMAGE_SIZE)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight"):
                param.mul_(2.5)
            else:
                param.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, dict[str, LeNet]]:
    """Every model file prune_train and compress write, and the in-memory model each was saved from."""
    folder = tmp_path_factory.mktemp("models")
    dense = trained_like()
    sparse = SparseNet.from_dense(dense)
    prune_model(sparse, "magnitude", 0.8)
    structured = SparseNet.from_dense(dense)
    prune_model(structured, "structured", 0.5, "filters")
    small = compact(structured)
    assert small.widths == (3, 8, 60, 42)
    shared = copy.deepcopy(sparse)
    tie_weights(shared, 4, 3)
    codes = shared_weights(shared)
    untie_weights(shared)

    save_checkpoint(folder / "dense.pt", plain_state(dense))
    save_checkpoint(folder / "sparse.pt", plain_state(sparse))
    save_checkpoint(folder / "packed.pt", packed_checkpoint(plain_state(sparse), sparse.image_size))
    save_checkpoint(folder / "compact.pt", compact_checkpoint(small))
    save_checkpoint(folder / "compressed.pt", compressed_checkpoint(shared, codes))
    save_checkpoint(folder / "dense_history.pt", history_entries("init", plain_state(dense)))
    save_resume_state(folder / "resume.pt", {"fingerprint": "f", "history": [{"epoch": 1}], "model": plain_state(dense),
                                             "optimizer": {}, "scheduler": {}, "schedule_start": 0, "rng": {},
                                             "extra": {}})
    originals = {"dense": dense, "sparse": sparse, "packed": sparse, "compact": small, "compressed": shared}
    return folder, {kind: model.eval() for kind, model in originals.items()}


@pytest.fixture(scope="module")
def exported(models) -> dict[str, Path]:
    """Each model file exported to ONNX from a user's default state (gradients enabled)."""
    folder, _ = models
    assert torch.is_grad_enabled()
    return {kind: export_onnx(folder / f"{kind}.pt", folder / "onnx" / f"{kind}.onnx") for kind in KINDS}


def normalised(batch: int, seed: int) -> torch.Tensor:
    """Random images as the training data's normalisation leaves them (mean 0, std 1)."""
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def onnx_logits(path: Path, images: torch.Tensor) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
    return logits


def pytorch_logits(model: LeNet, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(images).numpy()


def max_difference(path: Path, model: LeNet) -> float:
    """The largest |ONNX Runtime logit - PyTorch logit| over batches of each size of BATCHES."""
    worst = 0.0
    for seed, batch in enumerate(BATCHES):
        images = normalised(batch, seed)
        ours, reference = onnx_logits(path, images), pytorch_logits(model, images)
        assert ours.shape == reference.shape == (batch, 10)
        worst = max(worst, float(np.abs(ours - reference).max()))
    return worst


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_runtime_computes_pytorchs_logits_at_two_batch_sizes(models, exported, kind):
    _, originals = models
    assert max_difference(exported[kind], originals[kind]) <= TOLERANCE


def test_the_models_differ_by_far_more_than_the_tolerance(models):
    """So a file of the wrong model (the dense one for the sparse, the masks not applied) fails above."""
    _, originals = models
    images = normalised(16, 0)
    logits = {kind: pytorch_logits(model, images) for kind, model in originals.items()}
    for a, b in (("dense", "sparse"), ("sparse", "compressed"), ("dense", "compact"), ("sparse", "compact")):
        assert np.abs(logits[a] - logits[b]).max() > 1000 * TOLERANCE
    assert np.abs(logits["dense"]).max() > 4  # the tolerance is tight against logits of this size


def test_export_from_no_grad_gives_the_same_graph_and_logits(models, exported, tmp_path):
    """Export traces the same plain graph whatever the caller's grad mode (the default, enabled,
    is the state that recorded a compiled block's output as a constant before models went plain)."""
    folder, originals = models
    with torch.no_grad():
        path = export_onnx(folder / "sparse.pt", tmp_path / "sparse.onnx")
    assert max_difference(path, originals["sparse"]) <= TOLERANCE
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops == [node.op_type for node in onnx.load(str(exported["sparse"])).graph.node]


def test_a_sparse_model_is_plain_dense_layers_holding_its_masked_weights(models, exported):
    _, originals = models
    sparse = originals["sparse"]
    graph = onnx.load(str(exported["sparse"])).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("Conv") == 2 and ops.count("MaxPool") == 2 and ops.count("Gemm") == 3
    assert not {"Mul", "Where", "Cast"} & set(ops)  # no mask applied at run time
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    assert not [name for name in weights if "mask" in name]
    for name in LAYER_NAMES:
        layer = getattr(sparse, name)
        stored = weights[f"{name}.weight"]
        assert np.array_equal(stored, (layer.weight * layer.mask).detach().numpy())
        assert int((stored == 0).sum()) >= int((~layer.mask).sum())
    assert float((weights["fc1.weight"] == 0).mean()) > 0.7


def test_the_batch_dimension_is_dynamic_unless_fixed(models, exported, tmp_path):
    folder, originals = models
    (dynamic,) = onnx.load(str(exported["dense"])).graph.input
    assert dynamic.name == INPUT_NAME and dynamic.type.tensor_type.shape.dim[0].dim_param
    fixed = export_onnx(folder / "compact.pt", tmp_path / "compact3.onnx", batch=3)
    (entry,) = onnx.load(str(fixed)).graph.input
    assert [d.dim_value for d in entry.type.tensor_type.shape.dim] == [3, 3, IMAGE_SIZE, IMAGE_SIZE]
    images = normalised(3, 5)
    assert np.abs(onnx_logits(fixed, images) - pytorch_logits(originals["compact"], images)).max() <= TOLERANCE


def test_cli_writes_the_onnx_beside_the_checkpoint_and_nothing_else(models, tmp_path, capsys):
    folder, originals = models
    source = tmp_path / "sparse.pt"
    source.write_bytes((folder / "sparse.pt").read_bytes())
    main(["export", str(source)])
    out = capsys.readouterr().out
    assert f"{source} -> {tmp_path / 'sparse.onnx'}" in out and "[batch, 3, 32, 32]" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sparse.onnx", "sparse.pt"]  # no temp or .data file
    assert max_difference(tmp_path / "sparse.onnx", originals["sparse"]) <= TOLERANCE


def test_torch_compile_of_a_loaded_checkpoint_gives_pytorchs_logits(models):
    """A real torch.compile (inductor on the CPU) of the model a checkpoint loads as, at two batch
    sizes (the second recompiles with a dynamic batch); inference, as a user predicts.

    ``fullgraph``: the forward pass is one graph of torch operators (a custom kernel in it would
    break the graph, and torch.compile would then run that part eagerly, unseen).
    """
    from torch._dynamo.utils import counters

    folder, originals = models
    model = load_model(folder / "sparse.pt", True, IMAGE_SIZE).eval()
    torch._dynamo.reset()  # nothing compiled earlier in this process counts
    counters.clear()
    compiled = torch.compile(model, fullgraph=True)
    for seed, batch in enumerate((5, 9)):
        images = normalised(batch, seed)
        with torch.no_grad():
            ours = compiled(images).cpu()
            eager = model(images).cpu()
        assert (ours - eager).abs().max().item() <= TOLERANCE
        assert np.abs(ours.numpy() - pytorch_logits(originals["sparse"], images)).max() <= TOLERANCE
    assert counters["stats"]["unique_graphs"] >= 1 and counters["aot_autograd"]["ok"] >= 1  # inductor compiled it


def _junk(folder: Path) -> Path:
    (folder / "junk.pt").write_text("not a checkpoint\n")
    return folder / "junk.pt"


def _tensor(folder: Path) -> Path:
    torch.save(torch.zeros(3), folder / "tensor.pt")
    return folder / "tensor.pt"


def _metrics(folder: Path) -> Path:
    save_checkpoint(folder / "metrics.pt", {"accuracy": 0.9})
    return folder / "metrics.pt"


@pytest.mark.parametrize("make, says", [
    (lambda folder, models: folder / "missing.pt", "checkpoint not found"),
    (lambda folder, models: _junk(folder), "not a"),
    (lambda folder, models: _tensor(folder), "holds a Tensor, not a state dict"),
    (lambda folder, models: _metrics(folder), "not a LeNet state dict"),
    (lambda folder, models: models / "dense_history.pt", "not a model file (it holds dense weights at init"),
    (lambda folder, models: models / "resume.pt", "not a model file (it holds resume checkpoint after epoch 1)"),
], ids=["missing", "not-a-checkpoint", "a-tensor", "not-a-model", "dense-history", "resume-state"])
def test_bad_input_is_one_error_line_and_leaves_the_output_as_it_was(models, tmp_path, capsys, make, says):
    folder, _ = models
    checkpoint = make(tmp_path, folder)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"the previous export")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(checkpoint), "-o", str(out)])
    assert exit_info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {checkpoint}") and says in err[0]
    assert out.read_bytes() == b"the previous export"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_bad_batch_or_output_is_one_error_line(models, tmp_path, capsys):
    folder, _ = models
    for args, says in ((["--batch", "0"], "at least 1"), (["-o", str(tmp_path)], "is a folder")):
        with pytest.raises(SystemExit):
            main(["export", str(folder / "dense.pt"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and says in err[0]


def test_the_file_carries_the_normalisation_and_classes_of_its_prepared_data(models, tmp_path, capsys):
    from sparsenet.prepared import load_meta, save_prepared
    from sparsenet.sources import make_synthetic

    folder, _ = models
    prepared = tmp_path / "prepared"
    save_prepared(make_synthetic(40, 20, 10, IMAGE_SIZE, seed=0), prepared, {"skipped": []})
    meta = load_meta(prepared)
    main(["export", str(folder / "dense.pt"), "-o", str(tmp_path / "dense.onnx"), "--prepared", str(prepared)])
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "dense.onnx")).metadata_props}
    assert float(props["sparsenet.mean"]) == meta["mean"] and float(props["sparsenet.std"]) == meta["std"]
    assert json.loads(props["sparsenet.classes"]) == meta["classes"] and len(meta["classes"]) == 10
    other = tmp_path / "four"  # data of another model: refused in one line, nothing written
    save_prepared(make_synthetic(40, 20, 4, IMAGE_SIZE, seed=0), other, {"skipped": []})
    with pytest.raises(SystemExit) as stop:
        main(["export", str(folder / "dense.pt"), "-o", str(tmp_path / "bad.onnx"), "--prepared", str(other)])
    assert stop.value.code == EXIT_USER_ERROR and not (tmp_path / "bad.onnx").exists()
    assert "4 classes at 32 px, but the model has 10" in capsys.readouterr().err
