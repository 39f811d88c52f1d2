"""The frontier's rows, lines, aggregation over seeds and tables, from experiment records built
here (reading them from DVC is tests/test_sweep.py's, with real DVC)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sparsenet.experiments import Experiment, with_sets
from sparsenet.frontier import (RUN_COLUMNS, aggregate, collect_runs, experiment_name, experiment_rows,
                                interleave_seeds, markdown_table, read_runs, sweep_points, write_tables)


def pruned(rows: list[dict]) -> list[dict]:
    return [row for row in rows if row["kind"] == "pruned"]


def record(name: str, method: str, sparsity: float, accuracy: float, seed: int = 0, small: float = 0.8,
           dense: float = 0.91, control: float | None = None, baseline: str = "0123456789abcdef", **prune) -> Experiment:
    """An experiment as DVC would record it: its params.yaml and metrics/evaluate.json."""
    params = {"seed": seed, "prune": {"method": method, "sparsity": sparsity, "schedule": "cubic", **prune}}
    metrics = {"dense": {"accuracy": dense, "params": 1000},
               "control": {"accuracy": dense + 0.01 if control is None else control},
               "sparse": {"sparsity": sparsity, "accuracy": accuracy},
               "small": {"accuracy": small, "params": 100}}
    return Experiment(name, "f" * 40, baseline, params, metrics)


def test_sweep_points_cover_methods_structures_criteria_and_seeds():
    points = sweep_points(["magnitude", "structured"], [0.5, 0.9], ["filters", "channels"], ["l2", "taylor"], [0, 1, 2])
    assert len(points) == (2 + 2 * 2 * 2) * 3
    assert {"prune.method": "structured", "prune.structure": "channels", "prune.criterion": "taylor",
            "prune.sparsity": "0.9", "seed": "2"} in points
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)


def test_neighbouring_points_have_different_seeds():
    points = interleave_seeds(sweep_points(["magnitude", "random"], [0.5, 0.9], ["filters"], ["l2"], [0, 1, 2]))
    assert len(points) == 12 and len({tuple(p.items()) for p in points}) == 12
    assert [p["seed"] for p in points[:6]] == ["0", "1", "2", "0", "1", "2"]
    assert interleave_seeds([]) == []


def test_keys_missing_from_an_experiments_params_take_the_configs_defaults():
    from sparsenet.config import PruneConfig

    old = record("old-exp", "magnitude", 0.9, 0.9)
    del old.params["prune"]["schedule"]  # params.yaml without the key
    (row,) = pruned(experiment_rows(old))
    assert row["schedule"] == PruneConfig().schedule == "cubic"
    assert row["scope"] == PruneConfig().scope and row["line"] == "magnitude (global)"


def test_rows_carry_the_sparsity_over_covered_and_over_all_layers():
    excluded = record("exclude-fc1", "magnitude", 0.9, 0.88, exclude=["fc1"])
    excluded.metrics["sparse"]["sparsity_all_layers"] = 0.2
    (row,) = pruned(experiment_rows(excluded))
    assert (row["sparsity"], row["sparsity_all_layers"]) == (0.9, 0.2)
    assert row["line"] == "magnitude (global), fc1 dense" and row["exclude"] == "fc1"


def test_runs_that_differ_beyond_method_and_sparsity_are_separate_lines():
    rows = collect_runs([record("plain", "magnitude", 0.9, 0.90),
                         record("rewound", "magnitude", 0.9, 0.85, rewind="init", epochs=5)])
    assert sorted(r["line"] for r in pruned(rows)) == ["magnitude (global)", "magnitude (global), rewind init, epochs 5"]


def test_older_experiments_get_their_covered_sparsity_from_the_layer_counts():
    old = record("before-pruned-layers", "structured", 0.5, 0.9, structure="filters")
    old.metrics["sparse"] = {
        "accuracy": 0.9, "sparsity": 0.49,  # counted over every layer, fc3 (never pruned by filters) included
        "layers": {"conv1": {"zeros": 225, "total": 450}, "conv2": {"zeros": 1200, "total": 2400},
                   "fc1": {"zeros": 24000, "total": 48000}, "fc2": {"zeros": 5040, "total": 10080},
                   "fc3": {"zeros": 0, "total": 840}}}
    (row,) = pruned(experiment_rows(old))
    assert row["sparsity"] == 0.5 and row["sparsity_all_layers"] == 0.49


def test_runs_on_other_data_or_dense_training_are_separate_lines_and_seeds_are_not():
    small = record("img32", "magnitude", 0.9, 0.80)
    small.params.update({"data": {"image_size": 32}, "train": {"epochs": 1}})
    rows = collect_runs([record("plain", "magnitude", 0.9, 0.90), small, record("seed1", "magnitude", 0.9, 0.89, 1)])
    assert {row["experiment"]: row["line"] for row in pruned(rows)} == {
        "plain": "magnitude (global)", "seed1": "magnitude (global)",
        "img32": "magnitude (global), train.epochs 1, data.image_size 32"}


def three_seeds(method: str = "magnitude", sparsity: float = 0.9) -> list[Experiment]:
    return [record(f"{method}-s{seed}", method, sparsity, accuracy, seed, small, dense)
            for seed, accuracy, small, dense in [(0, 0.90, 0.80, 0.91), (1, 0.92, 0.82, 0.93), (2, 0.94, 0.84, 0.95)]]


def test_seeds_are_aggregated_into_mean_std_and_count():
    # random at the same sparsity and seed trains the very same small model: listed once per seed
    randoms = [record(f"rnd-s{seed}", "random", 0.9, 0.5, seed, small, dense)
               for seed, small, dense in [(0, 0.80, 0.91), (1, 0.82, 0.93), (2, 0.84, 0.95)]]
    rows = collect_runs(three_seeds() + randoms)
    assert sum(r["kind"] == "small" for r in rows) == 3 and sum(r["kind"] == "dense" for r in rows) == 3
    means = {(m["kind"], m["line"]): m for m in aggregate(rows)}
    magnitude = means[("pruned", "magnitude (global)")]
    assert magnitude["accuracy_mean"] == pytest.approx(0.92) and magnitude["accuracy_std"] == pytest.approx(0.02)
    assert magnitude["n"] == 3 and magnitude["seeds"] == "0 1 2" and magnitude["target_sparsity"] == 0.9
    small = means[("small", "small dense, from scratch (parameters of the pruned model)")]
    assert small["accuracy_mean"] == pytest.approx(0.82) and small["n"] == 3
    assert small["sparsity_mean"] == pytest.approx(0.9)  # 100 of the dense model's 1000 parameters
    assert means[("control", "control: dense, same total epochs")]["accuracy_mean"] == pytest.approx(0.94)
    assert means[("dense", "dense LeNet")]["accuracy_std"] == pytest.approx(0.02)


def cells(table: str) -> list[list[str]]:
    """A Markdown table's rows as stripped cells."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]


def test_the_markdown_table_has_a_row_per_line_and_a_column_per_target():
    experiments = three_seeds() + [record("rnd-s0", "random", 0.5, 0.7512),
                                   record("lin-s0", "magnitude", 0.9, 0.885, schedule="linear")]
    means = aggregate(collect_runs(experiments))
    table = cells(markdown_table(means))
    assert table[0] == ["line", "0", "0.5", "0.9"] and set(table[1][0]) == {"-"}
    assert sorted(table[2:]) == sorted([
        ["magnitude (global)", "", "", "92.00 ± 2.00"],
        ["magnitude (global), linear schedule", "", "", "88.50 (n=1)"],
        ["random (global)", "", "75.12 (n=1)", ""],
        ["small dense, from scratch (parameters of the pruned model)", "", "80.00 (n=1)", "82.00 ± 2.00"],
        ["dense LeNet", "93.00 ± 2.00", "", ""],  # one dense model per seed, however many points
        ["control: dense, same total epochs", "94.00 ± 2.00", "", ""],
    ])
    # each pruned run minus its seed's control (seed 0's: 0.92): 0.90 − 0.92, 0.7512 − 0.92, 0.885 − 0.92
    gaps = cells(markdown_table(means, "vs_control"))
    assert gaps[0] == ["line", "0.5", "0.9"]
    assert sorted(gaps[2:]) == sorted([["magnitude (global)", "", "-2.00 ± 0.00"],
                                       ["random (global)", "-16.88 (n=1)", ""],
                                       ["magnitude (global), linear schedule", "", "-3.50 (n=1)"]])


def test_a_single_run_has_no_standard_deviation():
    (magnitude,) = pruned(aggregate(collect_runs([record("one", "magnitude", 0.9, 0.9)])))
    assert magnitude["n"] == 1 and magnitude["accuracy_std"] == ""


def test_structured_lines_name_their_criterion_and_allocation():
    rows = collect_runs([record("l2", "structured", 0.5, 0.9),
                         record("taylor", "structured", 0.5, 0.9, criterion="taylor", allocation="sensitivity",
                                round_to=8)])
    assert sorted(r["line"] for r in pruned(rows)) == [
        "structured (filters, l2)", "structured (filters, taylor), sensitivity allocation, round_to 8"]


def test_each_run_is_compared_with_its_own_seeds_control():
    # seed by seed: 90.0 vs 91.0, 92.5 vs 92.0, 91.0 vs 91.5 → −1.0, +0.5, −0.5: mean −0.333, std 0.764
    rows = collect_runs([record(f"s{seed}", "magnitude", 0.9, accuracy, seed, control=control)
                         for seed, accuracy, control in [(0, 0.900, 0.910), (1, 0.925, 0.920), (2, 0.910, 0.915)]])
    assert {r["commit"] for r in rows} == {"0123456789ab"}
    (magnitude,) = pruned(aggregate(rows))
    assert magnitude["vs_control_mean"] == pytest.approx(-1 / 300)
    assert magnitude["vs_control_std"] == pytest.approx(0.0076376, abs=1e-6)
    assert magnitude["commits"] == "0123456"
    (small,) = [m for m in aggregate(rows) if m["kind"] == "small"]
    assert small["vs_control_mean"] == ""  # one small model may serve several controls (lr_schedule)


def test_the_paired_difference_counts_only_runs_that_know_their_control():
    rows = collect_runs([record(f"s{seed}", "magnitude", 0.9, accuracy, seed, dense=0.91)
                         for seed, accuracy in [(0, 0.90), (1, 0.91), (2, 0.93)]])
    for row in rows:
        if row["experiment"] == "s2":
            row["control_accuracy"] = ""  # recorded by an older version
    means = aggregate(rows)
    (magnitude,) = pruned(means)
    assert magnitude["n"] == 3 and magnitude["vs_control_n"] == 2
    assert magnitude["vs_control_mean"] == pytest.approx(-0.015)  # 0.90 − 0.92, 0.91 − 0.92
    assert ["magnitude (global)", "-1.50 ± 0.71"] in cells(markdown_table(means, "vs_control"))
    assert markdown_table([m for m in means if m["kind"] == "dense"], "vs_control") == "(no runs)\n"


def test_runs_recorded_without_their_commit_are_marked_in_the_tables(tmp_path):
    rows = collect_runs(three_seeds())
    for row in rows:
        if row["seed"] == 2:
            row["commit"] = ""  # a table of an earlier release
    means = aggregate(rows)
    assert {m["commits"] for m in means if m["kind"] == "pruned"} == {"0123456 ?"}
    table = markdown_table(means)
    assert ["magnitude (global)", "", "92.00 ± 2.00 †"] in cells(table)
    assert "† includes runs recorded without their commit" in table
    assert "†" not in markdown_table(aggregate(collect_runs(three_seeds())))


def test_small_models_of_different_widths_are_different_lines_or_runs():
    excluded = record("fc1-dense", "magnitude", 0.9, 0.89, exclude=["fc1"])  # the same small accuracy by chance
    excluded.metrics["small"]["params"] = 60_000
    rows = collect_runs([record("plain", "magnitude", 0.9, 0.90), excluded])
    smalls = [r for r in rows if r["kind"] == "small"]
    assert len(smalls) == 2 and len({r["line"] for r in smalls}) == 2
    assert all(m["n"] == 1 for m in aggregate(rows) if m["kind"] == "small")


def test_the_same_point_on_two_commits_is_two_runs():
    rows = collect_runs([record("p", "magnitude", 0.9, 0.90, baseline="a" * 40),
                         record("p", "magnitude", 0.9, 0.91, baseline="b" * 40)])
    assert sorted(r["commit"] for r in pruned(rows)) == ["a" * 12, "b" * 12]


def test_a_runs_table_reads_back_as_written_and_renders_the_same_tables(tmp_path):
    rows = collect_runs(three_seeds() + three_seeds("random", 0.5))
    means = write_tables(rows, tmp_path)
    assert read_runs(tmp_path / "frontier_runs.csv") == rows  # numbers come back as numbers
    assert write_tables(read_runs(tmp_path / "frontier_runs.csv"), tmp_path / "again") == means
    assert (tmp_path / "again" / "frontier.md").read_text() == (tmp_path / "frontier.md").read_text()
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"


def test_a_foreign_or_short_runs_table_is_refused_in_one_line(tmp_path):
    from sparsenet.errors import SparseNetError
    from sparsenet.io import write_csv

    table = tmp_path / "runs.csv"
    table.write_text("a,b\n1,2\n")
    with pytest.raises(SparseNetError, match="not a frontier runs table"):
        read_runs(table)
    with pytest.raises(SparseNetError, match="no such runs table"):
        read_runs(tmp_path / "missing.csv")
    write_csv(table, collect_runs([record("s0", "magnitude", 0.9, 0.9)]), RUN_COLUMNS)
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:2] + [lines[2].rsplit(",", 6)[0]]) + "\n")  # cut after `sparsity`
    with pytest.raises(SparseNetError, match=r"runs.csv: line 3: target_sparsity = ''; expected a number"):
        read_runs(table)


def test_experiment_names_hold_every_value_and_stay_valid_ref_names():
    import re

    point = {"prune.method": "structured", "prune.structure": "filters", "prune.criterion": "l2",
             "prune.sparsity": "0.5", "seed": "2"}
    assert experiment_name(point, ["prune.allocation=sensitivity"]) == \
        "sweep-structured-filters-l2-0.5-allocationsensitivity-seed2"
    excluded = experiment_name(point, ["prune.exclude=[fc1]"])  # brackets lost: a digest keeps it apart
    assert re.fullmatch(r"sweep-structured-filters-l2-0\.5-excludefc1-[0-9a-f]{6}-seed2", excluded), excluded
    assert excluded != experiment_name(point, ["prune.exclude=fc1"])
    assert experiment_name(point, []) != experiment_name(point, ["prune.allocation=sensitivity"])
    names = {experiment_name(point, [extra]) for extra in ("prune.epochs=5", "prune.finetune_epochs=5", "train.epochs=5",
                                                           "prune.lr=1.5", "prune.lr=15", "prune.lr=0.15")}
    assert len(names) == 6  # the same value under different keys, values differing in a dot: all apart
    for name in names | {excluded}:  # what `git check-ref-format` takes, as DVC requires
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name) and ".." not in name and not name.startswith(".")


def test_sets_apply_to_the_params_as_dvc_exp_run_reads_them():
    # YAML 1.2, as DVC reads params.yaml: 1e-3 a number, 010 ten, `on` a string
    text = "seed: 0\nprune:\n  sparsity: 0.95\n  lr: 1e-3\n  exclude: []\n  flag: on\n  width: 010\n"
    assert with_sets(text, []) == {"seed": 0, "prune": {"sparsity": 0.95, "lr": 0.001, "exclude": [], "flag": "on",
                                                        "width": 10}}
    out = with_sets(text, ["seed=2", "prune.sparsity=0.5", "prune.lr=2e-3", "prune.exclude=[fc1,conv1]",
                           "prune.flag=off"])
    assert out["seed"] == 2 and out["prune"] == {"sparsity": 0.5, "lr": 0.002, "exclude": ["fc1", "conv1"],
                                                 "flag": "off", "width": 10}


def test_a_relative_git_remote_reaches_the_clones_as_an_absolute_path(tmp_path, monkeypatch):
    """Each point clones from its own temporary folder: a relative remote must not stay relative."""
    import subprocess

    from sparsenet.frontier import _git_remote

    root, bare = tmp_path / "repo", tmp_path / "shared.git"
    root.mkdir()
    bare.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "remote", "add", "shared", "../shared.git"], cwd=root, check=True)
    monkeypatch.chdir(root)
    assert _git_remote(root, "shared", None) == str(bare.resolve())      # a remote's name, its URL relative
    assert _git_remote(root, "../shared.git", None) == str(bare.resolve())  # a relative path, from here
    assert _git_remote(root, "ssh://git.example/x.git", None) == "ssh://git.example/x.git"


# The frontier figure: properties one can check without looking at it.

FRONTIER_CSV = Path(__file__).resolve().parents[1] / "results" / "frontier" / "frontier.csv"


def drawn(means: list[dict]):
    """The figure drawn, its panels and, per panel, the points of every line (by its row)."""
    from sparsenet.plots import draw_frontier

    fig = draw_frontier(means)
    fig.canvas.draw()  # the legends' and labels' places are final only once drawn
    points = [{line.get_gid(): line for line in ax.get_lines()
               if line.get_gid() and not line.get_gid().startswith("collapsed: ")} for ax in fig.axes]
    return fig, fig.axes, points


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_the_committed_frontier_has_a_panel_per_structure_on_a_log_axis_of_weights_kept():
    import matplotlib.pyplot as plt

    means = pd.read_csv(FRONTIER_CSV).to_dict("records")
    fig, axes, points = drawn(means)
    assert [ax.get_title().split(":")[0] for ax in axes] == ["unstructured", "structured"]
    table = pd.read_csv(FRONTIER_CSV).fillna({"accuracy_std": 0})
    table["name"] = table["kind"] + ": " + table["line"]
    rows = set(table.loc[table["kind"].isin(["pruned", "small"]), "name"])
    assert set(points[0]) | set(points[1]) == rows and not set(points[0]) & set(points[1])  # each line once
    assert all(name.startswith(("pruned: structured", "small: small dense, from scratch (widths of structured"))
               for name in points[1])
    for ax, lines in zip(axes, points):
        left, right = ax.get_xlim()
        assert ax.get_xscale() == "log" and left > right  # more kept on the left, sparser to the right
        assert [t.get_text() for t in ax.get_xticklabels()] == ["50%", "30%", "20%", "10%", "5%", "2%"]
        assert all(right < x < left for line in lines.values() for x in line.get_xdata())
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert len(legend) <= 8 and sum(text.startswith("control") for text in legend) == 1
        bottom, top = ax.get_ylim()
        ys = np.concatenate([line.get_ydata() for line in lines.values()])
        collapsed = ys[ys < bottom]
        assert (ys <= top).all() and len(collapsed) == len(
            [line for line in ax.get_lines() if (line.get_gid() or "").startswith("collapsed: ")])
        assert (collapsed < 70.92).all()  # off the axis only when 20 points below the dense model (90.92)
        shown = table[table["name"].isin(list(lines)) & (100 * table["accuracy_mean"] >= bottom)]
        bars = 100 * (shown["accuracy_mean"] - shown["accuracy_std"]), 100 * (shown["accuracy_mean"] + shown["accuracy_std"])
        assert bottom <= bars[0].min() and bars[1].max() <= top  # the error bars of every point shown, whole
        assert bottom > bars[0].min() - 0.1 * (top - bottom)  # and the axis ends where they do
        box = ax.get_legend().get_window_extent()
        xy = np.concatenate([line.get_xydata() for line in lines.values()])
        pixels = ax.transData.transform(xy[xy[:, 1] >= bottom])
        assert not [p for p in pixels if box.x0 <= p[0] <= box.x1 and box.y0 <= p[1] <= box.y1]  # hides no point
        labels = [text.get_window_extent() for text in ax.texts if "\n" not in text.get_text()]
        assert not [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:] if overlaps(a, b)]
        assert not [label for label in labels if overlaps(label, box)]
    assert points[0]["pruned: random (global)"].get_ydata().min() < axes[0].get_ylim()[0]  # 52% at 2%: marked
    assert axes[0].get_ylim()[0] > 70  # and the panel keeps to where magnitude and taylor are
    assert "52.4 ± 5.1" in [text.get_text() for text in axes[0].texts]
    plt.close(fig)


def test_variants_beyond_the_legends_room_are_numbered_on_the_plot_and_listed_under_it():
    import matplotlib.pyplot as plt

    experiments = three_seeds() + three_seeds("random") + [record("lone", "taylor", 0.5, 0.9)]
    experiments += [record(f"e{epochs}", "magnitude", 0.9, 0.9 - epochs / 1000, epochs=epochs) for epochs in range(4, 12)]
    means = aggregate(collect_runs(experiments))
    fig, (ax,), (lines,) = drawn(means)  # nothing structured: one panel
    rows = {f"{m['kind']}: {m['line']}" for m in means if m["kind"] in ("pruned", "small")}
    assert set(lines) == rows and len(rows) == 20  # 8 epochs variants of magnitude and of its small model
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) <= 8 and "hollow: fewer than 3 seeds" in legend  # taylor ran once
    assert sum(text.startswith(("dense", "control", "hollow")) for text in legend) == 3
    note = next(text.get_text() for text in ax.texts if "numbered" in text.get_text())
    listed = [line.split(": ", 1)[1] for line in note.splitlines() if line.startswith("  ")]
    assert len(listed) + len(legend) - 3 == len(rows)  # every other line is numbered and listed
    assert "magnitude (global), epochs 11" in listed
    numbers = {text.get_text() for text in ax.texts if "\n" not in text.get_text()}
    assert {n for text in numbers for n in text.split(", ")} == {str(i) for i in range(1, len(listed) + 1)}
    bottom, top = ax.get_ylim()
    assert all(bottom <= y <= top for line in lines.values() for y in line.get_ydata())
    plt.close(fig)


def test_a_collapsed_point_is_marked_at_the_edge_instead_of_stretching_the_axis():
    import matplotlib.pyplot as plt

    experiments = three_seeds() + [record(f"bad-s{seed}", "random", 0.9, 0.1, seed) for seed in range(3)]
    fig, (ax,), (lines,) = drawn(aggregate(collect_runs(experiments)))
    bottom, _ = ax.get_ylim()
    assert bottom > 70 and lines["pruned: random (global)"].get_ydata()[0] == pytest.approx(10)
    (marker,) = [line for line in ax.get_lines() if line.get_gid() == "collapsed: random (global)"]
    assert marker.get_ydata()[0] == bottom and not marker.get_clip_on()
    assert "10.0" in [text.get_text() for text in ax.texts]
    plt.close(fig)
