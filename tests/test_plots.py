"""Figures read what the pipeline wrote; missing inputs are one clear error."""

import pytest

from sparsenet.errors import SparseNetError
from sparsenet.plots import read_live_history


def test_missing_training_logs_are_one_clear_error(tmp_path):
    with pytest.raises(SparseNetError, match="plots/metrics: no per-epoch logs found .run dvc repro first."):
        read_live_history(tmp_path / "logs" / "train_dense")


def test_training_logs_become_one_row_per_epoch(tmp_path):
    metrics = tmp_path / "plots" / "metrics"
    (metrics / "test").mkdir(parents=True)
    (metrics / "test" / "accuracy.tsv").write_text("step\taccuracy\n0\t0.5\n1\t0.75\n")
    (metrics / "sparsity.tsv").write_text("step\tsparsity\n0\t0.3\n1\t0.6\n")
    frame = read_live_history(tmp_path)
    assert frame.to_dict("list") == {"epoch": [1, 2], "sparsity": [0.3, 0.6], "test_accuracy": [0.5, 0.75]}
