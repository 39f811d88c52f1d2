"""The accuracy–sparsity frontier: queue a sweep of DVC experiments, then plot what DVC recorded.

    python -m sparsenet.frontier sweep          # queue methods × sparsities, run them, then plot
    python -m sparsenet.frontier plot           # plot every experiment DVC knows about

``sweep`` queues ``dvc exp run --queue -S prune.method=M -S prune.sparsity=S`` for every pair
(structured once per structure), starts the queue (``dvc queue start``) and waits for it.
``plot`` reads the results back with ``dvc exp show --json`` — no separate tracker — and writes
``plots/frontier.png`` (test accuracy vs sparsity, one line per method, the dense and the
same-epochs control accuracy as references) and ``plots/frontier.csv`` (the points).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from sparsenet.errors import SparseNetError, one_line_errors
from sparsenet.io import write_text
from sparsenet.options import PRUNE_METHODS, PRUNE_STRUCTURES, default
from sparsenet.pruning import pruned_layer_names

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
COLUMNS = ("experiment", "line", "method", "structure", "scope", "schedule", "exclude", "target_sparsity",
           "sparsity", "sparsity_all_layers", "accuracy", "dense_accuracy", "control_accuracy")


def _dvc(*args: str, capture: bool = False) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], text=True,
                            capture_output=capture, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip().splitlines()[-1:] if capture else []
        raise SparseNetError(f"dvc {' '.join(args)} failed (exit {result.returncode}) {' '.join(detail)}")
    return result.stdout if capture else ""


def sweep_points(methods: list[str], sparsities: list[float], structures: list[str]) -> list[dict[str, str]]:
    """Every ``-S`` set of the sweep; structured pruning once per structure."""
    points = []
    for method in methods:
        for structure in (structures if method == "structured" else [None]):
            for sparsity in sparsities:
                point = {"prune.method": method, "prune.sparsity": f"{sparsity:g}"}
                if structure is not None:
                    point["prune.structure"] = structure
                points.append(point)
    return points


def queue_sweep(points: list[dict[str, str]], extra: list[str], jobs: int, poll_seconds: float = 2.0) -> None:
    """Queue every point as a DVC experiment, run the queue, wait until it is empty."""
    for point in points:
        name = "-".join(v.replace(".", "") for v in point.values())
        sets = [arg for key, value in point.items() for arg in ("-S", f"{key}={value}")]
        _dvc("exp", "run", "--queue", "--name", f"sweep-{name}", *sets, *[a for e in extra for a in ("-S", e)])
    _dvc("queue", "start", "--jobs", str(jobs))
    while True:
        status = _dvc("queue", "status", capture=True)
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(poll_seconds)
    if "Failed" in status:
        print(status, file=sys.stderr)
        raise SparseNetError("some sweep experiments failed: see `dvc queue status` and `dvc queue logs <task>`")


UNFINISHED = ("queued", "running", "failed")
# Params besides method, structure, scope and exclude that make a different line when not at
# their default (the schedule also splits lines in the figure).
VARIANT_KEYS = ("rewind", "epochs", "finetune_epochs", "lr", "lr_schedule")


def _entries(exp_show: list) -> Iterator[dict]:
    """Finished experiments first, then their baselines and the workspace (which often repeat one).

    A queued or running experiment shows its baseline's metrics until it ends: left out, like
    failed ones.
    """
    for entry in exp_show:
        for experiment in entry.get("experiments") or []:
            if (experiment.get("executor") or {}).get("state") not in UNFINISHED:
                yield from experiment.get("revs") or []
    yield from exp_show


def collect_points(exp_show: list) -> list[dict]:
    """One row per experiment (and baseline) with an ``evaluate.json``; duplicates dropped."""
    rows, seen = [], set()
    for entry in _entries(exp_show):
        data = entry.get("data") or {}
        metrics = ((data.get("metrics") or {}).get("metrics/evaluate.json") or {}).get("data")
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        prune = params.get("prune") or {}
        if not metrics or not prune:
            continue

        def param(key: str):  # a key missing from an experiment's params.yaml had its default
            return prune.get(key, default(f"prune.{key}"))

        method = param("method")
        structure = param("structure") if method == "structured" else ""
        scope = param("scope") if method != "structured" else "layer"
        exclude = param("exclude") or []
        line = f"structured ({structure})" if structure else f"{method} ({scope})"
        line += f", {' '.join(exclude)} dense" if exclude else ""
        line += "".join(f", {key} {param(key)}" for key in VARIANT_KEYS if param(key) != default(f"prune.{key}"))
        line += "".join(f", {key} {value}" for key, value in _other_settings(params))
        sparse = metrics["sparse"]
        row = {
            "experiment": entry.get("name") or data.get("rev") or entry.get("rev", ""),
            "line": line, "method": method, "structure": structure, "scope": scope,
            "schedule": param("schedule"), "exclude": " ".join(exclude), "target_sparsity": param("sparsity"),
            "sparsity": _covered_sparsity(sparse, method, structure, exclude),
            "sparsity_all_layers": sparse.get("sparsity_all_layers", sparse["sparsity"]),
            "accuracy": sparse["accuracy"], "dense_accuracy": metrics["dense"]["accuracy"],
            "control_accuracy": (metrics.get("control") or {}).get("accuracy"),
        }
        key = (line, row["schedule"], row["target_sparsity"], round(row["accuracy"], 6))
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return sorted(rows, key=lambda r: (r["line"], r["sparsity"]))


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


def plot_frontier(rows: list[dict], png: Path, table: Path) -> None:
    """``png``: accuracy vs sparsity per line; ``table``: the points as CSV."""
    if not rows:
        raise SparseNetError("no experiment with metrics/evaluate.json found: run `dvc repro` or a sweep first")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(table, buffer.getvalue())

    from sparsenet.plots import frontier_figure

    frontier_figure(rows, png)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sparsenet.frontier", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep", help="queue and run methods × sparsities, then plot")
    sweep.add_argument("--methods", nargs="+", default=list(PRUNE_METHODS), choices=PRUNE_METHODS)
    sweep.add_argument("--sparsities", nargs="+", type=float, default=list(DEFAULT_SPARSITIES))
    sweep.add_argument("--structures", nargs="+", default=[default("prune.structure")], choices=PRUNE_STRUCTURES)
    sweep.add_argument("--jobs", type=int, default=1, help="parallel queue workers (default 1: training "
                       "already uses every core)")
    sweep.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                       help="more params for every experiment, e.g. --set prune.schedule=cubic")
    sub.add_parser("plot", help="plot every experiment DVC knows about")
    sub.choices["plot"].add_argument("--all-commits", action="store_true",
                                     help="include experiments based on older commits too")
    sub.choices["plot"].add_argument("--rev", help="experiments based on this commit (default: HEAD)")
    for p in (sweep, sub.choices["plot"]):
        p.add_argument("--png", type=Path, default=Path("plots/frontier.png"))
        p.add_argument("--csv", type=Path, default=Path("plots/frontier.csv"))
    args = parser.parse_args(argv)
    with one_line_errors():
        if args.command == "sweep":
            bad = [s for s in args.sparsities if not 0 <= s < 1]
            if bad:
                raise SparseNetError(f"--sparsities {bad} not allowed; expected fractions in [0, 1)")
            queue_sweep(sweep_points(args.methods, args.sparsities, args.structures), args.extra, args.jobs)
        show = ["exp", "show", "--json"] + (["--all-commits"] if getattr(args, "all_commits", False) else [])
        show += ["--rev", args.rev] if getattr(args, "rev", None) else []
        rows = collect_points(json.loads(_dvc(*show, capture=True)))
        plot_frontier(rows, args.png, args.csv)
    print(f"{len(rows)} points -> {args.png}, {args.csv}")


if __name__ == "__main__":
    main()
