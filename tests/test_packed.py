"""models/packed.pt: a SparseNet without its zeros, restored tensor for tensor."""

import numpy as np
import pytest
import torch

from sparsenet.checkpoints import lenet_from_state_dict, load_packed, plain_state, save_checkpoint
from sparsenet.packed import index_gaps, pack_positions, packed_checkpoint, positions_from_gaps, same_tensors
from sparsenet.compact import compact
from sparsenet.errors import SparseNetError
from sparsenet.models import LeNet, SparseNet
from sparsenet.pruning import prune_model


def test_index_gaps_by_hand():
    # gaps 1, 600, 1, 510: a gap over 255 is written as zero bytes ("255 on") and its remainder
    assert index_gaps(np.array([0, 600, 601, 1111])).tolist() == [1, 0, 0, 90, 1, 0, 255]
    assert positions_from_gaps(np.array([1, 0, 0, 90, 1, 0, 255], dtype=np.uint8)).tolist() == [0, 600, 601, 1111]
    assert index_gaps(np.array([], dtype=np.int64)).tolist() == []


def test_index_gaps_round_trip_any_positions():
    rng = np.random.default_rng(0)
    for density in (0.001, 0.01, 0.3, 1.0):
        positions = np.flatnonzero(rng.random(200_000) < density)
        gaps = index_gaps(positions)
        assert gaps.dtype == np.uint8
        assert np.array_equal(positions_from_gaps(gaps), positions)


def pruned(kind: str) -> SparseNet:
    torch.manual_seed(0)
    net = SparseNet(10, 64)
    if kind == "magnitude":
        prune_model(net, "magnitude", 0.95, scope="global")
    elif kind == "random":
        prune_model(net, "random", 0.5, seed=3)
    elif kind in ("filters", "channels"):
        prune_model(net, "structured", 0.5, kind)  # masks biases too
    elif kind == "empty layer":
        net.conv2.set_mask(torch.zeros_like(net.conv2.mask), torch.zeros_like(net.conv2.bias_mask))
    elif kind == "float64":
        prune_model(net, "magnitude", 0.8)
        net.double()
    return net


@pytest.mark.parametrize("kind", ["unpruned", "magnitude", "random", "filters", "channels", "empty layer", "float64"])
def test_packed_checkpoint_restores_every_tensor_bit_for_bit(tmp_path, kind):
    state = plain_state(pruned(kind))  # what prune_train saves
    save_checkpoint(tmp_path / "sparse.pt", state)
    save_checkpoint(tmp_path / "packed.pt", packed_checkpoint(state))
    torch.load(tmp_path / "packed.pt", weights_only=True)  # tensors and plain values only
    restored = load_packed(tmp_path / "packed.pt")
    assert list(restored) == list(state)
    for key, value in state.items():
        assert restored[key].dtype == value.dtype and torch.equal(restored[key], value), key
    assert same_tensors(restored, state)
    save_checkpoint(tmp_path / "again.pt", restored)  # pruned weights are +0.0 in both: the same bytes
    assert (tmp_path / "again.pt").read_bytes() == (tmp_path / "sparse.pt").read_bytes()
    if kind == "magnitude":  # the 95% model: values (4 bytes) plus about a byte of position each
        dense_bytes = len(_saved(LeNet(10, 64).state_dict()))
        assert (tmp_path / "packed.pt").stat().st_size < dense_bytes / 12


def _saved(state) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_positions_take_the_smaller_of_bitmask_and_gaps():
    few = torch.zeros(1000, dtype=torch.bool)
    few[[3, 700]] = True
    assert pack_positions(few)["gaps"].tolist() == [4, 0, 0, 187]  # 4 bytes, not a 125-byte bitmask
    many = torch.ones(1000, dtype=torch.bool)
    assert pack_positions(many)["bitmask"].numel() == 125  # not 1000 gap bytes


def test_same_tensors_tells_signed_zeros_and_nan_apart_as_bits_do():
    a = {"w": torch.tensor([0.0, float("nan")])}
    assert same_tensors(a, {"w": torch.tensor([0.0, float("nan")])})  # torch.equal says no: NaN != NaN
    assert not same_tensors(a, {"w": torch.tensor([-0.0, float("nan")])})
    assert not same_tensors(a, {"w": torch.tensor([0.0, float("nan")], dtype=torch.float64)})


def test_a_packed_checkpoint_rebuilds_the_model_and_its_outputs(tmp_path):
    net = pruned("filters")
    save_checkpoint(tmp_path / "packed.pt", packed_checkpoint(net.state_dict()))
    again = lenet_from_state_dict(torch.load(tmp_path / "packed.pt", weights_only=True), sparse=True)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(again(x), net(x))
    assert compact(again).widths == compact(net).widths


def test_weights_outside_their_mask_cannot_be_packed():
    state = pruned("magnitude").state_dict()
    state["fc1.weight"][~state["fc1.mask"]] = 0.5
    with pytest.raises(ValueError, match="fc1.weight has non-zero weights where fc1.mask is off"):
        packed_checkpoint(state)


def test_a_damaged_or_foreign_packed_file_gives_one_clear_error(tmp_path):
    packed = packed_checkpoint(pruned("magnitude").state_dict())
    packed["tensors"]["fc1.weight"]["values"] = packed["tensors"]["fc1.weight"]["values"][:-1]
    save_checkpoint(tmp_path / "short.pt", packed)
    with pytest.raises(SparseNetError, match="short.pt: fc1.weight: .* values for .* positions"):
        load_packed(tmp_path / "short.pt")
    hostile = {
        # values placed by a float tensor instead of a mask
        "not a mask": ("fc1.weight", lambda t: t["fc1.mask"].update({"whole": torch.ones(120, 2704)}),
                       "fc1.weight: its mask 'fc1.mask' is not a mask entry"),
        "huge shape": ("fc1.mask", lambda t: t["fc1.mask"].update({"shape": [3_000_000_000]}),
                       "fc1.mask: a shape .* not a list of sizes"),
        "position past the end": ("fc2.mask", lambda t: t["fc2.mask"].update(
            {"gaps": torch.cat([torch.zeros(100, dtype=torch.uint8), torch.ones(1, dtype=torch.uint8)])}),
            "fc2.mask: a position 25500 lies beyond its 10080 weights"),
        "bitmask tail": ("conv1.mask", lambda t: t["conv1.mask"].update({"bitmask": torch.full((57,), 255, dtype=torch.uint8)}),
                         "conv1.mask: a bitmask of 456 bits does not fit 450 weights"),
        "no positions": ("conv2.mask", lambda t: t["conv2.mask"].pop("bitmask"), "conv2.mask: no positions"),
    }
    for name, (_, damage, message) in hostile.items():
        packed = packed_checkpoint(pruned("magnitude").state_dict())
        damage(packed["tensors"])
        save_checkpoint(tmp_path / "hostile.pt", packed)
        with pytest.raises(SparseNetError, match=message):
            load_packed(tmp_path / "hostile.pt")
    save_checkpoint(tmp_path / "dense.pt", LeNet().state_dict())
    with pytest.raises(SparseNetError, match="dense.pt: not a packed checkpoint"):
        load_packed(tmp_path / "dense.pt")
    packed = packed_checkpoint(pruned("magnitude").state_dict())
    packed["version"] = 99
    save_checkpoint(tmp_path / "future.pt", packed)
    with pytest.raises(SparseNetError, match="version 99; this release reads version 1"):
        load_packed(tmp_path / "future.pt")


def test_evaluate_reports_whether_the_packed_file_restores_the_sparse_model(tmp_path):
    from stages.evaluate import packed_metrics
    from sparsenet.stage import Paths

    paths = Paths(sparse_model=tmp_path / "sparse.pt", packed_model=tmp_path / "packed.pt")
    save_checkpoint(paths.sparse_model, plain_state(pruned("magnitude")))
    save_checkpoint(paths.packed_model, packed_checkpoint(plain_state(pruned("magnitude"))))
    assert packed_metrics(paths, 1000)["restores_sparse"] is True
    other = pruned("magnitude")
    with torch.no_grad():
        other.fc1.weight[other.fc1.mask] *= -1  # same positions, other values
    save_checkpoint(paths.packed_model, packed_checkpoint(plain_state(other)))
    metrics = packed_metrics(paths, 1000)
    assert metrics["restores_sparse"] is False
    assert metrics["checkpoint_bytes"] == paths.packed_model.stat().st_size
    assert metrics["times_smaller_than_dense"] == 1000 / metrics["checkpoint_bytes"]


def test_a_negative_zero_where_the_packed_file_has_plus_zero_is_not_a_restore(tmp_path):
    from stages.evaluate import packed_metrics
    from sparsenet.stage import Paths

    paths = Paths(sparse_model=tmp_path / "sparse.pt", packed_model=tmp_path / "packed.pt")
    state = plain_state(pruned("magnitude"))
    save_checkpoint(paths.packed_model, packed_checkpoint(state))
    state["fc1.weight"][~state["fc1.mask"]] = -0.0  # torch.equal cannot see this; the bytes can
    save_checkpoint(paths.sparse_model, state)
    assert packed_metrics(paths, 1000)["restores_sparse"] is False


def test_a_crafted_file_cannot_make_the_reader_allocate_without_bound(tmp_path):
    packed = packed_checkpoint(pruned("magnitude").state_dict())
    tensors = packed["tensors"]
    tensors["fc2.weight"]["mask"] = "fc1.mask"  # two tensors placed by one mask
    save_checkpoint(tmp_path / "shared.pt", packed)
    with pytest.raises(SparseNetError, match="fc2.weight: its mask 'fc1.mask' is not a mask entry .*or masks another"):
        load_packed(tmp_path / "shared.pt")
    packed = packed_checkpoint(pruned("magnitude").state_dict())
    for i in range(5):  # each within a layer's bound, together far past the file's
        packed["tensors"][f"extra{i}"] = {"shape": [2**25], "gaps": torch.zeros(0, dtype=torch.uint8)}
    save_checkpoint(tmp_path / "many.pt", packed)
    with pytest.raises(SparseNetError, match="extra1: a shape .* takes the file past"):
        load_packed(tmp_path / "many.pt")


def test_widths_a_file_declares_are_bounded_before_the_model_is_built():
    state = LeNet(4, 32).state_dict()
    wide = 8192  # tiny on disk as expanded tensors, 1.7G weights as a model
    state["conv1.weight"] = torch.zeros(1).expand(wide, 3, 5, 5)
    state["conv2.weight"] = torch.zeros(1).expand(wide, wide, 5, 5)
    state["fc1.weight"] = torch.zeros(1).expand(120, wide * 5 * 5)  # 32 px: conv2's map is 5 x 5
    with pytest.raises(ValueError, match="would make a LeNet of .* weights"):
        lenet_from_state_dict(state, sparse=False)


def test_inspect_reads_packed_files_at_their_input_size_and_refuses_crafted_ones(tmp_path, capsys):
    from sparsenet.cli import inspect_checkpoint

    torch.manual_seed(0)
    net = SparseNet(4, 66)  # 66 px: the same fc1 as 64 px, so only the stored size tells them apart
    save_checkpoint(tmp_path / "packed.pt", packed_checkpoint(plain_state(net), net.image_size))
    inspect_checkpoint(tmp_path / "packed.pt")
    assert "SparseNet (masked), 4 classes, input 3x66x66" in capsys.readouterr().out
    save_checkpoint(tmp_path / "resume.pt", {"history": [], "model": {5: torch.zeros(1)}})
    save_checkpoint(tmp_path / "history.pt", {"history": 3, "model": {}})
    version = {**packed_checkpoint(plain_state(net), net.image_size), "version": torch.zeros(2)}  # bool() raises
    save_checkpoint(tmp_path / "version.pt", version)
    with pytest.raises(SparseNetError, match="of version tensor"):
        load_packed(tmp_path / "version.pt")
    for crafted in ("resume.pt", "history.pt", "version.pt"):
        with pytest.raises(SparseNetError, match=crafted):
            inspect_checkpoint(tmp_path / crafted)


def test_report_and_summary_say_lossless_only_when_the_packed_file_restores_the_model(tmp_path, monkeypatch, capsys):
    import json
    from pathlib import Path

    from sparsenet import summary
    from sparsenet.config import config_from_dict
    from sparsenet.report import write_report

    repo = Path(__file__).resolve().parents[1]
    metrics = json.loads((repo / "metrics" / "evaluate.json").read_text())  # a real run's, as committed
    speed = json.loads((repo / "metrics" / "speed.json").read_text())
    for restores, said in ((True, "lossless"), (False, "does NOT restore the pruned model")):
        metrics["packed"]["restores_sparse"] = restores
        report = write_report(config_from_dict({}), metrics, speed, [], tmp_path / "report.md").read_text()
        assert said in report and (restores or "lossless" not in report)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(metrics))  # restores_sparse: False
    (tmp_path / "models").mkdir()
    save_checkpoint(tmp_path / "models" / "sparse.pt", plain_state(pruned("magnitude")))
    summary.main([])
    out = capsys.readouterr().out
    assert "DOES NOT restore the sparse model" in out and "lossless" not in out
