"""Step ``visualize``: every figure under ``plots/`` and ``plots/report.md``, from what earlier steps wrote."""

from __future__ import annotations

from pathlib import Path

from sparsenet import plots
from sparsenet.analysis import layer_sparsity
from sparsenet.checkpoints import load_model
from sparsenet.config import Config
from sparsenet.io import read_json
from sparsenet.stage import Paths
from sparsenet.report import write_report


def visualize(cfg: Config, paths: Paths = Paths()) -> list[Path]:
    """Draw every figure under ``plots/`` and write ``plots/report.md``; trains and evaluates nothing."""
    size = cfg.data.image_size
    dense = load_model(paths.dense_model, sparse=False, image_size=size)
    sparse = load_model(paths.sparse_model, sparse=True, image_size=size)
    dense_history = plots.read_live_history(paths.dense_log)
    prune_history = plots.read_live_history(paths.prune_log)
    control_history = plots.read_live_history(paths.control_log)
    metrics = read_json(paths.metrics)
    p = cfg.prune
    title = f"{p.method}, {p.structure if p.method == 'structured' else p.scope + ' scope'}, target {p.sparsity:g}"
    out = paths.plots
    written = [
        plots.loss_curves(dense_history, prune_history, out / "loss_curves.png", title),
        plots.accuracy_per_round(prune_history, control_history, metrics["dense"]["accuracy"],
                                 out / "accuracy_per_round.png", title),
        plots.sparsity_heatmaps(sparse, out / "sparsity_heatmaps.png", title),
        plots.zero_weights(layer_sparsity(sparse), out / "zero_weights.png", title),
        plots.conv1_filters(dense, sparse, out / "conv1_filters.png", title),
    ]
    speed = read_json(paths.speed) if paths.speed.is_file() else {}
    written.append(write_report(cfg, metrics, speed, written, out / "report.md"))
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    from sparsenet.stage import run_stage

    run_stage(visualize)
