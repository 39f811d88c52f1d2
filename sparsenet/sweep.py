"""Sweep points as Ray tasks: each one ordinary ``dvc exp run`` in a clean clone, published with ``dvc exp push``.

A point is a set of ``-S key=value`` params and an experiment name.  Its task clones the sweep's
commit from a git remote, shares a DVC cache (same machine or a shared folder) or pulls what it
needs from a DVC remote, runs ``dvc exp run --name <point> -S …`` there and pushes the experiment
back: its git ref to the git remote, its outputs (and DVC's run cache, so another node restores
a stage already run instead of training it again) to the DVC remote.  The driver submits every
point, then reports each one as it finishes.

Ray does the rest: a worker process or a node that dies mid-point makes Ray run the task again
(``max_retries``) on a node still alive; a point that fails for its own reason (a bad param, a
stage error) returns its error line and is not retried.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from sparsenet.errors import SparseNetError
from sparsenet.experiments import dvc_env, experiment_refs
from sparsenet.lifetime import ENV
from sparsenet.machine import usable_cores

RETRIES = 3  # runs of a point after a crash of its worker or node (Ray re-runs the task elsewhere)
LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray takes 127.0.0.1 for this machine's IP
LOCAL_ENV = {
    # Ray advertises the machine's own IP and its servers listen on every interface by default;
    # a local instance needs neither: with "clusters" off, Ray binds to 127.0.0.1 only.
    LOOPBACK: "0",
    # The raylet kills every process a dead worker left (``dvc exp run`` and its stage), also
    # when the worker was SIGKILLed.
    "RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper": "true",
}


@dataclass(frozen=True)
class Point:
    """One experiment of the sweep: its name and its ``-S`` params (``key=value``)."""

    name: str
    sets: tuple[str, ...]


class PointInterrupted(RuntimeError):
    """``dvc exp run`` of a point died of a signal (the OOM killer, a SIGKILL): not the point's
    own fault, so Ray runs the task again.  (A stage killed under a living ``dvc`` is a failed
    stage to DVC, reported like the point's own failure.)"""


@dataclass(frozen=True)
class Source:
    """Where a task gets the project and publishes its result.

    ``git_remote``: a URL or path the task clones ``commit`` from and pushes the experiment to.
    ``cache_dir``: a DVC cache every task shares (this machine's, or a folder every node mounts);
    ``dvc_remote``: the name of a DVC remote configured in the project, or a URL, to pull inputs
    from and push outputs and run cache to.  Either, both or neither.
    ``scratch_dir``: where the clones go (default: the temporary folder); on the cache's file
    system the clones' outputs are hard links, not copies.
    """

    git_remote: str
    commit: str
    cache_dir: str | None = None
    dvc_remote: str | None = None
    scratch_dir: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of a point: published (``error`` empty) or not, with its test accuracy."""

    name: str
    error: str = ""
    accuracy: float | None = None
    seconds: float = 0.0
    already: bool = False  # a run before this one had published it (a retry after the push)
    log: str = ""          # the end of ``dvc exp run``'s output, for a failed point


def _python_env(threads: int) -> dict[str, str]:
    """The environment of a point's DVC (:func:`sparsenet.experiments.dvc_env`) with ``threads``
    threads for PyTorch and the compiled kernels."""
    env = dvc_env()
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), DVC_NO_ANALYTICS="1")
    env.pop("PYTHONPATH", None)  # a stage imports the clone's package, nothing else
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _error_line(result: subprocess.CompletedProcess) -> str:
    """The line that says why a command failed: a stage's own ``error: …`` line, else the last line."""
    lines = [line.strip() for line in (result.stderr + "\n" + result.stdout).splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("error: ")]
    return (ours or lines or [f"exit status {result.returncode}"])[-1]


@contextmanager
def _exit_statuses() -> Iterator[None]:
    """Children's exit statuses, in a Ray worker too.

    Ray's workers ignore SIGCHLD (the kernel reaps their children at once), so ``waitpid`` finds
    no child and Python reports every subprocess's exit status as 0 — a SIGKILLed ``dvc exp
    run`` included.  The default disposition is back while a point runs (its children are all
    waited for), Ray's afterwards.
    """
    try:
        previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    except (ValueError, AttributeError):  # not the main thread, or no SIGCHLD (Windows)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)


def is_url(remote: str) -> bool:
    """Whether a DVC remote is given by its URL or path rather than by the name of one configured."""
    return "/" in remote or ":" in remote or remote.startswith(".")


def run_point(point: Point, source: Source, threads: int = 1) -> Outcome:
    """Run one point in a clean clone and publish it; the body of the sweep's Ray task.

    A point already published to the git remote at this commit (a run of this task that died
    after pushing) is not run again: its outputs went to the DVC remote before its ref did.
    Raises :class:`PointInterrupted` when ``dvc exp run`` is killed by a signal.
    """
    with _exit_statuses():
        return _run_point(point, source, threads)


def _run_point(point: Point, source: Source, threads: int) -> Outcome:
    start = time.monotonic()
    env = _python_env(threads)
    dvc = [sys.executable, "-m", "dvc"]
    if source.scratch_dir:
        os.makedirs(source.scratch_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sparsenet-point-", dir=source.scratch_dir) as tmp:
        clone = Path(tmp) / "project"
        steps = [(f"cloning {source.git_remote}", ["git", "clone", "--quiet", "--no-checkout", source.git_remote,
                                                    str(clone)]),
                 (f"commit {source.commit[:12]} not in {source.git_remote} (push it there first)",
                  ["git", "checkout", "--quiet", "--detach", source.commit])]
        # The clone's outputs as hard links into the cache where it can (DVC protects them read-only,
        # the stages replace them by renames): a point of Fashion-MNIST checks out 1 GB of data.
        steps.append(("dvc config", dvc + ["config", "--local", "cache.type", "hardlink,copy"]))
        if source.cache_dir:
            steps.append(("dvc cache dir", dvc + ["cache", "dir", "--local", source.cache_dir]))
        if source.dvc_remote and is_url(source.dvc_remote):
            steps.append(("dvc remote add", dvc + ["remote", "add", "--local", "--default", "--force", "sweep",
                                                   source.dvc_remote]))
        elif source.dvc_remote:
            steps.append(("dvc remote default", dvc + ["remote", "default", "--local", source.dvc_remote]))
        for what, step in steps:
            result = _run(step, clone if clone.is_dir() else Path(tmp), env)
            if result.returncode != 0:
                return Outcome(point.name, f"{what}: {_error_line(result)}", log=result.stderr[-4000:])
        if point.name in _names(source.git_remote, source.commit, clone):
            return Outcome(point.name, already=True, seconds=time.monotonic() - start)
        sets = [arg for value in point.sets for arg in ("-S", value)]
        pull = ["--pull"] if source.dvc_remote else []
        # dvc and its stages end if this worker does (-I: the wrapper of this install, not of the clone)
        tied = [sys.executable, "-I", "-m", "sparsenet.lifetime"]
        result = _run(tied + dvc + ["exp", "run", "--name", point.name, *pull, *sets], clone, dict(env, **{ENV: "1"}))
        if result.returncode < 0:
            raise PointInterrupted(f"{point.name}: dvc exp run killed by signal {-result.returncode}")
        # Told by what exists as well as by the exit status.
        if result.returncode != 0 or point.name not in _names(None, source.commit, clone):
            return Outcome(point.name, _error_line(result), seconds=time.monotonic() - start,
                           log=(result.stdout + result.stderr)[-4000:])
        metrics = json.loads((clone / "metrics" / "evaluate.json").read_text())
        # The outputs first, the ref last: a point whose ref is on the git remote has its outputs
        # in the DVC remote too, even if this task dies in between (a retry then runs it again).
        pushes = [("dvc push", dvc + ["push", "--run-cache"])] if source.dvc_remote else []
        pushes.append(("dvc exp push", dvc + ["exp", "push", "--force", "--no-cache", source.git_remote, point.name]))
        for what, push in pushes:
            result = _run(push, clone, env)
            if result.returncode != 0:
                return Outcome(point.name, f"{what}: {_error_line(result)}", seconds=time.monotonic() - start,
                               log=(result.stdout + result.stderr)[-4000:])
        if point.name not in _names(source.git_remote, source.commit, clone):
            return Outcome(point.name, "dvc exp push: the experiment is not on the git remote after the push",
                           seconds=time.monotonic() - start, log=(result.stdout + result.stderr)[-4000:])
        return Outcome(point.name, accuracy=metrics["sparse"]["accuracy"], seconds=time.monotonic() - start)


def _names(git_remote: str | None, commit: str, clone: Path) -> set[str]:
    """The names of the experiments based on ``commit``: in the clone, or in ``git_remote``."""
    return {name for refs in experiment_refs(clone, git_remote, commit).values() for name, _ in refs}


def start_ray(address: str | None, cpus: int) -> None:
    """Join the cluster at ``address``, or start a local instance of ``cpus`` CPUs on 127.0.0.1
    (no dashboard)."""
    if address is None:
        os.environ.update(LOCAL_ENV)  # before Ray is imported: it reads them once
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray's default for a local instance, said quietly
    elif address.rpartition(":")[0] in ("127.0.0.1", "localhost", "[::1]"):
        # A cluster on this machine's loopback (nodes started with --node-ip-address 127.0.0.1):
        # without this Ray takes the driver for the machine's own IP and finds no node of it.
        os.environ.setdefault(LOOPBACK, "0")
    import ray

    if address is None:
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="warning",
                 log_to_driver=False)  # "local": a new instance, never one `ray start` left running
        # The settings above take effect only if Ray was not imported before (a notebook, a caller
        # that imported it): a local instance on the machine's own IP is remote code execution
        # for whoever reaches it, so check what Ray took.
        addresses = {node["NodeManagerAddress"] for node in ray.nodes()}
        if addresses != {"127.0.0.1"}:
            ray.shutdown()
            raise SparseNetError(f"the local Ray instance listens on {', '.join(sorted(addresses))}, not 127.0.0.1 "
                                 f"only: Ray was imported before the sweep set {LOOPBACK}=0; run the sweep in a "
                                 "fresh process")
    else:
        try:
            ray.init(address=address, logging_level="warning", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SparseNetError(f"cannot join the Ray cluster at {address}: {' '.join(str(exc).split())[:300]}") from None


def run(points: Iterable[Point], source: Source, threads: int, address: str | None = None,
        jobs: int | None = None) -> list[Outcome]:
    """Run ``points`` as Ray tasks of ``threads`` CPUs each and return their outcomes, each
    reported in one line (:func:`describe`) as it finishes, under a progress bar.

    Locally (``address`` None) Ray gets ``jobs × threads`` CPUs (default: every core); on a
    cluster each node runs as many points at once as it has CPUs for.
    """
    from tqdm import tqdm

    points = list(points)
    cpus = (jobs or max(1, usable_cores() // threads)) * threads
    start_ray(address, cpus)  # first: the local instance's settings must be in place before Ray is imported
    import ray

    task = ray.remote(num_cpus=threads, max_retries=RETRIES, retry_exceptions=[PointInterrupted])(run_point)
    pending = {task.remote(point, source, threads): point for point in points}
    outcomes = []
    try:  # the bar where someone watches; in a log, just a line per point
        with tqdm(total=len(pending), desc="points", unit="point", file=sys.stderr, dynamic_ncols=True,
                  disable=not sys.stderr.isatty()) as bar:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                point = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the task's own code raised (retried if interrupted)
                    cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                    outcome = Outcome(point.name, f"{type(cause).__name__}: {' '.join(str(cause).split())[:300]}",
                                      log=str(exc))
                except ray.exceptions.RayError as exc:  # retries exhausted: the task's nodes kept dying
                    outcome = Outcome(point.name, f"lost after {RETRIES + 1} runs: {type(exc).__name__}", log=str(exc))
                outcomes.append(outcome)
                bar.update()
                bar.write(f"{describe(outcome)} [{len(outcomes)} of {len(points)}]", file=sys.stderr)
    finally:
        ray.shutdown()
    return outcomes


def describe(outcome: Outcome) -> str:
    """One line per finished point."""
    if outcome.error:
        return f"failed: {outcome.name}: {outcome.error}"
    if outcome.already:
        return f"done: {outcome.name} (published earlier)"
    return f"done: {outcome.name}: accuracy {outcome.accuracy:.2%} ({outcome.seconds:.0f} s)"
