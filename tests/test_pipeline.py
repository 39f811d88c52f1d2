"""The real pipeline: `dvc repro`, `dvc exp run`, `dvc metrics diff` in a temporary git repo."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "sparsenet", ".dvc/config", ".dvcignore",
                 "data/train/.gitkeep", "data/test/.gitkeep"]
OVERRIDES = {
    "seed": 0,
    "data": {"source": "synthetic", "image_size": 32,
             "synthetic": {"train_size": 256, "test_size": 96, "classes": 4}},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.002},
    "prune": {"method": "magnitude", "structure": "filters", "scope": "layer", "sparsity": 0.8, "epochs": 2,
              "finetune_epochs": 1, "lr": 0.001},
}


def merged(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


SMALL = merged(yaml.safe_load((REPO / "params.yaml").read_text()), OVERRIDES)
PLOTS = ["loss_curves.png", "accuracy_per_round.png", "sparsity_heatmaps.png", "zero_weights.png",
         "conv1_filters.png"]


def run(args: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def make_project(root: Path, params: dict, params_text: str | None = None) -> dict:
    """Copy the project into ``root``, commit it to a fresh git repo; return the env to run in.

    ``params_text``, if given, is written as params.yaml instead of ``params`` dumped plainly.
    """
    for name in PROJECT_FILES:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    (root / "params.yaml").write_text(params_text or yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ)
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
        "DVC_NO_ANALYTICS": "1",
    })
    env.pop("PYTHONPATH", None)  # stages must find the copied package on their own
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "project"], root, env)
    return env


def dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The small pipeline run once with ``dvc repro``, every file each stage reads recorded."""
    base = tmp_path_factory.mktemp("project")
    root = base / "repo"
    root.mkdir()
    env = make_project(root, SMALL)
    audited = dict(env, PYTHONPATH=str(REPO / "tests" / "read_audit"), SPARSENET_READ_LOG=str(base / "reads.log"))
    repro = run(dvc("repro"), root, audited)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "baseline run"], root, env)
    models = {name: (root / "models" / name).read_bytes()
              for name in ("dense.pt", "sparse.pt", "packed.pt", "compressed.pt")}
    return root, env, repro, models


def test_every_file_a_stage_reads_is_declared_in_dvc_yaml(project):
    from tests.test_dvc_deps import STAGES, undeclared_reads

    root = project[0]
    log = root.parent / "reads.log"
    scripts = {line.split("\t")[0] for line in log.read_text().splitlines()}
    assert scripts == {f"{name}.py" for name in STAGES}, "every stage ran under the read audit"
    assert undeclared_reads(log, root) == {}


def test_repro_again_is_a_no_op_and_the_summary_reads_the_results(project):
    """Runs before any test that touches the outputs (tests run in file order)."""
    root, env, _, _ = project
    outputs = [root / "models" / "dense.pt", root / "models" / "sparse.pt", root / "metrics" / "evaluate.json",
               root / "plots" / "report.md"]
    stamps = [path.stat().st_mtime_ns for path in outputs]
    again = run(dvc("repro"), root, env)
    assert "Running stage" not in again.stdout
    for stage in ("prepare", "train_dense", "prune_train", "train_control", "train_small", "compress", "evaluate",
                  "speed", "visualize"):
        # not "is cached - skipping run, checking out outputs": a run-cache restore is no no-op
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout, stage
    assert "is cached" not in again.stdout
    assert [path.stat().st_mtime_ns for path in outputs] == stamps, "no output was rewritten"
    summary = run([sys.executable, "-m", "sparsenet.summary"], root, env).stdout
    assert "fc1 (sparsity = 0.80): 38400 weights are zero out of 48000" in summary
    assert "test accuracy: dense" in summary and "small dense LeNet from scratch (widths" in summary
    packed = json.loads((root / "metrics" / "evaluate.json").read_text())["packed"]
    assert f"packed {packed['checkpoint_bytes']:,} ({packed['times_smaller_than_dense']:.1f}x smaller" in summary


def test_repro_runs_every_stage_and_writes_metrics(project):
    root, _, repro, _ = project
    for stage in ("prepare", "train_dense", "prune_train", "train_control", "train_small", "compress", "evaluate",
                  "speed", "visualize"):
        assert f"Running stage '{stage}'" in repro.stdout
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert 0.25 < metrics["dense"]["accuracy"] <= 1.0
    assert 0.25 < metrics["control"]["accuracy"] <= 1.0
    assert metrics["sparse"]["accuracy_drop_vs_control"] == pytest.approx(
        metrics["control"]["accuracy"] - metrics["sparse"]["accuracy"])
    small = metrics["small"]  # magnitude pruning: a LeNet as large as the pruned model's non-zero parameters
    assert 0.25 < small["accuracy"] <= 1.0 and small["widths"] != [6, 16, 120, 84]
    assert abs(small["params"] - metrics["sparse"]["nonzero_params"]) <= 0.1 * metrics["sparse"]["nonzero_params"]
    assert metrics["sparse"]["accuracy_drop_vs_small"] == pytest.approx(small["accuracy"] - metrics["sparse"]["accuracy"])
    assert 0.0 <= metrics["sparse"]["accuracy"] <= 1.0
    assert set(metrics["sparse"]["layers"]) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
    for name, layer in metrics["sparse"]["layers"].items():
        assert layer["sparsity"] == pytest.approx(0.8, abs=0.01), name
    assert metrics["sparse"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert "fc1 (sparsity = 0.80): 38400 weights are zero out of 48000" in repro.stdout
    assert metrics["dense"]["macs"] == metrics["sparse"]["macs"] >= metrics["compact"]["macs"]
    assert metrics["sparse"]["nonzero_macs"] < 0.3 * metrics["sparse"]["macs"]
    assert metrics["compact"]["accuracy"] == pytest.approx(metrics["sparse"]["accuracy"], abs=1e-9)
    speed = json.loads((root / "metrics" / "speed.json").read_text())
    assert set(speed["images_per_second"]) == {f"{m}_{how}" for m in ("dense", "sparse", "compact")
                                               for how in ("eager", "engine")}
    assert all(rate > 0 for rate in speed["images_per_second"].values())
    assert speed["engine"] in ("avx512", "avx2", "pytorch") and speed["speedup"]["sparse_engine_vs_dense_eager"] > 0
    assert speed["batch1_latency_ms"]["sparse_engine"]["p50"] <= speed["batch1_latency_ms"]["sparse_engine"]["p99"]
    assert set(speed["engine_prediction_agreement"]) == {"dense", "sparse", "compact"}
    assert min(speed["engine_prediction_agreement"].values()) >= 0.9995
    assert max(speed["engine_max_abs_logit_difference"].values()) < 1e-4
    # Timings carry their machine; the deterministic metrics carry no timing.
    assert set(speed["machine"]) == {"processor", "cores", "threads", "device", "platform", "torch"}
    assert speed["machine"]["threads"] >= 1 and speed["machine"]["torch"] == torch.__version__
    assert not {"images_per_second", "speedup", "batch1_latency_ms"} & {k for m in metrics.values() for k in m}


def test_repro_writes_checkpoints_logs_and_plots(project):
    root, _, _, _ = project
    sparse = torch.load(root / "models" / "sparse.pt", weights_only=True)
    compact = torch.load(root / "models" / "compact.pt", weights_only=True)
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert compact["widths"] == metrics["compact"]["widths"] and compact["image_size"] == 32
    assert "fc1.mask" not in compact["state_dict"] and compact["state_dict"]["fc3.weight"].shape[0] == 4
    assert compact["state_dict"]["fc1.weight"].shape[0] == compact["widths"][2]
    dense = torch.load(root / "models" / "dense.pt", weights_only=True)
    assert "fc1.mask" in sparse and "conv1.bias_mask" in sparse and "fc1.mask" not in dense
    assert (sparse["fc1.weight"][~sparse["fc1.mask"]] == 0).all()
    for name in PLOTS:
        png = root / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
    rounds = (root / "logs" / "prune_train" / "plots" / "metrics" / "test" / "accuracy_after_prune.tsv")
    assert len(rounds.read_text().splitlines()) == 1 + SMALL["prune"]["epochs"]
    report = json.loads((root / "data" / "prepared" / "report.json").read_text())
    assert report["train_images"] == 256 and report["skipped_count"] == 0
    control_log = root / "logs" / "train_control" / "plots" / "metrics" / "test" / "accuracy.tsv"
    assert len(control_log.read_text().splitlines()) == 1 + SMALL["prune"]["epochs"] + SMALL["prune"]["finetune_epochs"]
    small_log = root / "logs" / "train_small" / "plots" / "metrics" / "test" / "accuracy.tsv"
    assert len(small_log.read_text().splitlines()) == (
        1 + SMALL["train"]["epochs"] + SMALL["prune"]["epochs"] + SMALL["prune"]["finetune_epochs"])
    assert not (root / ".sparsenet" / "resume").exists() or not any((root / ".sparsenet" / "resume").iterdir())


def test_packed_and_compressed_checkpoints_decode_to_what_evaluate_records(project):
    from sparsenet.checkpoints import load_model, load_packed
    from sparsenet.data import BatchLoader
    from sparsenet.prepared import load_meta, load_split
    from sparsenet.training import evaluate

    root = project[0]
    models = root / "models"
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    sparse = torch.load(models / "sparse.pt", weights_only=True)
    restored = load_packed(models / "packed.pt")
    assert list(restored) == list(sparse) and all(torch.equal(restored[k], v) for k, v in sparse.items())
    assert metrics["packed"]["restores_sparse"] is True
    sizes = {name: (models / f"{name}.pt").stat().st_size for name in ("dense", "sparse", "packed", "compressed")}
    assert metrics["packed"]["checkpoint_bytes"] == sizes["packed"] < sizes["dense"] / 3
    assert metrics["compressed"]["checkpoint_bytes"] == sizes["compressed"] < sizes["packed"] / 2
    assert metrics["compressed"]["times_smaller_than_dense"] == sizes["dense"] / sizes["compressed"]
    compressed = load_model(models / "compressed.pt", True, 32, 4)
    for name, layer in compressed.sparse_layers():
        assert torch.equal(layer.mask, sparse[f"{name}.mask"]), "compression keeps the masks"
        bits = SMALL["compress"]["conv_bits" if name.startswith("conv") else "fc_bits"]
        assert len(torch.unique(layer.weight[layer.mask])) <= 2 ** bits
    meta = load_meta(root / "data" / "prepared")
    test = BatchLoader(load_split(root / "data" / "prepared", "test"), 32, meta["mean"], meta["std"],
                       torch.device("cpu"))
    loss, accuracy = evaluate(compressed, test)
    assert metrics["compressed"]["accuracy"] == accuracy and metrics["compressed"]["loss"] == pytest.approx(loss)
    assert metrics["compressed"]["accuracy_drop_vs_sparse"] == metrics["sparse"]["accuracy"] - accuracy


def test_report_ties_the_metrics_to_every_figure(project):
    root, _, _, _ = project
    report = (root / "plots" / "report.md").read_text()
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert report.startswith("# SparseNet run: magnitude pruning (layer scope), target sparsity 0.8")
    assert f"**Sparse test accuracy {metrics['sparse']['accuracy']:.2%}" in report
    assert f"| dense LeNet (train_dense) | {metrics['dense']['accuracy']:.2%} |" in report
    assert "| fc1 | 0.80 | 38,400 | 48,000 |" in report
    assert f"`models/compressed.pt`: **{metrics['compressed']['checkpoint_bytes']:,} bytes" in report
    assert f"| compressed: shared weights, Huffman-coded (compress) | {metrics['compressed']['accuracy']:.2%} |" in report
    for name in PLOTS:
        assert f"]({name})" in report and (root / "plots" / name).is_file()


def test_cli_runs_the_same_steps_and_inspects_checkpoints(project, tmp_path):
    root, env, _, _ = project
    cli = str(Path(sys.executable).parent / "sparsenet")
    before = (root / "metrics" / "evaluate.json").read_text()
    run([cli, "evaluate"], root, env)
    assert (root / "metrics" / "evaluate.json").read_text() == before, "same code path as the stage"
    sparse = run([cli, "inspect", "models/sparse.pt"], root, env).stdout
    assert "models/sparse.pt: SparseNet (masked), 4 classes, input 3x32x32, widths [6, 16, 120, 84]" in sparse
    assert "fc1 (sparsity = 0.80): 38400 weights are zero out of 48000" in sparse
    assert "overall sparsity 0.80" in sparse
    for packed in ("models/packed.pt", "models/compressed.pt"):
        out = run([cli, "inspect", packed], root, env).stdout
        assert f"{packed}: SparseNet (masked), 4 classes, input 3x32x32" in out
        assert "fc1 (sparsity = 0.80): 38400 weights are zero out of 48000" in out
    dense = run([cli, "inspect", "models/dense.pt", "models/compact.pt", "models/dense_history.pt"], root, env).stdout
    assert "models/dense.pt: LeNet (dense)" in dense and "fc1 (sparsity = 0.00): 0 weights are zero" in dense
    assert "models/dense_history.pt: dense weights at init, epoch1, epoch2" in dense
    (tmp_path / "junk.pt").write_bytes(b"junk")
    bad = run([cli, "inspect", str(tmp_path / "junk.pt")], root, env, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.splitlines()) == 1
    figure, table = tmp_path / "sensitivity.png", tmp_path / "sensitivity.csv"
    probe = run([cli, "sensitivity", "--sparsities", "0.5", "0.9", "--png", str(figure), "--csv", str(table)], root, env)
    assert "conv1 at 0.90" in probe.stdout and figure.read_bytes()[:4] == b"\x89PNG"
    with open(table) as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["layer"], r["share"]) for r in rows[:3]] == [("conv1", "0.0"), ("conv1", "0.5"), ("conv1", "0.9")]
    assert len(rows) == 5 * 3 and all(float(r["drop"]) == 0 for r in rows if r["share"] == "0.0")
    dense_accuracy = json.loads(before)["dense"]["accuracy"]
    assert all(float(r["accuracy"]) == pytest.approx(dense_accuracy) for r in rows if r["share"] == "0.0")
    assert all(float(r["sparsity"]) == pytest.approx(float(r["share"]), abs=0.01) for r in rows)  # magnitude
    # the committed figure's settings, whatever params.yaml says: filters by L2 (fc3 never pruned)
    run([cli, "sensitivity", "--sparsities", "0.5", "--method", "structured", "--structure", "filters",
         "--criterion", "l2", "--png", str(figure), "--csv", str(table)], root, env)
    with open(table) as fh:
        assert {r["layer"] for r in csv.DictReader(fh)} == {"conv1", "conv2", "fc1", "fc2"}


def test_prune_train_logs_only_what_each_epoch_measured(project):
    root = project[0]
    summary = json.loads((root / "logs" / "prune_train" / "metrics.json").read_text())
    last_epoch = SMALL["prune"]["epochs"] + SMALL["prune"]["finetune_epochs"]
    assert summary["step"] == last_epoch - 1  # dvclive counts steps from 0
    assert set(summary["test"]) == {"accuracy", "loss"}, "a fine-tuning epoch prunes nothing"
    assert {"sparsity", "sparsity_all_layers", "train"} <= set(summary)


def test_exp_run_reruns_only_the_stages_that_read_prune_params(project):
    root, env, _, _ = project
    exp = run(dvc("exp", "run", "-S", "prune.method=random", "-S", "prune.scope=global", "-S", "prune.sparsity=0.9",
                  "-S", "prune.exclude=[fc1]"), root, env)
    assert "Running stage 'prepare'" not in exp.stdout
    assert "Running stage 'train_dense'" not in exp.stdout
    assert "Running stage 'train_control'" not in exp.stdout
    for stage in ("prune_train", "train_small", "compress", "evaluate", "speed", "visualize"):
        assert f"Running stage '{stage}'" in exp.stdout
    diff = json.loads(run(dvc("metrics", "diff", "--all", "--json"), root, env).stdout)
    sparse_accuracy = diff["metrics/evaluate.json"]["sparse.accuracy"]
    assert "metrics/speed.json" not in diff, "timings are no DVC metric: they would differ in every diff"
    assert {"old", "new"} <= set(sparse_accuracy)
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert sparse_accuracy["new"] == metrics["sparse"]["accuracy"]
    # The target covers every layer but the excluded fc1: 90% of those weights, none of fc1's.
    sparse = metrics["sparse"]
    assert sparse["pruned_layers"] == ["conv1", "conv2", "fc2", "fc3"]
    assert sparse["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert sparse["layers"]["fc1"]["zeros"] == 0
    covered = 450 + 2400 + 10080 + 336
    assert sparse["sparsity_all_layers"] == pytest.approx(0.9 * covered / (covered + 48000), abs=1e-3)
    shown = run(dvc("plots", "show", "--json"), root, env).stdout
    for name in PLOTS:
        assert f"plots/{name}" in shown


def test_bad_param_stops_a_stage_with_one_line(tmp_path):
    env = make_project(tmp_path, merged(SMALL, {"prune": {"method": "lottery"}}))
    result = run([sys.executable, "-m", "stages.prune_train"], tmp_path, env, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: prune.method = 'lottery' is not allowed; expected one of: magnitude, random, taylor, structured"]


def test_a_stage_runs_the_package_of_the_checkout_it_runs_in(tmp_path):
    """Not the one an editable install points at: a queued experiment runs its own commit's code."""
    env = make_project(tmp_path, SMALL)
    with open(tmp_path / "sparsenet" / "prepared.py", "a") as fh:
        fh.write("\nprint('prepared from', __file__)\n")
    out = run([sys.executable, "-m", "stages.prepare"], tmp_path, env).stdout
    assert f"prepared from {tmp_path / 'sparsenet' / 'prepared.py'}" in out


def test_folder_source_reruns_prepare_when_images_are_added_and_never_touches_them(tmp_path):
    from PIL import Image

    from tests.test_data import tree_digest, write_mixed_folder

    write_mixed_folder(tmp_path / "data" / "train")
    write_mixed_folder(tmp_path / "data" / "test")
    env = make_project(tmp_path, merged(SMALL, {"data": {"source": "folder"}}))
    before = tree_digest(tmp_path / "data" / "train")
    first = run(dvc("repro", "prepare"), tmp_path, env)
    assert "skipped 4 unreadable file(s)" in first.stdout
    report = json.loads((tmp_path / "data" / "prepared" / "report.json").read_text())
    assert report["skipped_count"] == 4 and report["train_images"] == 8 and report["classes"] == ["cat", "dog"]
    # The same generator made both folders: every test image is also in train.
    assert report["train_test_duplicates"]["count"] == 8
    assert {"test": "data/test/cat/alpha.png", "train": "data/train/cat/alpha.png"} in report["train_test_duplicates"]["first"]
    assert "warning: 8 test image(s) are byte-identical to training images" in first.stdout
    assert "Running stage" not in run(dvc("repro", "prepare"), tmp_path, env).stdout
    Image.new("RGB", (10, 10), "red").save(tmp_path / "data" / "train" / "cat" / "new.png")
    second = run(dvc("repro", "prepare"), tmp_path, env)
    assert "Running stage 'prepare'" in second.stdout
    report = json.loads((tmp_path / "data" / "prepared" / "report.json").read_text())
    assert report["train_images"] == 9
    del_new = tree_digest(tmp_path / "data" / "train")
    del_new.pop("cat/new.png")
    assert del_new == before, "dvc repro must never modify the user's images"


def commented_params(overrides: dict) -> str:
    """The shipped params.yaml with ``overrides`` applied, its comments and their column kept."""
    from ruamel.yaml import YAML  # DVC's own YAML library: it edits params.yaml the same way

    def apply(node, values):
        for key, value in values.items():
            if isinstance(value, dict):
                apply(node[key], value)
            else:
                node[key] = value

    yaml_rt = YAML()
    data = yaml_rt.load((REPO / "params.yaml").read_text())
    apply(data, overrides)
    out = io.StringIO()
    yaml_rt.dump(data, out)
    return out.getvalue()


def test_a_failed_experiment_leaves_the_bad_params_visible_to_git(tmp_path):
    """After `dvc exp run -S prune.method=magnitud` fails, git shows params.yaml modified and
    `git checkout -- params.yaml` restores it (DVC's clean-up would otherwise hide the edit).

    The defect needs a same-size edit (hence the commented params file, whose comment column
    absorbs the shorter value), the failing stage to be the first DVC handles (``-s``) and a
    same-second coincidence that holds ~85-90% of the time: three attempts.
    """
    tiny = {"data": {"source": "synthetic", "image_size": 32,
                     "synthetic": {"train_size": 128, "test_size": 32, "classes": 4}},
            "train": {"epochs": 1, "batch_size": 32}, "prune": {"epochs": 1, "finetune_epochs": 0}}
    env = make_project(tmp_path, {}, params_text=commented_params(tiny))
    run(dvc("repro", "train_dense"), tmp_path, env)
    run(["git", "add", "-A"], tmp_path, env)
    run(["git", "commit", "-qm", "baseline"], tmp_path, env)
    committed = (tmp_path / "params.yaml").read_bytes()
    for attempt in range(1, 4):
        exp = run(dvc("exp", "run", "-s", "prune_train", "-S", "prune.method=magnitud"), tmp_path, env, check=False)
        assert exp.returncode != 0 and "prune.method = 'magnitud' is not allowed" in exp.stderr, exp.stderr
        edited = (tmp_path / "params.yaml").read_bytes()
        assert b"method: magnitud " in edited and len(edited) == len(committed), "a same-size edit"
        status = run(["git", "status", "--porcelain", "--", "params.yaml"], tmp_path, env).stdout
        assert status.strip() == "M params.yaml", f"attempt {attempt}: git shows the edited params.yaml clean"
        run(["git", "checkout", "--", "params.yaml"], tmp_path, env)
        assert (tmp_path / "params.yaml").read_bytes() == committed, f"attempt {attempt}: checkout did nothing"
