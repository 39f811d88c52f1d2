"""Sweep benchmarks: how to use a machine's cores for many points, and points per hour.

    sparsenet bench-sweep threads       # two 1-thread trainings at once vs one 2-thread training after another
    sparsenet bench-sweep throughput    # the same points: `sparsenet frontier sweep` (Ray) vs DVC's queue, 1 job

``threads`` times what dominates a point, a training stage (``train_dense``, ``--epochs`` on the
prepared data), two at a time: as two processes of ``cores / 2`` threads each at once, and as
one process of every core twice; the two contenders take turns ``--repeats`` times (this
machine's speed drifts) and the median pair is kept.

``throughput`` sweeps the same points twice, each in a fresh clone of HEAD with a DVC cache of
its own (nothing restored from the other): with ``sparsenet frontier sweep`` (a local Ray
instance, its default threads per point) and with DVC's own queue (``dvc exp run --queue`` per
point, then ``dvc exp run --run-all --jobs 1``), and reports points per hour and each point's
test accuracy in both.  Both write their result, with the machine it was measured on, into
``--out`` (default ``metrics/bench_sweep.json``), keeping the other's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from sparsenet.errors import SparseNetError, one_line_errors
from sparsenet.experiments import dvc_env, finished, git
from sparsenet.frontier import experiment_name, sweep_points
from sparsenet.io import write_json
from sparsenet.machine import machine


def _clone(root: Path, into: Path) -> Path:
    """A fresh clone of ``root``'s HEAD with a DVC cache of its own."""
    git("clone", "--quiet", str(root), str(into))
    return into


def _train(workdir: Path, threads: int) -> subprocess.Popen:
    env = dict(dvc_env(), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.Popen([sys.executable, "-m", "stages.train_dense"], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        _, errors = process.communicate()
        if process.returncode != 0:
            raise SparseNetError(f"train_dense failed: {(errors.strip().splitlines() or ['?'])[-1]}")


def threads(root: Path, epochs: int, repeats: int) -> dict:
    """Seconds for two ``train_dense`` runs: at once with half the cores each, and one after the
    other with every core (median over ``repeats`` turns)."""
    prepared = root / "data" / "prepared"
    if not (prepared / "meta.json").is_file():
        raise SparseNetError(f"{prepared}: no prepared data; run `dvc repro prepare` first")
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="sparsenet-bench-") as tmp:
        dirs = []
        for index in range(2):
            workdir = Path(tmp) / f"run{index}"
            for name in ("stages", "sparsenet"):
                shutil.copytree(root / name, workdir / name, ignore=shutil.ignore_patterns("__pycache__"))
            params = yaml.safe_load((root / "params.yaml").read_text())
            params["train"]["epochs"] = epochs
            (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            (workdir / "data").mkdir()
            (workdir / "data" / "prepared").symlink_to(prepared.resolve())
            dirs.append(workdir)
        times: dict[str, list[float]] = {"one_at_a_time": [], "two_at_once": []}
        for _ in range(repeats):
            start = time.perf_counter()
            for workdir in dirs:
                _wait([_train(workdir, cores)])
            times["one_at_a_time"].append(time.perf_counter() - start)
            start = time.perf_counter()
            _wait([_train(workdir, max(1, cores // 2)) for workdir in dirs])
            times["two_at_once"].append(time.perf_counter() - start)
    one, two = (statistics.median(times[k]) for k in ("one_at_a_time", "two_at_once"))
    return {"stage": "train_dense", "epochs": epochs, "repeats": repeats, "cores": cores,
            "one_at_a_time_s": one, "two_at_once_s": two, "two_at_once_speedup": one / two, "runs_s": times}


def _accuracies(repo: Path) -> dict[str, float]:
    return {e.name: e.metrics["sparse"]["accuracy"] for e in finished(cwd=repo)}


def throughput(root: Path, methods: list[str], sparsities: list[float], seeds: list[int]) -> dict:
    """Points per hour of the two ways to sweep the same points, each from an empty cache."""
    points = sweep_points(methods, sparsities, ["filters"], ["l2"], seeds)
    env = dvc_env()
    results: dict = {"points": [experiment_name(p, []) for p in points]}
    with tempfile.TemporaryDirectory(prefix="sparsenet-bench-") as tmp:
        ray_repo = _clone(root, Path(tmp) / "ray")
        command = [sys.executable, "-m", "sparsenet.frontier", "sweep", "--methods", *methods, "--sparsities",
                   *map(str, sparsities), "--seeds", *map(str, seeds), "--out", str(Path(tmp) / "tables")]
        start = time.perf_counter()
        subprocess.run(command, cwd=ray_repo, env=env, check=True, stdin=subprocess.DEVNULL)
        results["ray"] = {"seconds": time.perf_counter() - start, "accuracy": _accuracies(ray_repo)}
        queue_repo = _clone(root, Path(tmp) / "queue")
        dvc = [sys.executable, "-m", "dvc"]
        start = time.perf_counter()
        try:
            for point in points:
                sets = [arg for key, value in point.items() for arg in ("-S", f"{key}={value}")]
                subprocess.run(dvc + ["exp", "run", "--queue", "--name", experiment_name(point, []), *sets],
                               cwd=queue_repo, env=env, check=True, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL)
            subprocess.run(dvc + ["exp", "run", "--run-all", "--jobs", "1"], cwd=queue_repo, env=env, check=True,
                           stdin=subprocess.DEVNULL)
            results["queue"] = {"seconds": time.perf_counter() - start, "accuracy": _accuracies(queue_repo)}
        finally:  # the queue's worker is a daemon: stopped, with its task, however this ends
            subprocess.run(dvc + ["queue", "stop", "--kill"], cwd=queue_repo, env=env, capture_output=True,
                           stdin=subprocess.DEVNULL)
    for way in ("ray", "queue"):
        results[way]["points_per_hour"] = 3600 * len(points) / results[way]["seconds"]
    results["ray_vs_queue"] = results["ray"]["points_per_hour"] / results["queue"]["points_per_hour"]
    results["same_accuracies"] = results["ray"]["accuracy"] == results["queue"]["accuracy"]
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sparsenet bench-sweep", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("threads", help="two trainings at once on half the cores each, or one after the other")
    one.add_argument("--epochs", type=int, default=1)
    one.add_argument("--repeats", type=int, default=3)
    many = sub.add_parser("throughput", help="points per hour: the Ray sweep against DVC's queue with 1 job")
    many.add_argument("--methods", nargs="+", default=["magnitude"])
    many.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.95])
    many.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    for command in (one, many):
        command.add_argument("--out", type=Path, default=Path("metrics/bench_sweep.json"))
    args = parser.parse_args(argv)
    root = Path(git("rev-parse", "--show-toplevel").stdout.strip())
    with one_line_errors(), _failed_commands_in_one_line():
        if args.command == "threads":
            result = threads(root, args.epochs, args.repeats)
            print(f"two train_dense runs: one after the other {result['one_at_a_time_s']:.1f} s, two at once "
                  f"{result['two_at_once_s']:.1f} s: {result['two_at_once_speedup']:.2f}x")
        else:
            result = throughput(root, args.methods, args.sparsities, args.seeds)
            print(f"{len(result['points'])} points: Ray sweep {result['ray']['points_per_hour']:.1f} points/h, "
                  f"DVC queue (1 job) {result['queue']['points_per_hour']:.1f} points/h: "
                  f"{result['ray_vs_queue']:.2f}x; same accuracies: {result['same_accuracies']}")
    earlier = json.loads(args.out.read_text()) if args.out.is_file() else {}
    older_machine = earlier.pop("machine", None)  # files of the first version: one machine for every result
    for name, value in earlier.items():
        if isinstance(value, dict) and older_machine is not None:
            value.setdefault("machine", older_machine)
    write_json(args.out, {**earlier, args.command: {**result, "machine": machine()}})
    print(f"-> {args.out}")


@contextmanager
def _failed_commands_in_one_line() -> Iterator[None]:
    """A contender's command that fails becomes one error line, not a traceback."""
    try:
        yield
    except subprocess.CalledProcessError as exc:
        raise SparseNetError(f"{' '.join(map(str, exc.cmd[1:4]))} … failed (exit {exc.returncode}); its output is "
                             "above") from None


if __name__ == "__main__":
    main()
