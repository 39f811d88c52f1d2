"""Faults: a training stage killed with SIGKILL resumes and ends exactly like an uninterrupted run;
a diverging loss stops with one clear error and keeps the last good checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sparsenet.checkpoints import lenet_from_state_dict, load_checkpoint, unwrap
from sparsenet.config import config_from_dict
from sparsenet.data import BatchLoader
from sparsenet.prepared import save_prepared
from sparsenet.sources import make_synthetic
from sparsenet.stage import Paths
from sparsenet.training_stage import resume_args
from sparsenet.models import LeNet
from sparsenet.training import NonFiniteLoss, fit

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {
    "seed": 3,
    "data": {"source": "synthetic", "image_size": 32,
             "synthetic": {"train_size": 640, "test_size": 64, "classes": 4}},
    "train": {"epochs": 4, "batch_size": 32},
    # A rewind after every round and a cosine schedule: resuming must restore the restarted
    # optimizer and schedule too.
    "prune": {"method": "random", "sparsity": 0.8, "schedule": "cubic", "epochs": 3, "finetune_epochs": 2,
              "rewind": "init", "lr_schedule": "cosine"},
    "compress": {"epochs": 3, "conv_bits": 4, "fc_bits": 3},
}
OUTPUTS = {
    "train_dense": ["models/dense.pt", "models/dense_history.pt", "logs/train_dense/metrics.json",
                    "logs/train_dense/plots/metrics/test/accuracy.tsv"],
    "prune_train": ["models/sparse.pt", "models/compact.pt", "logs/prune_train/metrics.json",
                    "logs/prune_train/plots/metrics/test/accuracy_after_prune.tsv"],
    "train_small": ["models/small.pt", "logs/train_small/metrics.json"],
    "compress": ["models/compressed.pt"],
}


def _stage(name: str, cwd: Path) -> subprocess.Popen:
    """Run a stage as dvc.yaml does; it imports the project copy's own package (so a test may edit it)."""
    return subprocess.Popen([sys.executable, "-m", f"stages.{name}"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(name: str, cwd: Path) -> str:
    process = _stage(name, cwd)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    return out


def _project(path: Path) -> Path:
    path.mkdir()
    for folder in ("sparsenet", "stages"):
        shutil.copytree(ROOT / folder, path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    _run("prepare", path)
    return path


def _kill_after_first_epoch(name: str, cwd: Path) -> None:
    """Start the stage, SIGKILL it as soon as its first epoch is checkpointed (mid-run)."""
    checkpoint = cwd / ".sparsenet" / "resume" / f"{name}.pt"
    process = _stage(name, cwd)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the stage finished before it could be killed"
    assert not (cwd / OUTPUTS[name][0]).exists()
    saved = load_checkpoint(checkpoint)  # never torn: written to a temp file, then renamed
    assert 1 <= len(saved["history"]) < 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the training stages."""
    project = _project(tmp_path_factory.mktemp("resume") / "reference")
    _run("train_dense", project)
    _run("prune_train", project)
    _run("train_small", project)
    _run("compress", project)
    return project


def test_killed_stages_resume_to_the_same_results(reference, tmp_path):
    killed = _project(tmp_path / "killed")
    for name in ("train_dense", "prune_train", "train_small", "compress"):
        _kill_after_first_epoch(name, killed)
        if name == "compress":  # its model trains shared weights: still a SparseNet to `sparsenet inspect`
            holder, state = unwrap(load_checkpoint(killed / ".sparsenet" / "resume" / "compress.pt"))
            training = lenet_from_state_dict(state, sparse=True)
            sparse = load_checkpoint(killed / "models" / "sparse.pt")
            for layer, module in training.sparse_layers():
                assert torch.equal(module.mask, sparse[f"{layer}.mask"])
                assert len(torch.unique(module.weight[module.mask])) <= 2 ** (4 if layer.startswith("conv") else 3)
        out = _run(name, killed)
        assert "resuming after epoch" in out
        assert not (killed / ".sparsenet" / "resume" / f"{name}.pt").exists(), "deleted once the stage is done"
        for output in OUTPUTS[name]:
            assert (killed / output).read_bytes() == (reference / output).read_bytes(), output


@pytest.mark.parametrize("prune", [
    # per-round Taylor batches, the sensitivity allocation measured at the start (again, on
    # resume), rounded widths
    {"method": "structured", "criterion": "taylor", "allocation": "sensitivity", "round_to": 4,
     "score_batches": 1, "sparsity": 0.5, "epochs": 2, "finetune_epochs": 1},
    # unstructured Taylor scores, and survivors drawn afresh after the last round
    {"method": "taylor", "rewind": "reinit", "score_batches": 2, "sparsity": 0.8, "epochs": 2,
     "finetune_epochs": 1},
], ids=["structured-taylor-sensitivity", "taylor-reinit"])
def test_taylor_pruning_resumes_to_the_same_results(reference, tmp_path, prune):
    # all the draws besides training's must come out the same after a kill
    params = dict(PARAMS, prune=prune)
    runs = {}
    for label in ("whole", "killed"):
        project = tmp_path / label
        shutil.copytree(reference, project)
        for name in ("sparse", "packed", "compact", "compressed"):  # the reference's magnitude run
            (project / "models" / f"{name}.pt").unlink()
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        if label == "killed":
            _kill_after_first_epoch("prune_train", project)
            assert "resuming after epoch" in _run("prune_train", project)
        else:
            _run("prune_train", project)
        runs[label] = project
    for output in ("models/sparse.pt", "models/compact.pt"):
        assert (runs["killed"] / output).read_bytes() == (runs["whole"] / output).read_bytes(), output


def _rerun_after(change, project: Path) -> str:
    _kill_after_first_epoch("train_dense", project)
    change(project)
    return _run("train_dense", project)


def _starts_afresh(out: str) -> None:
    assert "resuming" not in out
    assert out.count("starting at epoch 1") == 1, "one notice line"
    assert "train_dense epoch 1/4" in out


def test_checkpoint_of_other_code_is_not_resumed(reference, tmp_path):
    def fix_a_bug(project):  # any edit of a module the stage runs
        with open(project / "sparsenet" / "models.py", "a") as fh:
            fh.write("\n# a fix\n")

    project = _project(tmp_path / "p")
    out = _rerun_after(fix_a_bug, project)
    assert "left by a run with other code, params, inputs" in out
    _starts_afresh(out)
    assert (project / "models/dense.pt").read_bytes() == (reference / "models/dense.pt").read_bytes()


def _fingerprint(paths: Paths, cfg) -> str:
    return resume_args(paths, "train_dense", cfg, paths.prepared)["fingerprint"]


def test_fingerprint_covers_params_and_every_prepared_file(tmp_path):
    paths = Paths(prepared=tmp_path / "prepared", resume=tmp_path / "resume")
    save_prepared(make_synthetic(40, 20, 4, 32, seed=0), paths.prepared, {"skipped": []})
    cfg = config_from_dict(PARAMS)
    base = _fingerprint(paths, cfg)
    assert _fingerprint(paths, cfg) == base, "the same run has the same fingerprint"
    assert _fingerprint(paths, config_from_dict({**PARAMS, "seed": 4})) != base

    test_images = paths.prepared / "test_images.npy"
    meta, original = (paths.prepared / "meta.json").read_bytes(), test_images.read_bytes()
    images = np.load(test_images)
    images[0, 0, 0, 0] ^= 1  # one test pixel: meta.json (statistics of train) stays the same
    np.save(test_images, images)
    assert (paths.prepared / "meta.json").read_bytes() == meta
    assert _fingerprint(paths, cfg) != base
    test_images.write_bytes(original)
    assert _fingerprint(paths, cfg) == base


def test_fingerprint_covers_the_code_dvc_yaml_lists_for_the_stage():
    from sparsenet.training_stage import step_code_files
    from tests.test_dvc_deps import STAGES, declared

    for stage in ("train_dense", "prune_train", "train_control"):
        modules = {dep for dep in declared(STAGES[stage], "deps") if dep.endswith(".py")}
        assert set(step_code_files(stage)) == modules, stage


def test_diverging_loss_names_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    data = make_synthetic(256, 64, 4, 32, seed=0)
    diverged = False

    class Diverging(BatchLoader):
        """Batches that turn to NaN once ``diverged`` is set."""

        def __iter__(self):
            for images, labels in super().__iter__():
                yield (images * float("nan") if diverged else images), labels

    train = Diverging(data.train, 64, 0.5, 0.25, torch.device("cpu"), shuffle=True)
    test = BatchLoader(data.test, 64, 0.5, 0.25, torch.device("cpu"))
    model = LeNet(4, 32)

    def diverge_from_epoch_3(epoch: int, record: dict) -> None:
        nonlocal diverged
        diverged = epoch == 2

    checkpoint = tmp_path / "resume.pt"
    with pytest.raises(NonFiniteLoss) as err:
        fit(model, train, test, 4, 1e-3, desc="train_dense", after_epoch=diverge_from_epoch_3, checkpoint=checkpoint)
    message = str(err.value)
    assert "\n" not in message
    assert "train_dense epoch 3, step 1: loss became nan" in message
    assert f"last good checkpoint (epoch 2) is kept in {checkpoint}" in message
    saved = load_checkpoint(checkpoint)
    assert [record["epoch"] for record in saved["history"]] == [1, 2]
    assert all(torch.isfinite(value).all() for value in saved["model"].values())
