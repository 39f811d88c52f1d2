"""Every figure of the pipeline.  Reads models and logs; never trains."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from sparsenet.analysis import LayerSparsity  # noqa: E402
from sparsenet.errors import SparseNetError  # noqa: E402
from sparsenet.io import atomic_path  # noqa: E402
from sparsenet.models import LeNet, sparse_layers  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def read_live_history(log_dir: str | Path) -> pd.DataFrame:
    """One row per epoch from a dvclive directory: ``epoch`` plus one column per metric."""
    metrics_dir = Path(log_dir) / "plots" / "metrics"
    frame = pd.DataFrame()
    for tsv in sorted(metrics_dir.rglob("*.tsv")):
        name = tsv.relative_to(metrics_dir).with_suffix("").as_posix().replace("/", "_")
        column = pd.read_csv(tsv, sep="\t").set_index("step").iloc[:, 0].rename(name)
        frame = column.to_frame() if frame.empty else frame.join(column, how="outer")
    if frame.empty:
        raise SparseNetError(f"{metrics_dir}: no per-epoch logs found (run dvc repro first)")
    frame.index = frame.index + 1
    return frame.rename_axis("epoch").reset_index()


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def loss_curves(dense: pd.DataFrame, pruned: pd.DataFrame, path: Path, method: str) -> Path:
    """Train/test loss over the dense epochs, then over every pruning round."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    offset = int(dense["epoch"].max())
    x_pruned = pruned["epoch"] + offset
    ax.plot(dense["epoch"], dense["train_loss"], "o-", color="C0", label="train (dense)")
    ax.plot(dense["epoch"], dense["test_loss"], "s-", color="C1", label="test (dense)")
    ax.plot(x_pruned, pruned["train_loss"], "o--", color="C0", label="train (prune round)")
    ax.plot(x_pruned, pruned["test_loss"], "s--", color="C1", label="test after round's training")
    ax.plot(x_pruned, pruned["test_loss_after_prune"], "v:", color="C3", label="test right after pruning")
    ax.axvline(offset + 0.5, color="grey", lw=1)
    ax.text(offset + 0.6, ax.get_ylim()[1], "pruning starts", va="top", fontsize=9, color="grey")
    ax.set(xlabel="epoch (dense, then pruning rounds)", ylabel="cross-entropy loss",
           title=f"Loss curves — dense training, then pruning ({method})")
    ax.legend(fontsize=8)
    return _save(fig, path)


def accuracy_per_round(pruned: pd.DataFrame, control: pd.DataFrame, dense_accuracy: float, path: Path,
                       method: str) -> Path:
    """Test accuracy after each round's training and right after its pruning, with sparsity.

    ``control`` is the dense model trained for the same epochs without pruning.
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    rounds = pruned["epoch"]
    ax.plot(rounds, 100 * pruned["test_accuracy"], "o-", label="after the round's training")
    ax.plot(rounds, 100 * pruned["test_accuracy_after_prune"], "v-", color="C3", label="right after pruning")
    ax.plot(control["epoch"], 100 * control["test_accuracy"], "s:", color="C2",
            label="control: dense, same epochs, no pruning")
    ax.axhline(100 * dense_accuracy, color="grey", ls="--", label=f"dense model ({100 * dense_accuracy:.2f}%)")
    ax.set(xlabel="prune_train epoch (pruning rounds, then fine-tuning with fixed masks)",
           ylabel="test accuracy (%)", title=f"Accuracy per pruning round — {method}")
    ax.set_xticks(rounds)
    twin = ax.twinx()
    twin.bar(rounds, 100 * pruned["sparsity"], alpha=0.15, color="k", width=0.5,
             label="sparsity (of the layers the target covers)")
    twin.set_ylabel("sparsity at the end of the epoch (%)")
    twin.set_ylim(0, 100)
    twin.grid(False)
    lines, labels = ax.get_legend_handles_labels()
    more_lines, more_labels = twin.get_legend_handles_labels()
    ax.legend(lines + more_lines, labels + more_labels, fontsize=8, loc="lower left")
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    return _save(fig, path)


def sparsity_heatmaps(model: LeNet, path: Path, method: str) -> Path:
    """Each sparse layer's mask as an image: rows = outputs, columns = inputs (× kernel)."""
    layers = list(sparse_layers(model))
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 4))
    for ax, (name, layer) in zip(np.atleast_1d(axes), layers):
        mask = layer.mask.detach().cpu().flatten(1).float().numpy()
        ax.imshow(mask, aspect="auto", cmap="Greys_r", vmin=0, vmax=1, interpolation="nearest")
        kept = mask.mean()
        cols = "inputs × kernel" if layer.weight.dim() == 4 else "input features"
        ax.set(title=f"{name}: {100 * (1 - kept):.1f}% zero", xlabel=cols, ylabel="outputs")
        ax.grid(False)
    fig.suptitle(f"Sparsity masks ({method}) — white = kept, black = pruned")
    fig.tight_layout()
    return _save(fig, path)


def zero_weights(layers: list[LayerSparsity], path: Path, method: str) -> Path:
    """Zero and non-zero weight counts per layer (log scale; labels give the sparsity)."""
    names = [layer.name for layer in layers]
    zeros = np.array([layer.zeros for layer in layers])
    nonzero = np.array([layer.total - layer.zeros for layer in layers])
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.bar(x - 0.2, zeros, width=0.4, label="zero weights", color="C3")
    ax.bar(x + 0.2, nonzero, width=0.4, label="non-zero weights", color="C2")
    for i, layer in enumerate(layers):
        ax.text(i, max(zeros[i], nonzero[i]) * 1.15, f"{100 * layer.sparsity:.1f}% zero", ha="center", fontsize=9)
    ax.set_yscale("log")
    ax.set_xticks(x, names)
    ax.set(xlabel="layer", ylabel="number of weights (log scale)", title=f"Zero weights per layer — {method}")
    ax.set_ylim(top=max(zeros.max(), nonzero.max()) * 3)
    ax.legend()
    return _save(fig, path)


def conv1_filters(dense: LeNet, sparse: LeNet, path: Path, method: str) -> Path:
    """conv1's filters as RGB pictures, dense above sparse, on one shared colour scale."""
    weights = [m.conv1.weight.detach().cpu().numpy() for m in (dense, sparse)]
    limit = max(np.abs(w).max() for w in weights) or 1.0
    count = weights[0].shape[0]
    fig, axes = plt.subplots(2, count, figsize=(1.6 * count, 4.2), squeeze=False)
    for row, (label, w) in enumerate(zip(("dense", f"sparse ({method})"), weights)):
        for col in range(count):
            ax = axes[row][col]
            picture = (w[col].transpose(1, 2, 0) / limit + 1) / 2  # zero weight = mid grey
            ax.imshow(np.clip(picture, 0, 1), interpolation="nearest")
            zero = float((w[col] == 0).mean())
            ax.set_title(f"filter {col}\n{100 * zero:.0f}% zero", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(label)
    fig.suptitle("conv1 filter weights (RGB; grey = 0)")
    fig.tight_layout()
    return _save(fig, path)


def frontier_figure(means: list[dict], path: Path) -> Path:
    """Mean test accuracy vs measured sparsity, one line per method and one per small-dense
    baseline, shaded ±1 standard deviation over the seeds; the dense model and the control as
    horizontal references with their bands.  ``means``: :func:`sparsenet.frontier.aggregate`'s rows."""
    frame = pd.DataFrame(means)
    frame["accuracy_std"] = pd.to_numeric(frame["accuracy_std"], errors="coerce").fillna(0.0)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    curves = frame[frame["kind"].isin(["pruned", "small"])]
    several_schedules = curves.loc[curves["kind"] == "pruned", "schedule"].nunique() > 1
    most = int(frame["n"].max())
    groups = list(curves.groupby(["kind", "line", "schedule"], sort=True))
    colors = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20").colors  # no two curves alike
    for index, ((kind, line, schedule), group) in enumerate(groups):
        group = group.sort_values("sparsity_mean")
        x, y, err = 100 * group["sparsity_mean"], 100 * group["accuracy_mean"], 100 * group["accuracy_std"]
        label = f"{line}, {schedule}" if several_schedules and schedule else line
        marker, style = ("s", "--") if kind == "small" else ("o", "-")
        (drawn,) = ax.plot(x, y, marker=marker, ls=style, label=label, color=colors[index % len(colors)])
        fewer = group["n"] < most  # fewer seeds (a single run has no band): hollow, so it reads as less sure
        if fewer.any():
            ax.plot(x[fewer], y[fewer], marker, ls="none", color=drawn.get_color(), markerfacecolor="white")
        ax.fill_between(x, y - err, y + err, color=drawn.get_color(), alpha=0.15, linewidth=0)
    references = frame[frame["kind"].isin(["dense", "control"])].groupby(["kind", "line"])
    control_styles = [":", "-.", (0, (1, 3)), (0, (5, 2, 1, 2)), (0, (3, 1, 1, 1, 1, 1))]
    for index, ((kind, line), group) in enumerate(references):
        mean, std = 100 * group["accuracy_mean"].mean(), 100 * group["accuracy_std"].max()
        color, style = ("grey", "--") if kind == "dense" else ("k", control_styles[index % len(control_styles)])
        ax.axhline(mean, color=color, ls=style, label=f"{line} ({mean:.2f} ± {std:.2f}%)")
        if std > 0:
            ax.axhspan(mean - std, mean + std, color=color, alpha=0.08, linewidth=0)
    if (curves["n"] < most).any():
        ax.plot([], [], "o", color="grey", markerfacecolor="white", ls="none",
                label=f"hollow: fewer than {most} seeds so far")
    ax.set(xlabel="sparsity: pruned fraction of the weights the target covers (%; small dense: fewer parameters)",
           ylabel="test accuracy (%), mean ± 1 std over seeds", title="Accuracy–sparsity frontier")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: many lines
    return _save(fig, path)


def sensitivity_figure(rows: list[dict], path: Path) -> Path:
    """Test accuracy with one layer pruned alone, per layer (:func:`sparsenet.sensitivity.measure`'s rows)."""
    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for layer, group in frame.groupby("layer", sort=False):
        group = group.sort_values("sparsity")
        weights = int(group["weights"].iloc[0])
        ax.plot(100 * group["sparsity"], 100 * group["accuracy"], "o-", label=f"{layer} ({weights:,} weights)")
    base = frame.loc[frame["share"] == 0, "accuracy"]
    if len(base):
        ax.axhline(100 * base.iloc[0], color="grey", ls="--", label=f"unpruned ({100 * base.iloc[0]:.2f}%)")
    ax.set(xlabel="sparsity of the layer pruned (%)", ylabel="test accuracy (%)",
           title="Per-layer sensitivity: one layer pruned at a time, no retraining")
    ax.legend(fontsize=8)
    return _save(fig, path)
