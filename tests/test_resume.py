"""Faults: a training stage killed with SIGKILL resumes and ends exactly like an uninterrupted run;
a diverging loss stops with one clear error and keeps the last good checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from sparsenet.data import BatchLoader, make_synthetic
from sparsenet.io import load_checkpoint
from sparsenet.models import LeNet
from sparsenet.training import NonFiniteLoss, fit

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {
    "seed": 3,
    "data": {"source": "synthetic", "image_size": 32,
             "synthetic": {"train_size": 2000, "test_size": 200, "classes": 4}},
    "train": {"epochs": 5, "batch_size": 64},
    "prune": {"method": "random", "sparsity": 0.8, "schedule": "cubic", "epochs": 3, "finetune_epochs": 2},
}
OUTPUTS = {
    "train_dense": ["models/dense.pt", "models/dense_history.pt", "logs/train_dense/metrics.json",
                    "logs/train_dense/plots/metrics/test/accuracy.tsv"],
    "prune_train": ["models/sparse.pt", "models/compact.pt", "logs/prune_train/metrics.json",
                    "logs/prune_train/plots/metrics/test/accuracy_after_prune.tsv"],
}


def _stage(name: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "stages" / f"{name}.py")], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(name: str, cwd: Path) -> str:
    process = _stage(name, cwd)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    return out


def _project(path: Path) -> Path:
    path.mkdir()
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
    assert 1 <= len(saved["history"]) < 5


def test_killed_stages_resume_to_the_same_results(tmp_path):
    reference = _project(tmp_path / "reference")
    _run("train_dense", reference)
    _run("prune_train", reference)

    killed = _project(tmp_path / "killed")
    for name in ("train_dense", "prune_train"):
        _kill_after_first_epoch(name, killed)
        out = _run(name, killed)
        assert "resuming after epoch" in out
        assert not (killed / ".sparsenet" / "resume" / f"{name}.pt").exists(), "deleted once the stage is done"
        for output in OUTPUTS[name]:
            assert (killed / output).read_bytes() == (reference / output).read_bytes(), output


def test_checkpoint_of_other_params_is_not_resumed(tmp_path):
    project = _project(tmp_path / "p")
    _kill_after_first_epoch("train_dense", project)
    params = dict(PARAMS, train={**PARAMS["train"], "lr": 0.0005})
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    out = _run("train_dense", project)
    assert "other params or inputs" in out and "resuming" not in out


def test_diverging_loss_names_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    data = make_synthetic(256, 64, 4, 32, seed=0)
    train = BatchLoader(data.train, 64, 0.5, 0.25, torch.device("cpu"), shuffle=True)
    test = BatchLoader(data.test, 64, 0.5, 0.25, torch.device("cpu"))
    model = LeNet(4, 32)

    diverged = False
    model.fc3.register_forward_hook(lambda module, args, out: out * float("nan") if diverged else out)

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
