"""Reading the frontier back from `dvc exp show --json` (the shape DVC 3 prints)."""

import pytest

from sparsenet.frontier import (aggregate, collect_points, live_workers, markdown_table, queue_tasks, sweep_points,
                                waiting_names)


def pruned(rows: list[dict]) -> list[dict]:
    return [row for row in rows if row["kind"] == "pruned"]


def _rev(name: str, method: str, sparsity: float, accuracy: float) -> dict:
    return {"rev": name, "name": name, "data": {
        "params": {"params.yaml": {"data": {"prune": {"method": method, "sparsity": sparsity, "schedule": "cubic"}}}},
        "metrics": {"metrics/evaluate.json": {"data": {
            "dense": {"accuracy": 0.91}, "control": {"accuracy": 0.914},
            "sparse": {"sparsity": sparsity, "accuracy": accuracy}}}},
    }}


def _experiment(state: str | None, rev: dict) -> dict:
    executor = None if state is None else {"state": state}
    return {"executor": executor, "name": rev["name"], "revs": [rev]}


def test_unfinished_experiments_are_left_out_and_the_baseline_is_not_repeated():
    baseline = _rev("abc123", "magnitude", 0.95, 0.9121)
    show = [{"rev": "workspace", "data": baseline["data"], "experiments": None},
            {**baseline, "experiments": [
                _experiment("success", _rev("sweep-magnitude-095", "magnitude", 0.95, 0.9121)),
                _experiment(None, _rev("by-hand", "random", 0.5, 0.90)),
                _experiment("running", _rev("sweep-random-09", "random", 0.9, 0.9121)),  # baseline's metrics
                _experiment("queued", _rev("sweep-random-095", "random", 0.95, 0.9121)),
                _experiment("failed", _rev("sweep-random-098", "random", 0.98, 0.5)),
            ]}]
    rows = pruned(collect_points(show))
    assert [(r["experiment"], r["line"], r["accuracy"]) for r in rows] == [
        ("sweep-magnitude-095", "magnitude (global)", 0.9121), ("by-hand", "random (global)", 0.90)]
    references = [(r["kind"], r["accuracy"]) for r in collect_points(show) if r["kind"] != "pruned"]
    assert references == [("dense", 0.91), ("control", 0.914)]  # one seed: listed once


def test_sweep_points_cover_methods_structures_criteria_and_seeds():
    points = sweep_points(["magnitude", "structured"], [0.5, 0.9], ["filters", "channels"], ["l2", "taylor"], [0, 1, 2])
    assert len(points) == (2 + 2 * 2 * 2) * 3
    assert {"prune.method": "structured", "prune.structure": "channels", "prune.criterion": "taylor",
            "prune.sparsity": "0.9", "seed": "2"} in points
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)


def test_keys_missing_from_an_experiments_params_take_the_configs_defaults():
    from sparsenet.config import PruneConfig

    rev = _rev("old-exp", "magnitude", 0.9, 0.9)
    del rev["data"]["params"]["params.yaml"]["data"]["prune"]["schedule"]  # params.yaml without the key
    (row,) = pruned(collect_points([{"rev": "workspace", "data": rev["data"], "experiments": None}]))
    assert row["schedule"] == PruneConfig().schedule == "cubic"
    assert row["scope"] == PruneConfig().scope and row["line"] == "magnitude (global)"


def test_rows_carry_the_sparsity_over_covered_and_over_all_layers():
    rev = _rev("exclude-fc1", "magnitude", 0.9, 0.88)
    rev["data"]["params"]["params.yaml"]["data"]["prune"]["exclude"] = ["fc1"]
    sparse = rev["data"]["metrics"]["metrics/evaluate.json"]["data"]["sparse"]
    sparse["sparsity_all_layers"] = 0.2
    (row,) = pruned(collect_points([{"rev": "workspace", "data": rev["data"], "experiments": None}]))
    assert (row["sparsity"], row["sparsity_all_layers"]) == (0.9, 0.2)
    assert row["line"] == "magnitude (global), fc1 dense" and row["exclude"] == "fc1"


def test_runs_that_differ_beyond_method_and_sparsity_are_separate_lines():
    plain = _rev("plain", "magnitude", 0.9, 0.90)
    rewound = _rev("rewound", "magnitude", 0.9, 0.85)
    rewound["data"]["params"]["params.yaml"]["data"]["prune"].update({"rewind": "init", "epochs": 5})
    rows = pruned(collect_points([{**plain, "experiments": [_experiment("success", rewound)]}]))
    assert sorted(row["line"] for row in rows) == ["magnitude (global)", "magnitude (global), rewind init, epochs 5"]


def test_older_experiments_get_their_covered_sparsity_from_the_layer_counts():
    old = _rev("before-pruned-layers", "structured", 0.5, 0.9)
    old["data"]["params"]["params.yaml"]["data"]["prune"]["structure"] = "filters"
    old["data"]["metrics"]["metrics/evaluate.json"]["data"]["sparse"] = {
        "accuracy": 0.9, "sparsity": 0.49,  # counted over every layer, fc3 (never pruned by filters) included
        "layers": {"conv1": {"zeros": 225, "total": 450}, "conv2": {"zeros": 1200, "total": 2400},
                   "fc1": {"zeros": 24000, "total": 48000}, "fc2": {"zeros": 5040, "total": 10080},
                   "fc3": {"zeros": 0, "total": 840}}}
    (row,) = pruned(collect_points([{"rev": "workspace", "data": old["data"], "experiments": None}]))
    assert row["sparsity"] == 0.5 and row["sparsity_all_layers"] == 0.49


def test_runs_on_other_data_or_dense_training_are_separate_lines_and_seeds_are_not():
    plain = _rev("plain", "magnitude", 0.9, 0.90)
    small = _rev("img32", "magnitude", 0.9, 0.80)
    small["data"]["params"]["params.yaml"]["data"].update({"data": {"image_size": 32}, "train": {"epochs": 1}})
    seed = _rev("seed1", "magnitude", 0.9, 0.89)
    seed["data"]["params"]["params.yaml"]["data"]["seed"] = 1
    rows = pruned(collect_points([{**plain, "experiments": [_experiment("success", small),
                                                             _experiment("success", seed)]}]))
    lines = {row["experiment"]: row["line"] for row in rows}
    assert lines == {"plain": "magnitude (global)", "seed1": "magnitude (global)",
                     "img32": "magnitude (global), train.epochs 1, data.image_size 32"}


def _seeded(name: str, method: str, sparsity: float, seed: int, accuracy: float, small: float, dense: float) -> dict:
    rev = _rev(name, method, sparsity, accuracy)
    rev["data"]["params"]["params.yaml"]["data"]["seed"] = seed
    metrics = rev["data"]["metrics"]["metrics/evaluate.json"]["data"]
    metrics["dense"] = {"accuracy": dense, "params": 1000}
    metrics["control"] = {"accuracy": dense + 0.01}
    metrics["small"] = {"accuracy": small, "params": 100, "widths": [1, 2, 3, 4]}
    return rev


def test_seeds_are_aggregated_into_mean_std_and_count():
    revs = [_seeded(f"mag-s{seed}", "magnitude", 0.9, seed, acc, small, dense)
            for seed, acc, small, dense in [(0, 0.90, 0.80, 0.91), (1, 0.92, 0.82, 0.93), (2, 0.94, 0.84, 0.95)]]
    # random at the same sparsity and seed trains the very same small model: listed once per seed
    revs += [_seeded(f"rnd-s{seed}", "random", 0.9, seed, 0.5, small, dense)
             for seed, small, dense in [(0, 0.80, 0.91), (1, 0.82, 0.93), (2, 0.84, 0.95)]]
    rows = collect_points([{"rev": "base", "data": {}, "experiments": [_experiment("success", r) for r in revs]}])
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


def test_the_markdown_table_has_a_row_per_line_and_a_column_per_target():
    revs = [_seeded(f"mag-s{seed}", "magnitude", 0.9, seed, acc, small, dense)
            for seed, acc, small, dense in [(0, 0.90, 0.80, 0.91), (1, 0.92, 0.82, 0.93), (2, 0.94, 0.84, 0.95)]]
    revs.append(_seeded("rnd-s0", "random", 0.5, 0, 0.7512, 0.80, 0.91))
    revs.append(_seeded("lin-s0", "magnitude", 0.9, 0, 0.885, 0.80, 0.91))
    revs[-1]["data"]["params"]["params.yaml"]["data"]["prune"]["schedule"] = "linear"
    rows = collect_points([{"rev": "base", "data": {}, "experiments": [_experiment("success", r) for r in revs]}])
    table = markdown_table(aggregate(rows)).splitlines()
    assert table[:2] == ["| line | 0 | 0.5 | 0.9 |", "|---|---|---|---|"]
    assert set(table[2:]) == {
        "| magnitude (global) |  |  | 92.00 ± 2.00 |",
        "| magnitude (global), linear schedule |  |  | 88.50 (n=1) |",
        "| random (global) |  | 75.12 (n=1) |  |",
        "| small dense, from scratch (parameters of the pruned model) |  | 80.00 (n=1) | 82.00 ± 2.00 |",
        "| dense LeNet | 93.00 ± 2.00 |  |  |",  # one dense model per seed, however many points
        "| control: dense, same total epochs | 94.00 ± 2.00 |  |  |",
    }
    # each pruned run minus its seed's control (seed 0's: 0.92): 0.90 − 0.92, 0.7512 − 0.92, 0.885 − 0.92
    gaps = markdown_table(aggregate(rows), "vs_control").splitlines()
    assert gaps[:2] == ["| line | 0.5 | 0.9 |", "|---|---|---|"]
    assert set(gaps[2:]) == {"| magnitude (global) |  | -2.00 ± 0.00 |", "| random (global) | -16.88 (n=1) |  |",
                             "| magnitude (global), linear schedule |  | -3.50 (n=1) |"}


def test_a_single_run_has_no_standard_deviation():
    rows = collect_points([{"rev": "base", "data": {}, "experiments": [
        _experiment("success", _seeded("one", "magnitude", 0.9, 0, 0.9, 0.8, 0.91))]}])
    (magnitude,) = [m for m in aggregate(rows) if m["kind"] == "pruned"]
    assert magnitude["n"] == 1 and magnitude["accuracy_std"] == ""


def test_structured_lines_name_their_criterion_and_allocation():
    plain = _rev("l2", "structured", 0.5, 0.9)
    taylor = _rev("taylor", "structured", 0.5, 0.9)
    taylor["data"]["params"]["params.yaml"]["data"]["prune"].update(
        {"criterion": "taylor", "allocation": "sensitivity", "round_to": 8})
    lines = sorted(r["line"] for r in pruned(collect_points([{**plain, "experiments": [_experiment("success", taylor)]}])))
    assert lines == ["structured (filters, l2)", "structured (filters, taylor), sensitivity allocation, round_to 8"]


def test_runs_of_experiments_dvc_no_longer_holds_are_kept_from_the_csv(tmp_path):
    from sparsenet.frontier import RUN_COLUMNS, merge_runs, read_runs
    from sparsenet.io import write_csv

    earlier = collect_points([{"rev": "base", "data": {}, "experiments": [
        _experiment("success", _seeded("gone-s0", "magnitude", 0.9, 0, 0.90, 0.8, 0.91)),
        _experiment("success", _seeded("kept-s1", "magnitude", 0.9, 1, 0.92, 0.8, 0.93))]}])
    table = tmp_path / "runs.csv"
    write_csv(table, earlier, RUN_COLUMNS)
    assert read_runs(table) == earlier  # numbers come back as numbers
    # this session's DVC holds seed 1 again (same results) and a new seed 2; seed 0's experiment is gone
    current = collect_points([{"rev": "base", "data": {}, "experiments": [
        _experiment("success", _seeded("kept-s1", "magnitude", 0.9, 1, 0.92, 0.8, 0.93)),
        _experiment("success", _seeded("new-s2", "magnitude", 0.9, 2, 0.94, 0.8, 0.95))]}])
    merged = merge_runs(read_runs(table), current)
    assert sorted(r["seed"] for r in merged if r["kind"] == "pruned") == [0, 1, 2]
    assert sorted(r["seed"] for r in merged if r["kind"] == "dense") == [0, 1, 2]


def test_runs_tables_of_earlier_versions_are_read_and_written_back(tmp_path):
    # before `commit` and `control_accuracy` existed, and one with a column since dropped
    from sparsenet.frontier import RUN_COLUMNS, plot_frontier, read_runs

    rows = collect_points([{"rev": "base", "data": {}, "experiments": [
        _experiment("success", _seeded("s0", "magnitude", 0.9, 0, 0.90, 0.8, 0.91))]}])
    old_columns = [c for c in RUN_COLUMNS if c not in ("commit", "control_accuracy")] + ["widths"]
    header = ",".join(old_columns)
    body = "\n".join(",".join(str(row.get(c, "")) if c != "line" else f'"{row[c]}"' for c in old_columns)
                     for row in rows)
    table = tmp_path / "runs.csv"
    table.write_text(header + "\n" + body + "\n")
    earlier = read_runs(table)
    assert [r["accuracy"] for r in earlier] == [r["accuracy"] for r in rows]
    assert all(r["commit"] == "" and r["control_accuracy"] == "" and "widths" not in r for r in earlier)
    means = plot_frontier(earlier, tmp_path / "f.png", tmp_path / "f.csv", table, tmp_path / "f.md")
    assert {m["commits"] for m in means} == {"?"} and all(m["vs_control_mean"] == "" for m in means)
    assert read_runs(table) == earlier  # written back in this version's columns


def test_each_run_is_compared_with_its_own_seeds_control():
    # seed by seed: 90.0 vs 91.0, 92.5 vs 92.0, 91.0 vs 91.5 → −1.0, +0.5, −0.5: mean −0.333, std 0.764
    revs = []
    for seed, accuracy, control in [(0, 0.900, 0.910), (1, 0.925, 0.920), (2, 0.910, 0.915)]:
        rev = _seeded(f"s{seed}", "magnitude", 0.9, seed, accuracy, 0.8, 0.9)
        rev["data"]["metrics"]["metrics/evaluate.json"]["data"]["control"] = {"accuracy": control}
        revs.append(rev)
    rows = collect_points([{"rev": "0123456789abcdef", "data": {},
                            "experiments": [_experiment("success", r) for r in revs]}])
    assert {r["commit"] for r in rows} == {"0123456789ab"}
    (pruned,) = [m for m in aggregate(rows) if m["kind"] == "pruned"]
    assert pruned["vs_control_mean"] == pytest.approx(-1 / 300)
    assert pruned["vs_control_std"] == pytest.approx(0.0076376, abs=1e-6)
    assert pruned["commits"] == "0123456"
    (small,) = [m for m in aggregate(rows) if m["kind"] == "small"]
    assert small["vs_control_mean"] == ""  # one small model may serve several controls (lr_schedule)


def test_a_foreign_runs_csv_is_refused_in_one_line(tmp_path):
    from sparsenet.errors import SparseNetError
    from sparsenet.frontier import read_runs

    table = tmp_path / "runs.csv"
    table.write_text("a,b\n1,2\n")
    with pytest.raises(SparseNetError, match="not a frontier runs table"):
        read_runs(table)
    assert read_runs(tmp_path / "missing.csv") == []


def test_experiment_names_hold_every_value_and_stay_valid_ref_names():
    from sparsenet.frontier import experiment_name

    point = {"prune.method": "structured", "prune.structure": "filters", "prune.criterion": "l2",
             "prune.sparsity": "0.5", "seed": "2"}
    assert experiment_name(point, ["prune.allocation=sensitivity", "prune.exclude=[fc1]"]) == \
        "sweep-structured-filters-l2-05-allocationsensitivity-excludefc1-seed2"
    assert experiment_name(point, []) != experiment_name(point, ["prune.allocation=sensitivity"])
    names = {experiment_name(point, [extra]) for extra in ("prune.epochs=5", "prune.finetune_epochs=5", "train.epochs=5")}
    assert len(names) == 3  # the same value under different keys: different experiments


def test_points_already_queued_or_running_are_recognised_in_the_queue_status():
    from sparsenet.frontier import live_workers, waiting_names

    status = """Task     Name                       Created    Status
d1e81c8  sweep-magnitude-095-seed1  04:48 AM   Running
3ed21a1  sweep-magnitude-095-seed0  04:39 AM   Success
9a0b1c2  sweep-magnitude-098-seed0  04:49 AM   Queued
7f7f7f7  sweep-random-05-seed0      04:49 AM   Failed

Worker status: 1 active, 0 idle"""
    assert waiting_names(status) == {"sweep-magnitude-095-seed1", "sweep-magnitude-098-seed0"}
    assert live_workers(status) == 1


def test_a_point_queued_again_is_waiting_whatever_its_earlier_tasks_show():
    # DVC lists running, then queued, then failed, then finished tasks: a name's earlier task
    # comes after its new one
    status = """Task     Name                       Created    Status
5c5c5c5  sweep-random-05-seed1      05:10 AM   Running
a1a1a1a  sweep-random-05-seed0      05:12 AM   Queued
7f7f7f7  sweep-random-05-seed0      04:49 AM   Failed
b2b2b2b  sweep-random-05-seed1      04:40 AM   Success

Worker status: 0 active, 2 idle"""
    assert waiting_names(status) == {"sweep-random-05-seed0", "sweep-random-05-seed1"}
    assert queue_tasks(status)[1] == ("a1a1a1a", "sweep-random-05-seed0", "Queued")
    assert live_workers(status) == 2 and live_workers("Task  Name  Created  Status\n") is None


def test_small_models_of_different_widths_are_different_lines_or_runs():
    plain = _seeded("plain", "magnitude", 0.9, 0, 0.90, 0.80, 0.91)
    excluded = _seeded("fc1-dense", "magnitude", 0.9, 0, 0.89, 0.80, 0.91)  # same small accuracy by chance
    excluded["data"]["params"]["params.yaml"]["data"]["prune"]["exclude"] = ["fc1"]
    excluded["data"]["metrics"]["metrics/evaluate.json"]["data"]["small"]["params"] = 60_000
    rows = collect_points([{"rev": "base", "data": {}, "experiments": [_experiment("success", plain),
                                                                       _experiment("success", excluded)]}])
    smalls = [r for r in rows if r["kind"] == "small"]
    assert len(smalls) == 2 and len({r["line"] for r in smalls}) == 2
    assert all(m["n"] == 1 for m in aggregate(rows) if m["kind"] == "small")


def _status(state: str, workers: int) -> str:
    return (f"Task     Name                   Created    Status\n"
            f"a1a1a1a  sweep-random-05-seed0  05:12 AM   {state}\n"
            f"7f7f7f7  sweep-random-05-seed0  04:49 AM   Failed\n\n"
            f"Worker status: {workers} active, 0 idle")


def test_the_worker_is_started_again_only_after_a_minute_without_any_and_never_endlessly():
    from sparsenet.errors import SparseNetError
    from sparsenet.frontier import WorkerWatch

    watch = WorkerWatch({"a1a1a1a"}, now=0.0)
    # a worker busy training may miss a status broadcast: one reading of none is no proof
    assert [watch.observe(_status("Queued", w), t) for t, w in [(2, 1), (50, 0), (100, 1), (140, 0)]] == ["wait"] * 4
    assert watch.observe(_status("Queued", 0), 159.0) == "wait"  # none seen since t=100: 59 s
    assert watch.observe(_status("Queued", 0), 161.0) == "restart"
    assert watch.observe(_status("Queued", 0), 200.0) == "wait"  # the new worker gets its minute
    assert watch.observe(_status("Queued", 0), 222.0) == "restart"
    assert watch.observe(_status("Running", 0), 230.0) == "wait"  # it ran: the count starts over
    verdicts = [watch.observe(_status("Queued", 0), 230.0 + 61 * k) for k in range(1, 4)]
    assert verdicts == ["restart"] * 3
    with pytest.raises(SparseNetError, match="keeps stopping"):
        watch.observe(_status("Queued", 0), 230.0 + 61 * 4)
    # the task's earlier, failed run is another task: not watched
    assert WorkerWatch({"a1a1a1a"}, now=0.0).observe(_status("Success", 0), 1.0) == "done"


def test_each_row_names_the_commit_its_run_is_based_on_the_workspace_its_checkout():
    head = "0123456789abcdef0123"
    show = [{"rev": "workspace", "data": _rev("ws", "random", 0.5, 0.88)["data"], "experiments": None},
            {**_rev(head, "magnitude", 0.95, 0.9121), "name": "main", "experiments": [  # DVC: the branch
                _experiment("success", _rev("sweep-magnitude-09", "magnitude", 0.9, 0.915))]}]
    commits = {r["experiment"]: r["commit"] for r in pruned(collect_points(show))}
    # named by their commits, not by "workspace" and "main", which runs of the next commit share;
    # with --rev another commit's baseline comes first: the workspace still runs on HEAD
    other = {**_rev("f" * 40, "magnitude", 0.8, 0.91), "experiments": None}
    ws = [r for r in pruned(collect_points([show[0], other, show[1]], head)) if r["experiment"].startswith("workspace")]
    assert [(r["experiment"], r["commit"]) for r in ws] == [("workspace@0123456789ab", "0123456789ab")]
    assert commits == {"sweep-magnitude-09": "0123456789ab", "workspace@0123456789ab": "0123456789ab",
                       "0123456789ab": "0123456789ab"}


def test_the_paired_difference_counts_only_runs_that_know_their_control(tmp_path):
    rows = collect_points([{"rev": "base", "data": {}, "experiments": [
        _experiment("success", _seeded(f"s{seed}", "magnitude", 0.9, seed, acc, 0.8, 0.91))
        for seed, acc in [(0, 0.90), (1, 0.91), (2, 0.93)]]}])
    for row in rows:
        if row["experiment"] == "s2":
            row["control_accuracy"] = ""  # recorded by an older version
    (magnitude,) = [m for m in aggregate(rows) if m["kind"] == "pruned"]
    assert magnitude["n"] == 3 and magnitude["vs_control_n"] == 2
    assert magnitude["vs_control_mean"] == pytest.approx(-0.015)  # 0.90 − 0.92, 0.91 − 0.92
    assert "| magnitude (global) | -1.50 ± 0.71 |" in markdown_table(aggregate(rows), "vs_control")
    assert markdown_table([m for m in aggregate(rows) if m["kind"] == "dense"], "vs_control") == "(no runs)\n"


def test_a_runs_csv_with_a_short_row_is_refused_in_one_line(tmp_path):
    from sparsenet.errors import SparseNetError
    from sparsenet.frontier import RUN_COLUMNS, read_runs
    from sparsenet.io import write_csv

    rows = collect_points([{"rev": "base", "data": {}, "experiments": [
        _experiment("success", _seeded("s0", "magnitude", 0.9, 0, 0.9, 0.8, 0.91))]}])
    table = tmp_path / "runs.csv"
    write_csv(table, rows, RUN_COLUMNS)
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:2] + [lines[2].rsplit(",", 6)[0]]) + "\n")  # cut after `sparsity`
    with pytest.raises(SparseNetError, match=r"runs.csv: line 3: could not convert string to float: ''"):
        read_runs(table)


def test_a_task_left_running_without_its_process_is_found_and_no_other(tmp_path):
    """After a machine restart DVC lists the task it was running as ``Running`` for ever: the
    process DVC's process manager recorded for it is gone."""
    import os
    import subprocess
    import sys

    import psutil
    from dvc_task.proc.manager import ProcessManager
    from dvc_task.proc.process import ProcessInfo

    from sparsenet.frontier import _set_exit, orphaned_tasks

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # reaped: its pid names no process now
    runs = tmp_path
    manager = ProcessManager(str(runs))
    records = {"a1a1a1a": (ended.pid, None), "b2b2b2b": (os.getpid(), None), "c3c3c3c": (ended.pid, 0),
               "d4d4d4d": (ended.pid, None), "f6f6f6f": (os.getpid(), None)}
    for task, (pid, returncode) in records.items():
        (runs / (task + "0" * 33)).mkdir()
        manager[task + "0" * 33] = ProcessInfo(pid=pid, stdin=None, stdout=None, stderr=None, returncode=returncode)
    # recorded before this process started: its number was another process's (a restart since)
    before = psutil.Process().create_time() - 100
    os.utime(runs / ("f6f6f6f" + "0" * 33) / ("f6f6f6f" + "0" * 33 + ".json"), (before, before))
    (runs / "DVCLIVE_STEP_COMPLETED").write_text("")  # DVCLive's marker shares the folder
    status = ("Task     Name                   Created    Status\n"
              "a1a1a1a  sweep-gone-seed0       05:12 AM   Running\n"  # process gone, no exit recorded
              "b2b2b2b  sweep-alive-seed0      05:12 AM   Running\n"  # still running
              "c3c3c3c  sweep-ending-seed0     05:12 AM   Running\n"  # ended, its exit recorded
              "d4d4d4d  sweep-old-seed0        05:12 AM   Failed\n"
              "e5e5e5e  sweep-starting-seed0   05:12 AM   Running\n"  # no record yet
              "f6f6f6f  sweep-reused-seed0     05:12 AM   Running\n\n"
              "Worker status: 0 active, 0 idle")
    assert orphaned_tasks(status, runs) == [("a1a1a1a", "sweep-gone-seed0"), ("f6f6f6f", "sweep-reused-seed0")]
    assert orphaned_tasks(status, runs / "missing") == []
    # before `dvc queue kill`, their processes are recorded as ended: no signal reaches a stranger
    _set_exit(runs, ["a1a1a1a", "f6f6f6f"], -1)
    assert {rev[:7]: manager[rev].returncode for rev in manager if rev[0] != "D"} == {
        "a1a1a1a": -1, "b2b2b2b": None, "c3c3c3c": 0, "d4d4d4d": None, "f6f6f6f": -1}
    assert orphaned_tasks(status, runs) == []
    _set_exit(runs, ["a1a1a1a"], None)  # the kill refused: checked again
    assert orphaned_tasks(status, runs) == [("a1a1a1a", "sweep-gone-seed0")]


def test_a_workspace_run_of_another_point_on_a_later_commit_keeps_the_earlier_one():
    from sparsenet.frontier import merge_runs

    def workspace(commit: str, method: str, sparsity: float, accuracy: float) -> list[dict]:
        head = _rev(commit, "magnitude", 0.95, 0.9)
        return collect_points([{"rev": "workspace", "data": _rev("ws", method, sparsity, accuracy)["data"],
                                "experiments": None}, {**head, "data": {}}])

    earlier = workspace("a" * 40, "magnitude", 0.95, 0.9104)
    current = workspace("b" * 40, "random", 0.5, 0.8800)
    merged = [(r["experiment"], r["line"], r["accuracy"]) for r in pruned(merge_runs(earlier, current))]
    assert sorted(merged) == [("workspace@aaaaaaaaaaaa", "magnitude (global)", 0.9104),
                              ("workspace@bbbbbbbbbbbb", "random (global)", 0.88)]
    # the same commit's workspace re-run replaces its earlier row
    again = workspace("b" * 40, "random", 0.5, 0.8812)
    assert [r["accuracy"] for r in pruned(merge_runs(current, again))] == [0.8812]


def test_layer_and_global_scope_small_models_are_separate_lines():
    by_scope = []
    for scope, params in (("global", 100), ("layer", 120)):
        rev = _seeded(f"mag-{scope}", "magnitude", 0.9, 0, 0.9, 0.8, 0.91)
        rev["data"]["params"]["params.yaml"]["data"]["prune"]["scope"] = scope
        rev["data"]["metrics"]["metrics/evaluate.json"]["data"]["small"]["params"] = params
        by_scope.append(_experiment("success", rev))
    rows = collect_points([{"rev": "base", "data": {}, "experiments": by_scope}])
    smalls = {r["line"]: r["params"] for r in rows if r["kind"] == "small"}
    assert smalls == {"small dense, from scratch (parameters of the pruned model)": 100,
                      "small dense, from scratch (parameters of the pruned model, layer scope)": 120}
    assert all(m["n"] == 1 for m in aggregate(rows) if m["kind"] == "small")
