"""Every figure of the pipeline.  Reads models and logs; never trains."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

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


FRONTIER_LEGEND_MAX = 8  # entries per panel; further variants are numbered on the plot and listed below it
FRONTIER_OFF_SCALE = 0.20  # a point this far below the dense model has collapsed: drawn at the bottom edge
FRONTIER_DODGE = 0.012  # log10 shift between the curves, so that error bars at one sparsity do not hide each other
FRONTIER_PRUNED_COLORS = ("C0", "C1", "C2", "C3", "C4", "C6", "C8", "C9")  # no grey (dense) nor brown (small)
FRONTIER_SMALL_COLOR = "C5"
FRONTIER_STYLES = ("-", "--", ":", "-.")  # a family's lines, by rank
SMALL_PREFIX = "small dense, from scratch"


def _family(kind: str, line: str) -> str:
    """The family of a frontier line, which gives it its colour: the method with its first
    parenthesis (``magnitude (global)``, ``structured (filters, l2)``), without what follows
    (``epochs 6, finetune_epochs 2``); every small-dense line is one family."""
    if kind == "small":
        return SMALL_PREFIX
    depth = 0
    for index, char in enumerate(line):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == ")" and depth == 0:
            return line[:index + 1]
    return line


def _is_structured(line: str) -> bool:
    """Whether a line belongs to the structured panel (the names :func:`sparsenet.frontier.experiment_rows` gives)."""
    return line.startswith("structured (") or "widths of structured" in line


def _legend_name(line: str, structured: bool) -> str:
    """A line's name, shorter: ``structured`` goes without saying in its panel; a small model's
    parentheses become ``: …``."""
    if line.startswith(SMALL_PREFIX + " ("):
        inner, _, rest = line.removeprefix(SMALL_PREFIX + " (").rpartition(")")
        line = f"small dense from scratch: {inner}{rest}"
    return line.replace("structured (", "(") if structured else line


def _wrap(text: str, width: int = 38) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _place_labels(ax: plt.Axes, labels: list[tuple[float, float, str, str]], merge: bool, gap: float = 9.0) -> None:
    """Texts (x, y, text, colour) just right of their points.  Where two at about the same x
    would overlap (closer than ``gap`` points), ``merge`` joins them into one text at their
    middle (numbers: both points are there); otherwise the later one moves up, in the order given."""
    to_points = 72 / ax.figure.dpi

    def position(x: float, y: float) -> np.ndarray:
        return ax.transData.transform((x, y)) * to_points

    placed: list[list] = []  # [display x, display y, x, y, texts, colours, display x the text starts from]
    points = [position(x, y)[0] for x, y, _, _ in labels]
    for x, y, text, color in labels:
        px, py = position(x, y)
        start = max(p for p in points if abs(p - px) < 20)  # right of the rightmost point nearby
        near = [p for p in placed if abs(p[0] - px) < 20 and abs(p[1] - py) < gap]
        if merge and near:
            other = near[0]
            other[1] = (other[1] * len(other[4]) + py) / (len(other[4]) + 1)
            other[4].append(text)
            other[5].append(color)
            continue
        while not merge and near:  # stacked upwards
            py = max(p[1] for p in near) + gap
            near = [p for p in placed if abs(p[0] - px) < 20 and abs(p[1] - py) < gap]
        placed.append([px, py, x, y, [text], [color], start])
    for px, py, x, y, texts, colors, start in placed:
        shift = py - position(x, y)[1]
        ax.annotate(", ".join(texts), (x, y), xytext=(6 + start - px, shift), textcoords="offset points", fontsize=7,
                    color=colors[0] if len(set(colors)) == 1 else "0.25", va="center", ha="left",
                    annotation_clip=False)


def _frontier_lines(panel: pd.DataFrame, several_schedules: bool) -> list[dict]:
    """The panel's lines grouped by family, each family's main line first (most points — the
    sweep proper — then the shortest name), pruned families before the small models; each line
    with its ``rank`` in its family and its family's ``color``."""
    families: dict[str, list[dict]] = {}
    groups = [(key, group.sort_values("target_sparsity"))
              for key, group in panel.groupby(["kind", "line", "schedule"], sort=True)]
    for (kind, line, schedule), group in sorted(groups, key=lambda item: (-len(item[1]), len(item[0][1]))):
        family = _family(kind, line)
        schedule_name = f", {schedule} schedule" if several_schedules and schedule else ""
        families.setdefault(family, []).append({"kind": kind, "line": line + schedule_name, "group": group})
    colors = iter(FRONTIER_PRUNED_COLORS * 3)
    lines = []
    for family in sorted(families, key=lambda f: (f == SMALL_PREFIX, f)):
        color = FRONTIER_SMALL_COLOR if family == SMALL_PREFIX else next(colors)
        lines += [{**entry, "rank": rank, "color": color} for rank, entry in enumerate(families[family])]
    return lines


def _draw_frontier_panel(ax: plt.Axes, panel: pd.DataFrame, structured: bool, references: list[pd.Series],
                         floor: float, most: int, several_schedules: bool, numbered: list[str]
                         ) -> tuple[list[tuple], list[tuple]]:
    """One panel of :func:`draw_frontier`; returns its labels to place once the layout is final:
    the numbers of the lines left out of the legend (appended to ``numbered``) and the values
    of the collapsed points."""
    lines = _frontier_lines(panel, several_schedules)
    fewer_seeds = bool((panel["n"] < most).any())
    slots = FRONTIER_LEGEND_MAX - len(references) - fewer_seeds
    if len(lines) > slots:  # no room for every variant: the main lines only, while they fit
        mains = [line for line in lines if line["rank"] == 0]
        legend = {id(line) for line in sorted(mains, key=lambda line: -len(line["group"]))[:slots]}
    else:
        legend = {id(line) for line in lines}
    # the x of a pruned model at each target; a small model sits at its pruned models' (it shares their target)
    pruned = panel[panel["kind"] == "pruned"]
    kept_at = (1 - pruned.groupby("target_sparsity")["sparsity_mean"].mean()).to_dict()
    curve_count = sum(len(line["group"]) > 1 for line in lines)
    curve_index, labels, lows = 0, [], []
    for line in lines:
        group, small, color = line["group"], line["kind"] == "small", line["color"]
        x = np.array([kept_at.get(target, 1 - target) if small else 1 - sparsity
                      for target, sparsity in zip(group["target_sparsity"], group["sparsity_mean"])])
        y, err = 100 * group["accuracy_mean"].to_numpy(), 100 * group["accuracy_std"].to_numpy()
        if len(group) > 1:
            x = x * 10 ** (FRONTIER_DODGE * (curve_index - (curve_count - 1) / 2))
            curve_index += 1
            marker, style = ("s" if small else "o"), FRONTIER_STYLES[(line["rank"] + small) % len(FRONTIER_STYLES)]
        else:  # a variant at one sparsity
            marker, style = ("p" if small else "D"), "none"
        label = _wrap(_legend_name(line["line"], structured)) if id(line) in legend else None
        ax.plot(x, y, marker=marker, ls=style, color=color, label=label, ms=5 if style == "none" else 4.5,
                lw=1.4, zorder=3, gid=f"{line['kind']}: {line['line']}")  # the gid names the row it draws
        ax.errorbar(x, y, yerr=err, fmt="none", ecolor=color, elinewidth=1, capsize=2, zorder=3)
        fewer = (group["n"] < most).to_numpy()  # fewer seeds (one run has no bar): hollow, less sure
        if fewer.any():
            ax.plot(x[fewer], y[fewer], marker, ls="none", color=color, markerfacecolor="white", zorder=4)
        low = y < floor
        lows += [(xi, yi, ei, color, line["line"]) for xi, yi, ei in zip(x[low], y[low], err[low])]
        if label is None and (~low).any():  # numbered at its point, a curve at its last one on the axis
            numbered.append(line["line"])
            labels.append((x[~low][-1], y[~low][-1], str(len(numbered)), color))
        elif label is None:
            numbered.append(line["line"])
    in_scale = 100 * panel["accuracy_mean"] >= floor
    spans = list(100 * (panel["accuracy_mean"] - panel["accuracy_std"])[in_scale])
    spans += list(100 * (panel["accuracy_mean"] + panel["accuracy_std"])[in_scale])
    for row in references:
        dense = row["kind"] == "dense"
        mean, std = 100 * row["accuracy_mean"], 100 * row["accuracy_std"]
        color = "grey" if dense else "k"
        ax.axhline(mean, color=color, ls="--" if dense else ":", lw=1.2, zorder=2,
                   label=_wrap(f"{row['line']} ({mean:.2f} ± {std:.2f}%)"))
        ax.axhspan(mean - std, mean + std, color=color, alpha=0.2 if dense else 0.12, lw=0, zorder=1)
        spans += [mean - std, mean + std]
    margin = 0.05 * (max(spans) - min(spans))
    ax.set_ylim(min(spans) - margin, max(spans) + margin)
    ticks = sorted({1 - target for target in panel["target_sparsity"]}, reverse=True)
    ax.set_xlim(max(ticks) * 10 ** 0.09, min(ticks) / 10 ** 0.2)  # more kept on the left; room for the labels
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{100 * kept:.3g}%" for kept in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    sparsity_axis = ax.secondary_xaxis("top")  # the same points as the sweep's targets (frontier.md's columns)
    sparsity_axis.set_xticks(ticks, [f"{100 * (1 - kept):.3g}%" for kept in ticks])
    sparsity_axis.xaxis.set_minor_locator(NullLocator())
    sparsity_axis.set_xlabel("sparsity (share pruned)", fontsize=9)
    edge, values = ax.get_ylim()[0], []
    for xi, yi, ei, color, name in sorted(lows, key=lambda low: low[1]):  # lowest first: the bottom of the stack
        ax.plot(xi, edge, "v", color=color, ms=7, clip_on=False, zorder=5, gid=f"collapsed: {name}")
        values.append((xi, edge, f"{yi:.1f}" + (f" ± {ei:.1f}" if ei else ""), color))
    if fewer_seeds:
        ax.plot([], [], "o", color="grey", markerfacecolor="white", ls="none", label=f"hollow: fewer than {most} seeds")
    ax.set_title("structured: whole filters / channels removed" if structured else
                 "unstructured: single weights removed", fontsize=11)
    ax.set(xlabel="weights kept (of the layers the target covers; log scale)",
           ylabel=f"test accuracy (%), mean ± 1 std over {most} seeds")
    ax.legend(fontsize=7.5, loc="best", framealpha=0.9)
    return labels, values


def draw_frontier(means: list[dict]) -> plt.Figure:
    """The frontier figure (see :func:`frontier_figure`), not yet saved."""
    frame = pd.DataFrame(means)
    for column in ("accuracy_std", "sparsity_mean", "accuracy_mean", "target_sparsity", "n"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["accuracy_std"] = frame["accuracy_std"].fillna(0.0)  # one run: no spread to draw
    frame["schedule"] = frame["schedule"].fillna("").astype(str)  # read back from a CSV, "" became NaN
    frame["structured"] = frame["line"].map(_is_structured)
    curves = frame[frame["kind"].isin(["pruned", "small"])]
    if curves.empty:
        raise SparseNetError("no pruned or small-dense rows to draw a frontier of")
    most = int(frame["n"].max())
    several_schedules = curves.loc[curves["kind"] == "pruned", "schedule"].nunique() > 1
    references = []
    for kind in ("dense", "control"):  # several (other epochs, lr schedules): the default, whose name has no suffix
        rows = frame[frame["kind"] == kind]
        if not rows.empty:
            references.append(rows.loc[rows["line"].str.len().idxmin()])
    top = 100 * (references[0]["accuracy_mean"] if references and references[0]["kind"] == "dense"
                 else curves["accuracy_mean"].max())
    panels = list(curves.groupby("structured", sort=True))
    fig, axes = plt.subplots(1, len(panels), figsize=(7.2 * len(panels), 6.2), squeeze=False)
    numbered: list[str] = []  # across the panels, so that a number names one line
    placements = []
    for ax, (structured, panel) in zip(axes[0], panels):
        floor = top - 100 * FRONTIER_OFF_SCALE
        if not references and (100 * panel["accuracy_mean"] < floor).all():
            floor = -np.inf  # every point collapsed and nothing else to show: the axis is theirs
        first = len(numbered)
        labels, values = _draw_frontier_panel(ax, panel, structured, references, floor, most, several_schedules,
                                              numbered)
        placements.append((ax, labels, values))
        notes = []
        if values:
            notes.append(f"▼ on the bottom edge: collapsed, more than {100 * FRONTIER_OFF_SCALE:.0f} points below "
                         "the dense model (its mean ± std beside it)")
        if (panel["kind"] == "small").any():
            notes.append("small dense: trained from scratch at the size of the pruned model, drawn at its x")
        if len(numbered) > first:
            notes.append("numbered: other settings (each against its own control, in frontier.md)")
            notes += [f"  {index}: {line}" for index, line in enumerate(numbered[first:], first + 1)]
        if notes:  # under the x label, whatever its height
            ax.annotate("\n".join(notes), (0, 0), xycoords=("axes fraction", ax.xaxis.label), xytext=(0, -4),
                        textcoords="offset points", va="top", ha="left", fontsize=7.5)
    fig.suptitle("Accuracy vs share of weights kept", fontsize=12)
    fig.tight_layout()
    for ax, labels, values in placements:  # after the layout: the offsets depend on the axes' final size
        _place_labels(ax, labels, merge=True)
        _place_labels(ax, values, merge=False)
    return fig


def frontier_figure(means: list[dict], path: Path) -> Path:
    """Mean test accuracy (± 1 std over the seeds) against the share of weights kept, on a log
    axis: one panel for unstructured, one for structured pruning; the dense model and the
    control (dense, same epochs) as horizontal bands.  A family's other variants (epochs, lr
    schedule, allocation) share its colour, in the legend while it has room, numbered on the
    plot and listed below it when not; a collapsed point (more than :data:`FRONTIER_OFF_SCALE`
    below the dense model) is a triangle on the bottom edge with its value, so that the y range
    stays where the curves are.  ``means``: :func:`sparsenet.frontier.aggregate`'s rows (or
    ``frontier.csv`` read back)."""
    return _save(draw_frontier(means), path)


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
