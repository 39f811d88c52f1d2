"""The accuracy–sparsity frontier: queue a sweep of DVC experiments over seeds, then plot what DVC recorded.

    python -m sparsenet.frontier sweep          # queue methods × sparsities × seeds, run them, then plot
    python -m sparsenet.frontier plot           # plot the current commit's experiments (-n, --rev, --all-commits)

``sweep`` queues ``dvc exp run --queue -S prune.method=M -S prune.sparsity=S -S seed=N`` for
every point (structured once per structure and criterion) and seed, starts the queue (``dvc
queue start``) and waits for it.  Every seed retrains everything — dense, control, the small
model — because that is part of the variance.  ``plot`` reads the results back with ``dvc exp
show --json`` — no separate tracker — and writes ``plots/frontier_runs.csv`` (one row per
experiment and model: the pruned model, its small-dense baseline, the dense model and the
control; with ``--keep-runs`` rows already there for experiments DVC no longer holds are kept,
so a sweep spread over several machines or sessions adds up, and ``sweep`` skips the points in it),
``plots/frontier.csv`` (one row per line and target sparsity: mean and standard
deviation of the accuracy over the seeds, how many, the mean measured sparsity) and
``plots/frontier.md`` (those means as Markdown tables — accuracy, and each pruned run minus its
own seed's control — a row per line, a column per target) and
``plots/frontier.png`` (the means with ±1 standard deviation bands).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from sparsenet.errors import SparseNetError, one_line_errors
from sparsenet.io import write_csv, write_text
from sparsenet.options import PRUNE_CRITERIA, PRUNE_METHODS, PRUNE_STRUCTURES, default
from sparsenet.pruning import pruned_layer_names

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
DEFAULT_SEEDS = (0, 1, 2)
RUN_COLUMNS = ("experiment", "commit", "kind", "line", "method", "structure", "criterion", "allocation", "scope",
               "schedule", "exclude", "seed", "target_sparsity", "sparsity", "sparsity_all_layers", "accuracy",
               "control_accuracy", "params")
COLUMNS = ("kind", "line", "schedule", "target_sparsity", "sparsity_mean", "accuracy_mean", "accuracy_std",
           "vs_control_mean", "vs_control_std", "vs_control_n", "n", "seeds", "commits")
OPTIONAL_RUN_COLUMNS = {"commit": "", "control_accuracy": ""}  # empty in tables written before they existed
KINDS = ("pruned", "small", "dense", "control")  # what a row measures


def _dvc_env() -> dict[str, str]:
    """The environment for DVC: this Python's ``bin`` first on ``PATH``, since ``dvc queue start``
    spawns its worker as a bare ``dvc`` (it would fail, unseen, outside an activated virtualenv)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _dvc(*args: str, capture: bool = False) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], text=True, env=_dvc_env(),
                            capture_output=capture, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip().splitlines()[-1:] if capture else []
        raise SparseNetError(f"dvc {' '.join(args)} failed (exit {result.returncode}) {' '.join(detail)}")
    return result.stdout if capture else ""


def sweep_points(methods: list[str], sparsities: list[float], structures: list[str],
                 criteria: list[str] = ("l2",), seeds: list[int] = (0,)) -> list[dict[str, str]]:
    """Every ``-S`` set of the sweep: structured pruning once per structure and criterion; each
    point once per seed."""
    points = []
    for method in methods:
        variants = ([{"prune.structure": s, "prune.criterion": c} for s in structures for c in criteria]
                    if method == "structured" else [{}])
        for variant in variants:
            for sparsity in sparsities:
                for seed in seeds:
                    points.append({"prune.method": method, **variant, "prune.sparsity": f"{sparsity:g}",
                                   "seed": str(seed)})
    return points


def experiment_name(point: dict[str, str], extra: list[str]) -> str:
    """``sweep-<values>-seed<n>``: the point's values, then each ``--set`` as its key (without
    ``prune.``) and value (``prune.epochs=6`` → ``epochs6``, ``train.epochs=6`` → ``trainepochs6``),
    as a git ref name (letters, digits, dashes)."""
    values = [v for key, v in point.items() if key != "seed"]
    values += [key.removeprefix("prune.") + value for key, _, value in (e.partition("=") for e in extra)]
    cleaned = ["".join(ch for ch in value if ch.isalnum() or ch == "-") for value in values]
    return "sweep-" + "-".join(v for v in cleaned if v) + f"-seed{point['seed']}"


QUEUE_STATES = ("Queued", "Running", "Success", "Failed")
ACTIVE = ("Queued", "Running")
WORKER_GRACE_SECONDS = 60.0  # a worker just started may not be listed yet
RUNS_DIR = Path(".dvc/tmp/exps/run")  # where DVC's queue records each task's process
ORPHAN_CONFIRM_SECONDS = 3.0


def queue_tasks(queue_status: str) -> list[tuple[str, str, str]]:
    """(task, experiment name, state) for every task ``dvc queue status`` lists.  One name may
    have several tasks (a failed point queued again): the task tells them apart."""
    tasks = []
    for line in queue_status.splitlines():
        words = line.split()
        if len(words) >= 3 and words[-1] in QUEUE_STATES:
            tasks.append((words[0], words[1], words[-1]))
    return tasks


def waiting_names(queue_status: str) -> set[str]:
    """Names of the experiments with a task ``dvc queue status`` lists as queued or running."""
    return {name for _, name, state in queue_tasks(queue_status) if state in ACTIVE}


def live_workers(queue_status: str) -> int | None:
    """Active plus idle queue workers, from the status's ``Worker status: 1 active, 0 idle`` line."""
    match = re.search(r"Worker status: (\d+) active, (\d+) idle", queue_status)
    return None if match is None else int(match.group(1)) + int(match.group(2))


def _alive(pid: int, started_by: float) -> bool:
    """Whether process ``pid`` still runs and is the one started by ``started_by`` (a time): after
    a restart the number may belong to another process, started later."""
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= started_by + 1.0
    except psutil.NoSuchProcess:
        return False


def _process_records(runs_dir: Path, tasks: list[str]) -> list[tuple[str, object]]:
    """(stash revision, the process record DVC's process manager (``dvc_task``) keeps for it) of
    every task among ``tasks`` (short revisions) that has one in ``runs_dir``."""
    from dvc_task.proc.manager import ProcessManager  # DVC's own reader of those records

    if not tasks or not runs_dir.is_dir():
        return []
    manager = ProcessManager(str(runs_dir))
    revs = [entry.name for entry in runs_dir.iterdir()  # DVCLive leaves a file there too
            if entry.is_dir() and entry.name.startswith(tuple(tasks))]
    return [(rev, info) for rev in revs if (info := manager.get(rev)) is not None]


def orphaned_tasks(queue_status: str, runs_dir: Path = RUNS_DIR) -> list[tuple[str, str]]:
    """(task, experiment name) of every task ``dvc queue status`` lists as running whose process
    is gone: its worker was killed or the machine restarted mid-run.  DVC lists such a task as
    running for ever, so a sweep would wait for it for ever and never queue its point again.

    A task's process is the one recorded under its stash revision (:func:`_process_records`); a
    task with no record yet (just picked up) counts as alive.
    """
    running = [(task, name) for task, name, state in queue_tasks(queue_status) if state == "Running"]
    records = _process_records(runs_dir, [task for task, _ in running])
    return [(task, name) for task, name in running
            if any(rev.startswith(task) and info.returncode is None
                   and not _alive(info.pid, _record_time(runs_dir, rev)) for rev, info in records)]


def _record_time(runs_dir: Path, rev: str) -> float:
    """When DVC wrote the process record of ``rev`` (just after starting the process); a record
    removed meanwhile (``dvc queue remove``) gives infinity: nothing to tell, taken for alive."""
    try:
        return (runs_dir / rev / f"{rev}.json").stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def release_orphans(queue_status: str) -> str:
    """Mark the :func:`orphaned_tasks` failed (``dvc queue kill``, which finds no process to stop)
    so their points can be queued again; returns the queue status to go on with.

    A task is taken for orphaned only when it still is after :data:`ORPHAN_CONFIRM_SECONDS`: a
    process that just ended has its exit recorded by its worker a moment later.
    """
    orphans = orphaned_tasks(queue_status)
    if not orphans:
        return queue_status
    time.sleep(ORPHAN_CONFIRM_SECONDS)
    queue_status = _dvc("queue", "status", capture=True)
    orphans = [orphan for orphan in orphaned_tasks(queue_status) if orphan in orphans]
    if not orphans:
        return queue_status
    _set_exit(RUNS_DIR, [task for task, _ in orphans], -1)
    try:
        _dvc("queue", "kill", *(task for task, _ in orphans), capture=True)
        print(f"notice: {len(orphans)} experiments listed as running had no process left (a stopped worker or a "
              f"restarted machine): marked failed, to be queued again ({', '.join(name for _, name in orphans)})",
              file=sys.stderr)
    except SparseNetError as error:  # a live worker still claims one: it was not orphaned after all
        _set_exit(RUNS_DIR, [task for task, _ in orphans], None)  # to be checked again at the next poll
        print(f"notice: {error}", file=sys.stderr)
    return _dvc("queue", "status", capture=True)


def _set_exit(runs_dir: Path, tasks: list[str], returncode: int | None) -> None:
    """Record the processes of ``tasks`` as ended (-1), so that ``dvc queue kill`` only marks the
    tasks failed — it would otherwise signal whatever process now holds their numbers — or, the
    kill refused, as running again (None)."""
    from dvc_task.proc.manager import ProcessManager

    manager = ProcessManager(str(runs_dir))
    for rev, info in _process_records(runs_dir, tasks):
        if info.returncode in (None, -1):
            info.returncode = returncode
            manager[rev] = info


def _start_queue(jobs: int) -> None:
    """``dvc queue start``.  The worker it starts is a daemon that inherits the caller's standard
    streams: given a pipe (``sweep --no-wait | tee log``, a caller capturing the output) it would
    hold the pipe open — and the reader waiting — until the queue is empty.  So it gets none."""
    with tempfile.TemporaryFile() as errors:
        result = subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "--jobs", str(jobs)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                env=_dvc_env(), check=False)
        if result.returncode != 0:
            errors.seek(0)
            detail = errors.read().decode(errors="replace").strip().splitlines()[-1:]
            raise SparseNetError(f"dvc queue start failed (exit {result.returncode}) {' '.join(detail)}")


class WorkerWatch:
    """Tells, poll by poll, whether the queue needs a worker started again.

    A worker busy training may miss DVC's status broadcast, so one reading of ``0 active, 0 idle``
    proves nothing: only when none of the watched tasks has been running, some still wait, and no
    worker has been listed at any poll for :data:`WORKER_GRACE_SECONDS` is the worker taken for
    gone.  Restarts in a row without a task running in between are capped.
    """

    def __init__(self, watched: set[str], now: float, max_restarts: int = 3) -> None:
        self.watched, self.max_restarts = watched, max_restarts
        self.stalled_since, self.restarts = now, 0

    def observe(self, queue_status: str, now: float) -> str:
        """``done`` (no watched task queued or running), ``wait`` or ``restart``."""
        states = {task: state for task, _, state in queue_tasks(queue_status) if task in self.watched}
        if not any(state in ACTIVE for state in states.values()):
            return "done"
        if "Running" in states.values() or live_workers(queue_status) != 0:
            self.stalled_since = now
            if "Running" in states.values():
                self.restarts = 0
            return "wait"
        if now - self.stalled_since < WORKER_GRACE_SECONDS:
            return "wait"
        if self.restarts == self.max_restarts:
            raise SparseNetError("the DVC queue worker keeps stopping with experiments waiting: see "
                                 ".dvc/tmp/exps/celery/*.out, then `dvc queue start`")
        self.stalled_since, self.restarts = now, self.restarts + 1
        return "restart"


def queue_sweep(points: list[dict[str, str]], extra: list[str], jobs: int, done: set[str] = frozenset(),
                poll_seconds: float = 2.0, wait: bool = True) -> int:
    """Queue every point not ``done`` (experiment names) nor already queued or running, start the
    queue and (``wait``) wait until none of the sweep's tasks is queued or running — also those
    an earlier ``--no-wait`` sweep queued.  A worker that stopped while tasks wait (DVC's file
    broker can stop one) is started again (:class:`WorkerWatch`); a task left running without a
    process (:func:`release_orphans`) is marked failed — before queueing, so its point is queued
    again.  Returns how many were queued."""
    names = [experiment_name(point, extra) for point in points]
    before_status = release_orphans(_dvc("queue", "status", capture=True))
    before, waiting = queue_tasks(before_status), waiting_names(before_status)
    known = {task for task, _, _ in before}
    watched = {task for task, name, state in before if state in ACTIVE and name in names}
    mine = []
    for point, name in zip(points, names):
        if name in done or name in waiting or name in mine:  # a point given twice runs once
            continue
        sets = [arg for key, value in point.items() for arg in ("-S", f"{key}={value}")]
        _dvc("exp", "run", "--queue", "--name", name, *sets, *[a for e in extra for a in ("-S", e)])
        mine.append(name)
    print(f"{len(mine)} experiments queued, {len(points) - len(mine)} already done, queued or repeated")
    if not mine and not watched:
        return 0
    _start_queue(jobs)
    if not wait:
        return len(mine)
    status = _dvc("queue", "status", capture=True)
    watched |= {task for task, name, _ in queue_tasks(status) if task not in known and name in mine}
    watch = WorkerWatch(watched, time.monotonic())
    while (verdict := watch.observe(status, time.monotonic())) != "done":
        if verdict == "restart":
            print("notice: no queue worker left with experiments waiting; starting one again", file=sys.stderr)
            _start_queue(jobs)
        time.sleep(poll_seconds)
        status = release_orphans(_dvc("queue", "status", capture=True))
    failed = sorted({name for task, name, state in queue_tasks(status) if task in watched and state == "Failed"})
    if failed:
        raise SparseNetError(f"{len(failed)} sweep experiments failed ({', '.join(failed[:3])}"
                             f"{', …' if len(failed) > 3 else ''}): see `dvc queue logs <name>`")
    return len(mine)


UNFINISHED = ("queued", "running", "failed")
# Params besides method, structure, scope and exclude that make a different line when not at
# their default (the schedule also splits lines in the figure).
VARIANT_KEYS = ("rewind", "epochs", "finetune_epochs", "lr", "lr_schedule", "round_to")
# Of those, the ones the control and the small model depend on (they do not prune).
CONTROL_KEYS = ("epochs", "finetune_epochs", "lr", "lr_schedule")
SMALL_KEYS = ("epochs", "finetune_epochs")


def _entries(exp_show: list, head: str | None = None) -> Iterator[tuple[dict, str, bool]]:
    """(rev, the commit it is based on — the workspace's: the first baseline listed, HEAD —, whether
    it is an experiment): finished experiments first, then their baselines and the workspace (which
    often repeat one).

    A queued or running experiment shows its baseline's metrics until it ends: left out, like
    failed ones.
    """
    for entry in exp_show:
        for experiment in entry.get("experiments") or []:
            if (experiment.get("executor") or {}).get("state") not in UNFINISHED:
                for rev in experiment.get("revs") or []:
                    yield rev, entry.get("rev", ""), True
    if head is None:  # DVC lists HEAD's baseline first unless --rev or --all-commits chose others
        head = next((entry.get("rev", "") for entry in exp_show if entry.get("rev") != "workspace"), "")
    for entry in exp_show:  # the workspace runs on the checked-out commit
        yield entry, head if entry.get("rev") == "workspace" else entry.get("rev", ""), False


def collect_points(exp_show: list, head: str | None = None) -> list[dict]:
    """Rows of :data:`RUN_COLUMNS` for every experiment (and baseline) with an ``evaluate.json``:
    its pruned model, and — once per seed and setting — its small-dense baseline, dense model and
    control.  Rows repeated by baselines and the workspace are dropped."""
    rows = []
    for entry, commit, experiment in _entries(exp_show, head):
        data = entry.get("data") or {}
        metrics = ((data.get("metrics") or {}).get("metrics/evaluate.json") or {}).get("data")
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        prune = params.get("prune") or {}
        if not metrics or not prune:
            continue

        def param(key: str):  # a key missing from an experiment's params.yaml had its default
            return prune.get(key, default(f"prune.{key}"))

        def variants(keys: tuple[str, ...]) -> str:
            return "".join(f", {key} {param(key)}" for key in keys if param(key) != default(f"prune.{key}"))

        method = param("method")
        structured = method == "structured"
        structure = param("structure") if structured else ""
        criterion = param("criterion") if structured else ""
        allocation = param("allocation") if structured or param("scope") == "layer" else ""
        scope = param("scope") if not structured else "layer"
        exclude = param("exclude") or []
        settings = "".join(f", {key} {value}" for key, value in _other_settings(params))
        line = f"structured ({structure}, {criterion})" if structured else f"{method} ({scope})"
        line += ", sensitivity allocation" if allocation == "sensitivity" else ""
        line += f", {' '.join(exclude)} dense" if exclude else ""
        if method == "taylor" or criterion == "taylor":
            line += f", score_batches {param('score_batches')}" if param("score_batches") != default(
                "prune.score_batches") else ""
        line += variants(VARIANT_KEYS) + settings
        sparse, dense = metrics["sparse"], metrics["dense"]
        seed = params.get("seed", default("seed"))
        control = metrics.get("control") or {}
        # A baseline's name is its branch's and the workspace's "workspace", both shared by runs of
        # other commits: each gets a name of its own per commit.
        name = entry.get("name") or data.get("rev") or entry.get("rev", "")
        if not experiment:
            name = f"workspace@{commit[:12]}" if entry.get("rev") == "workspace" else commit[:12]
        base = {"experiment": name, "commit": commit[:12],
                "control_accuracy": control.get("accuracy", ""), "method": method,
                "structure": structure, "criterion": criterion, "allocation": allocation, "scope": scope,
                "schedule": param("schedule"), "exclude": " ".join(exclude), "seed": seed,
                "target_sparsity": param("sparsity")}
        covered = _covered_sparsity(sparse, method, structure, exclude)
        found = [{**base, "kind": "pruned", "line": line, "sparsity": covered,
                  "sparsity_all_layers": sparse.get("sparsity_all_layers", sparse["sparsity"]),
                  "accuracy": sparse["accuracy"], "params": sparse.get("nonzero_params", "")}]
        if "small" in metrics:
            small = metrics["small"]
            kept = f", {' '.join(exclude)} dense" if exclude else ""
            if structured:  # the widths follow the allocation; by sensitivity, also the criterion
                by = f", {criterion}, sensitivity allocation" if allocation == "sensitivity" else ""
                matched = f"widths of structured ({structure}{by}{variants(('round_to',))}{kept})"
            else:  # the non-zero count follows the target and the layers it covers (scope: how it spreads)
                spread = f", {scope} scope" if scope != default("prune.scope") else ""
                matched = f"parameters of the pruned model{spread}{kept}"
            share = 1 - small["params"] / dense["params"] if dense.get("params") else covered
            found.append({**base, "kind": "small", "control_accuracy": "",
                          "line": f"small dense, from scratch ({matched}){variants(SMALL_KEYS)}{settings}",
                          "sparsity": share, "sparsity_all_layers": share, "accuracy": small["accuracy"],
                          "params": small["params"]})
        references = {"dense": (f"dense LeNet{settings}", dense),
                      "control": (f"control: dense, same total epochs{variants(CONTROL_KEYS)}{settings}",
                                  metrics.get("control"))}
        for kind, (name, model) in references.items():
            if model:
                found.append({**base, "kind": kind, "line": name, "control_accuracy": "", "method": "",
                              "structure": "", "criterion": "",
                              "allocation": "", "scope": "", "exclude": "", "target_sparsity": 0.0, "sparsity": 0.0,
                              "sparsity_all_layers": 0.0, "accuracy": model["accuracy"],
                              "params": model.get("params", "")})
        rows += found
    return unique_runs(rows)


def unique_runs(rows: list[dict]) -> list[dict]:
    """``rows`` without repeats — a baseline or the workspace repeating an experiment, the same
    small model, dense model or control behind several experiments of one seed — sorted."""
    kept, seen = [], set()
    for row in rows:
        key = (row["kind"], row["line"], row["schedule"] if row["kind"] == "pruned" else "",
               row["target_sparsity"] if row["kind"] in ("pruned", "small") else 0, row["seed"],
               row["params"], round(row["accuracy"], 6))  # small models: their size tells them apart
    # (dvc exp show leaves out list-valued metrics such as small.widths)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return sorted(kept, key=lambda r: (KINDS.index(r["kind"]), r["line"], r["sparsity"], r["seed"]))


_NUMERIC = {"seed": int, "target_sparsity": float, "sparsity": float, "sparsity_all_layers": float, "accuracy": float}


def read_runs(path: Path) -> list[dict]:
    """The rows of a runs CSV written earlier (none when there is no file)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, restval="")  # a short row's missing cells: empty, refused below
        required = [column for column in RUN_COLUMNS if column not in OPTIONAL_RUN_COLUMNS]
        if reader.fieldnames is None or not set(required) <= set(reader.fieldnames):
            raise SparseNetError(f"{path}: not a frontier runs table (expected the columns {', '.join(required)}); "
                                 "move it away to start a new one")
        try:  # only the columns this version writes: a row's others would not fit its header
            return [{**{column: row.get(column, OPTIONAL_RUN_COLUMNS.get(column)) for column in RUN_COLUMNS},
                     **{key: kind(row[key]) for key, kind in _NUMERIC.items()},
                     "control_accuracy": float(row["control_accuracy"]) if row.get("control_accuracy") else "",
                     "params": int(row["params"]) if row["params"] else ""} for row in reader]
        except ValueError as exc:
            raise SparseNetError(f"{path}: line {reader.line_num}: {exc}") from None


def dropped_runs(earlier: list[dict], current: list[dict]) -> list[str]:
    """The experiments of ``earlier`` rows that ``current`` does not hold: writing ``current``
    alone over them would lose them."""
    have = {row["experiment"] for row in current}
    return sorted({row["experiment"] for row in earlier if row["experiment"] not in have})


def merge_runs(earlier: list[dict], current: list[dict]) -> list[dict]:
    """``current`` plus the rows of ``earlier`` experiments it does not hold (runs of earlier
    sessions or other machines, whose DVC experiments are gone), without repeats."""
    have = {row["experiment"] for row in current}
    return unique_runs(current + [row for row in earlier if row["experiment"] not in have])


def aggregate(rows: list[dict]) -> list[dict]:
    """One row of :data:`COLUMNS` per (kind, line, schedule, target sparsity): the accuracy's mean,
    its sample standard deviation over the seeds (empty with one run), the same of the difference
    from each run's own control (pruned models: the control of the same seed and settings), the
    mean measured sparsity and the commits the runs are based on (``?``: not recorded).
    ``vs_control_n`` counts the runs that know their control's accuracy (older tables' may not)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        schedule = row["schedule"] if row["kind"] == "pruned" else ""
        groups.setdefault((row["kind"], row["line"], schedule, row["target_sparsity"]), []).append(row)
    out = []
    for (kind, line, schedule, target), members in groups.items():
        accuracies = [m["accuracy"] for m in members]
        gaps = [m["accuracy"] - m["control_accuracy"] for m in members if m["control_accuracy"] != ""]
        out.append({"kind": kind, "line": line, "schedule": schedule, "target_sparsity": target,
                    "sparsity_mean": statistics.fmean(m["sparsity"] for m in members),
                    "accuracy_mean": statistics.fmean(accuracies),
                    "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else "",
                    "vs_control_mean": statistics.fmean(gaps) if gaps else "",
                    "vs_control_std": statistics.stdev(gaps) if len(gaps) > 1 else "", "vs_control_n": len(gaps),
                    "n": len(members), "seeds": " ".join(str(seed) for seed in sorted(m["seed"] for m in members)),
                    "commits": " ".join(sorted({m["commit"][:7] or "?" for m in members}))})
    return sorted(out, key=lambda r: (KINDS.index(r["kind"]), r["line"], r["target_sparsity"]))


def _other_settings(params: dict) -> list[tuple[str, object]]:
    """``train.*`` and ``data.*`` params that differ from their defaults (a run on other data or
    with other dense training is not a point of the same line).  Seeds are replicates, not settings."""
    data = params.get("data") or {}
    keys = [f"train.{key}" for key in default("train")] + ["data.source", "data.image_size"]
    if data.get("source", default("data.source")) == "synthetic":
        keys += [f"data.synthetic.{key}" for key in default("data.synthetic")]
    settings = []
    for key in keys:
        value = params
        for part in key.split("."):
            value = (value or {}).get(part) if isinstance(value, dict) else None
        if value is not None and value != default(key):
            settings.append((key, value))
    return settings


def _covered_sparsity(sparse: dict, method: str, structure: str, exclude: list[str]) -> float:
    """``sparse.sparsity`` over the layers the target covers; recomputed from the per-layer counts
    for experiments older than that definition (their ``sparsity`` counted every layer)."""
    if "pruned_layers" in sparse or "layers" not in sparse:
        return sparse["sparsity"]
    covered = [sparse["layers"][name] for name in pruned_layer_names(method, structure or "filters", exclude)
               if name in sparse["layers"]]
    return sum(layer["zeros"] for layer in covered) / sum(layer["total"] for layer in covered)


def markdown_table(means: list[dict], value: str = "accuracy") -> str:
    """The aggregated rows as a Markdown table: one row per line (schedule named where not the
    default), one column per target sparsity, cells ``mean ± std`` in percent (``value``
    ``accuracy``; the dense model and the control sit at sparsity 0) or in signed points
    (``vs_control``: pruned lines only); ``(n=…)`` where fewer seeds than the most any cell has."""
    means = [m for m in means if m[f"{value}_mean"] != ""]
    if not means:
        return "(no runs)\n"
    count = "vs_control_n" if value == "vs_control" else "n"
    targets = sorted({m["target_sparsity"] for m in means})
    most = max(m[count] for m in means)
    sign = "+" if value == "vs_control" else ""
    lines: dict[str, dict[float, str]] = {}
    for m in means:
        other_schedule = m["schedule"] not in ("", default("prune.schedule"))
        name = m["line"] + (f", {m['schedule']} schedule" if other_schedule else "")
        cell = f"{m[f'{value}_mean'] * 100:{sign}.2f}"
        cell += f" ± {m[f'{value}_std'] * 100:.2f}" if m[f"{value}_std"] != "" else ""
        cell += f" (n={m[count]})" if m[count] < most else ""
        lines.setdefault(name, {})[m["target_sparsity"]] = cell
    out = ["| line | " + " | ".join(f"{t:g}" for t in targets) + " |", "|---" * (len(targets) + 1) + "|"]
    out += ["| " + name + " | " + " | ".join(cells.get(t, "") for t in targets) + " |" for name, cells in lines.items()]
    return "\n".join(out) + "\n"


def markdown_report(means: list[dict]) -> str:
    """``plots/frontier.md``: the accuracy table, then the pruned lines against their controls."""
    return ("## Test accuracy (%), mean ± std over seeds\n\n" + markdown_table(means)
            + "\n## Pruned minus its own seed's control (points), mean ± std over seeds\n\n"
            + markdown_table(means, "vs_control"))


def plot_frontier(rows: list[dict], png: Path, table: Path, runs: Path, markdown: Path | None = None) -> list[dict]:
    """``runs``: every row as CSV; ``table``: the rows aggregated over seeds (:func:`aggregate`);
    ``markdown``: those as Markdown tables (:func:`markdown_report`); ``png``: mean accuracy vs
    sparsity per line with ±1 std.  Returns the aggregated rows."""
    if not rows:
        raise SparseNetError("no experiment with metrics/evaluate.json found: run `dvc repro` or a sweep first")
    means = aggregate(rows)
    for mean in means:
        seeds = mean["seeds"].split()
        if len(set(seeds)) < len(seeds):
            print(f"notice: {mean['line']} at {mean['target_sparsity']:g} has several runs of one seed "
                  f"({mean['seeds']}): results of different code? plot one commit's experiments into a table of "
                  "their own (--rev, --runs-csv)", file=sys.stderr)
    write_csv(runs, rows, RUN_COLUMNS)
    write_csv(table, means, COLUMNS)
    if markdown is not None:
        write_text(markdown, markdown_report(means))

    from sparsenet.plots import frontier_figure

    frontier_figure(means, png)
    return means


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sparsenet.frontier", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep", help="queue and run methods × sparsities × seeds, then plot")
    sweep.add_argument("--methods", nargs="+", default=list(PRUNE_METHODS), choices=PRUNE_METHODS)
    sweep.add_argument("--sparsities", nargs="+", type=float, default=list(DEFAULT_SPARSITIES))
    sweep.add_argument("--structures", nargs="+", default=[default("prune.structure")], choices=PRUNE_STRUCTURES)
    sweep.add_argument("--criteria", nargs="+", default=list(PRUNE_CRITERIA), choices=PRUNE_CRITERIA,
                       help="how structured pruning ranks filters / channels (default: %(default)s)")
    sweep.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS),
                       help="every point runs once per seed (default: %(default)s)")
    sweep.add_argument("--jobs", type=int, default=1, help="parallel queue workers (default 1: training "
                       "already uses every core)")
    sweep.add_argument("--no-wait", action="store_true",
                       help="queue the points, start the workers and return (results: frontier plot, later)")
    sweep.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                       help="more params for every experiment, e.g. --set prune.schedule=cubic")
    sub.add_parser("plot", help="plot the experiments based on the current commit (see -n, --rev, --all-commits)")
    sub.choices["plot"].add_argument("--all-commits", action="store_true",
                                     help="include experiments based on older commits too")
    sub.choices["plot"].add_argument("--rev", help="experiments based on this commit (default: HEAD)")
    sub.choices["plot"].add_argument("-n", "--num", type=int,
                                     help="experiments based on the last NUM commits from --rev (dvc exp show -n)")
    for p in (sweep, sub.choices["plot"]):
        p.add_argument("--png", type=Path, default=Path("plots/frontier.png"))
        p.add_argument("--csv", type=Path, default=Path("plots/frontier.csv"), help="mean ± std per point")
        p.add_argument("--runs-csv", type=Path, default=Path("plots/frontier_runs.csv"), help="one row per run")
        p.add_argument("--markdown", type=Path, default=Path("plots/frontier.md"),
                       help="the means as Markdown tables: accuracy, and vs control (default %(default)s)")
        p.add_argument("--keep-runs", action="store_true",
                       help="the runs CSV is a record: keep its rows of experiments DVC no longer holds (other "
                       "sessions or machines) and, sweeping, skip the points it holds")
    args = parser.parse_args(argv)
    with one_line_errors():
        if args.command == "sweep":
            bad = [s for s in args.sparsities if not 0 <= s < 1]
            if bad:
                raise SparseNetError(f"--sparsities {bad} not allowed; expected fractions in [0, 1)")
            bad_seeds = [s for s in args.seeds if not 0 <= s < 2**32]
            if bad_seeds or len(set(args.seeds)) != len(args.seeds):
                raise SparseNetError(f"--seeds {args.seeds} not allowed; expected distinct integers in 0..{2**32 - 1}")
            recorded = read_runs(args.runs_csv)
            if recorded and not args.keep_runs:  # refused now, not after hours of training
                runs = len({row["experiment"] for row in recorded})
                raise SparseNetError(f"{args.runs_csv} holds {runs} runs that plotting this sweep alone would drop: "
                                     "--keep-runs adds to it (and skips the points it holds), --runs-csv names "
                                     "another table, or remove it to start afresh")
            done = {row["experiment"] for row in recorded if row["kind"] == "pruned"}
            # finished experiments of every commit: a sweep re-run after a commit queues nothing twice
            done |= set(_dvc("exp", "list", "--all-commits", "--name-only", capture=True).split())
            queue_sweep(sweep_points(args.methods, args.sparsities, args.structures, args.criteria, args.seeds),
                        args.extra, args.jobs, done, wait=not args.no_wait)
            if args.no_wait:
                print("the queue runs in the background: `dvc queue status`; `sparsenet frontier plot` when done")
                return
        show = ["exp", "show", "--json"] + (["--all-commits"] if getattr(args, "all_commits", False) else [])
        show += ["--rev", args.rev] if getattr(args, "rev", None) else []
        show += ["--num", str(args.num)] if getattr(args, "num", None) else []
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
        rows = collect_points(json.loads(_dvc(*show, capture=True)), head)
        earlier = read_runs(args.runs_csv)
        if args.keep_runs:
            rows = merge_runs(earlier, rows)
        elif dropped := dropped_runs(earlier, rows):  # the table may be the only record of them
            raise SparseNetError(
                f"{args.runs_csv} holds {len(dropped)} runs not among the experiments read ({', '.join(dropped[:2])}"
                f"{', …' if len(dropped) > 2 else ''}): --keep-runs keeps them, --runs-csv names another "
                "table, or remove it to start afresh")
        means = plot_frontier(rows, args.png, args.csv, args.runs_csv, args.markdown)
    print(f"{len(rows)} runs, {len(means)} points -> {args.png}, {args.csv}, {args.runs_csv}, {args.markdown}")


if __name__ == "__main__":
    main()
