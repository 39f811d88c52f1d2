"""The frontier sweep on a real Ray cluster of two nodes, with real DVC and git: a bare git repo
as the shared git remote, a folder as the DVC remote, every node's IP 127.0.0.1.

One module-scoped project and cluster; the tests run in order, each building on the last (the
points a test publishes are the ones the next one finds done).
"""

from __future__ import annotations

import csv
import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.test_pipeline import REPO, SMALL, dvc, make_project, merged, run

# Tiny points: one epoch each, so a point is process starts more than training.
PARAMS = merged(SMALL, {"train": {"epochs": 1}, "prune": {"epochs": 1, "finetune_epochs": 0},
                        "compress": {"epochs": 0}})
GRID = ["--methods", "magnitude", "random", "--sparsities", "0.5", "0.8", "--seeds", "0", "1"]
POINTS = sorted(f"sweep-{method}-{target}-seed{seed}" for method in ("magnitude", "random") for target in ("0.5", "0.8")
                for seed in (0, 1))
LOOPBACK_ADDRESSES = {"127.0.0.1", "::ffff:127.0.0.1"}
DEADLINE = 600  # seconds a step may take on a loaded 2-core machine


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and one worker node of one CPU each on 127.0.0.1, token authentication on with a
    token of their own; the raylets kill what a dead worker leaves running."""
    token = tmp_path_factory.mktemp("ray") / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    settings = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                "RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper": "true"}
    mp = pytest.MonkeyPatch()
    for key, value in settings.items():
        mp.setenv(key, value)
    from ray.cluster_utils import Cluster  # after the settings: Ray reads them once, at import

    nodes = Cluster(initialize_head=True,
                    head_node_args={"num_cpus": 1, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    nodes.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    nodes.wait_for_nodes()
    yield nodes, settings
    nodes.shutdown()
    mp.undo()


@pytest.fixture(scope="module")
def project(tmp_path_factory, cluster):
    """The user's repo, its bare git remote (``origin``) and a folder as its default DVC remote."""
    base = tmp_path_factory.mktemp("sweep")
    root, remote, store = base / "repo", base / "remote.git", base / "dvc-store"
    root.mkdir()
    shutil.copytree(REPO / "results", root / "results")  # the project's own frontier record comes with a clone
    env = make_project(root, PARAMS)
    env.update(cluster[1], RAY_ADDRESS=cluster[0].address)
    run(["git", "init", "-q", "--bare", str(remote)], base, env)
    run(dvc("remote", "add", "-d", "store", str(store)), root, env)
    run(["git", "commit", "-qam", "DVC remote"], root, env)
    run(["git", "remote", "add", "origin", str(remote)], root, env)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], root, env)
    return root, remote, store, env


def sweep_command(remote: Path | str | None, *args: str) -> list[str]:
    where = ["--git-remote", str(remote)] if remote else []
    return [sys.executable, "-m", "sparsenet.frontier", "sweep", *where, *args]


def shown(root: Path, env: dict) -> list[dict]:
    """(name, baseline, experiment commit, accuracy) of every finished experiment, as ``dvc exp
    show --json`` reports them."""
    entries = json.loads(run(dvc("exp", "show", "--json", "--all-commits"), root, env).stdout)
    return sorted(({"name": exp["name"], "baseline": baseline["rev"], "rev": exp["revs"][0]["rev"],
                    "accuracy": exp["revs"][0]["data"]["metrics"]["metrics/evaluate.json"]["data"]["sparse"]["accuracy"]}
                   for baseline in entries for exp in baseline.get("experiments") or []
                   if (exp.get("executor") or {}).get("state") in (None, "success")), key=lambda e: e["name"])


def published(remote: Path, root: Path, env: dict) -> list[str]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return sorted(name for refs in repo.experiments.ls(all_commits=True, git_remote=str(remote)).values()
                      for name, _ in refs)


def reported(output: str) -> list[str]:
    """Every point a sweep reported done (``done: <name>: accuracy …`` or ``… (published earlier)``)."""
    return sorted(match.group(1) for line in output.splitlines() if (match := re.match(r"done: (\S+?):? ", line)))


def trained(output: str) -> list[str]:
    """The points a sweep ran to the end (``done: <name>: accuracy …``)."""
    return sorted(match.group(1) for line in output.splitlines() if (match := re.match(r"done: (\S+): accuracy ", line)))


def dvc_runs_below(process: psutil.Process) -> list[psutil.Process]:
    """The ``dvc exp run`` processes below ``process`` (one that ends while it is looked at is not)."""
    found = []
    for child in process.children(recursive=True):
        try:
            words = child.cmdline()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):  # ZombieProcess: ended, not yet reaped
            continue
        if "exp" in words and "run" in words:
            found.append(child)
    return found


def listening_addresses(root_process: psutil.Process) -> set[str]:
    """The addresses every process below ``root_process`` listens on."""
    addresses = set()
    for process in [root_process, *root_process.children(recursive=True)]:
        try:
            addresses |= {c.laddr.ip for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return addresses


def recorded_outputs(root: Path, env: dict, rev: str) -> dict[str, str]:
    """Every output's hash in the ``dvc.lock`` of commit ``rev`` but the timings and the page
    that shows them."""
    lock = yaml.safe_load(run(["git", "show", f"{rev}:dvc.lock"], root, env).stdout)
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs") or []
            if out["path"] not in ("metrics/speed.json", "plots/report.md")}


def test_a_killed_driver_and_a_killed_node_leave_every_point_published_once(project, cluster):
    root, remote, _, env = project
    nodes, _ = cluster
    head = run(["git", "rev-parse", "HEAD"], root, env).stdout.strip()
    command = sweep_command(remote, *GRID)
    # the driver SIGKILLed once two points are published: the rest of its tasks die with it
    driver = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    deadline = time.monotonic() + DEADLINE
    while len(published(remote, root, env)) < 2:
        assert driver.poll() is None and time.monotonic() < deadline, driver.stdout.read()
        time.sleep(1)
    driver.send_signal(signal.SIGKILL)
    first_output = driver.communicate()[0]
    time.sleep(5)  # the tasks of a dead driver are killed with their processes: nothing publishes late
    before = published(remote, root, env)
    assert 2 <= len(before) < 8 and set(reported(first_output)) <= set(before)

    # run again; SIGKILL one `dvc exp run`, then the worker node (SIGKILL too) while it runs a
    # point: Ray runs both points again, the second on another node
    again = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + DEADLINE
    while not (runs := dvc_runs_below(psutil.Process())):
        assert again.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
    cmdline = runs[0].cmdline()
    interrupted = cmdline[cmdline.index("--name") + 1]
    runs[0].kill()
    worker = nodes.list_all_nodes()[1]
    raylet = psutil.Process(worker.all_processes["raylet"][0].process.pid)
    while not dvc_runs_below(raylet):
        assert again.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
    cluster_addresses = listening_addresses(psutil.Process())  # the nodes and the driver run below this process
    nodes.remove_node(worker, allow_graceful=False)
    nodes.add_node(num_cpus=1, node_ip_address="127.0.0.1")  # a node joins instead: two points at once again
    output, _ = again.communicate(timeout=DEADLINE)
    assert again.returncode == 0, output
    assert cluster_addresses and cluster_addresses <= LOOPBACK_ADDRESSES, cluster_addresses
    assert f"8 points: {len(before)} already done for this code, {8 - len(before)} to run" in output, output
    # the re-run ran only the points not yet published, each once; a point the first driver published
    # but was killed before reporting is reported by neither run, none by both
    assert reported(output) == sorted(set(POINTS) - set(before)), output
    assert not set(reported(first_output)) & set(reported(output))
    assert published(remote, root, env) == POINTS
    experiments = shown(root, env)
    assert [e["name"] for e in experiments] == POINTS and {e["baseline"] for e in experiments} == {head}

    with open(root / "plots" / "frontier.csv") as fh:
        means = {(row["kind"], row["line"].split(",")[0], row["target_sparsity"]): row for row in csv.DictReader(fh)}
    accuracy = {e["name"]: e["accuracy"] for e in experiments}  # DVC's record, not the tables
    for method in ("magnitude", "random"):
        for target in ("0.5", "0.8"):
            row = means[("pruned", f"{method} (layer)", target)]
            runs = [accuracy[f"sweep-{method}-{target}-seed{seed}"] for seed in (0, 1)]
            assert row["n"] == "2" and row["seeds"] == "0 1"
            assert float(row["accuracy_mean"]) == pytest.approx(sum(runs) / 2)
            assert float(row["accuracy_std"]) == pytest.approx(abs(runs[0] - runs[1]) / 2 ** 0.5)
    with open(root / "plots" / "frontier_runs.csv") as fh:
        assert {row["commit"] for row in csv.DictReader(fh)} == {head[:12]}
    for name in ("frontier_runs.csv", "frontier.md"):  # the project's record stands beside the user's tables
        assert (root / "results" / "frontier" / name).read_bytes() == (REPO / "results" / "frontier" / name).read_bytes()

    # the interrupted point's outputs reached the DVC remote: a new clone of the git remote gets them
    clone = root.parent / "reader"
    run(["git", "clone", "-q", "-b", "main", str(remote), str(clone)], root.parent, env)
    run(dvc("exp", "pull", "origin", interrupted), clone, env)  # its ref, and its outputs from the DVC remote
    run(dvc("exp", "apply", interrupted), clone, env)  # fails for any output missing from the cache
    assert json.loads((clone / "metrics" / "evaluate.json").read_text())["sparse"]["accuracy"] == accuracy[interrupted]
    assert (clone / "models" / "sparse.pt").stat().st_size > 0


def commit_change(root: Path, env: dict, path: str, text: str) -> str:
    with open(root / path, "a") as fh:
        fh.write(text)
    run(["git", "commit", "-qam", f"change {path}"], root, env)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], root, env)
    return run(["git", "rev-parse", "HEAD"], root, env).stdout.strip()


def test_a_change_to_the_plots_reruns_nothing_and_one_to_training_every_point(project):
    root, remote, _, env = project
    commit_change(root, env, "sparsenet/plots.py", "\n# the figures' code only\n")
    again = run(sweep_command("origin", *GRID), root, env)  # the git remote by its name this time
    assert "8 points: 8 already done for this code, 0 to run" in again.stdout, again.stdout
    assert "8 experiments, " in again.stdout  # the tables still show them: the same code made them

    first = {e["name"]: recorded_outputs(root, env, e["rev"]) for e in shown(root, env)}
    head = commit_change(root, env, "sparsenet/training.py", "\n# a module every training stage imports\n")
    # on a local instance this time: this repo as the git remote, its DVC cache shared; seed 0 only
    local = {key: value for key, value in env.items() if key != "RAY_ADDRESS"}
    seed0 = [point for point in POINTS if point.endswith("-seed0")]
    driver = subprocess.Popen(sweep_command(None, *GRID[:-1]), cwd=root, env=local, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    tree = psutil.Process(driver.pid)
    deadline = time.monotonic() + DEADLINE
    while not dvc_runs_below(tree):
        assert driver.poll() is None and time.monotonic() < deadline, driver.stdout.read()
        time.sleep(0.5)
    addresses = listening_addresses(tree)
    output, _ = driver.communicate(timeout=DEADLINE)
    assert driver.returncode == 0, output
    assert addresses and addresses <= LOOPBACK_ADDRESSES, addresses  # the local instance on loopback only
    assert "4 points: 0 already done for this code, 4 to run" in output, output
    assert trained(output) == seed0
    with open(root / "plots" / "frontier_runs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {row["commit"] for row in rows} == {head[:12]}  # only this code's runs
    assert sorted({row["experiment"] for row in rows}) == seed0
    everything = run([sys.executable, "-m", "sparsenet.frontier", "plot", "--all-commits", "--out", "all"], root, env)
    assert "12 experiments, " in everything.stdout, everything.stdout
    # determinism: retrained in other clones by other processes, the same params and seed gave the
    # same bytes — every checkpoint, log and metrics/evaluate.json — as on the cluster before
    again = {e["name"]: recorded_outputs(root, env, e["rev"]) for e in shown(root, env) if e["baseline"] == head}
    assert sorted(again) == seed0
    for name, hashes in again.items():
        assert hashes == first[name] and "models/sparse.pt" in hashes and "metrics/evaluate.json" in hashes


def test_a_bad_value_fails_its_points_in_one_line_each_and_the_others_go_on(project):
    root, remote, _, env = project
    before = {e["name"] for e in shown(root, env)}
    sweep = run(sweep_command(remote, "--methods", "magnitude", "--sparsities", "0.65", "2", "--seeds", "0", "1"),
                root, env, check=False)
    output = sweep.stdout + sweep.stderr
    errors = [line for line in output.splitlines() if line.startswith("failed: ")]
    assert sweep.returncode == 100 + 2, output  # 100 + the points that failed
    assert sorted(line.split(":")[1].strip() for line in errors) == ["sweep-magnitude-2-seed0", "sweep-magnitude-2-seed1"]
    assert all("prune.sparsity = 2.0 is not allowed" in line for line in errors), errors
    assert "Traceback" not in output
    assert trained(output) == ["sweep-magnitude-0.65-seed0", "sweep-magnitude-0.65-seed1"], output
    assert {e["name"] for e in shown(root, env)} == before | {"sweep-magnitude-0.65-seed0", "sweep-magnitude-0.65-seed1"}
    log = (root / ".sparsenet" / "sweep" / "sweep-magnitude-2-seed0.log").read_text()
    assert "prune.sparsity = 2.0 is not allowed" in log


def test_a_commit_the_nodes_cannot_get_is_refused_before_any_point_runs(project):
    root, remote, _, env = project
    run(["git", "commit", "-q", "--allow-empty", "-m", "local only"], root, env)  # not pushed
    local_only = run(["git", "rev-parse", "HEAD"], root, env).stdout.strip()
    for command, expected in (
            (sweep_command(remote, *GRID), f"error: --git-remote {remote}: commit {local_only[:12]} is not there; "
                                           f"push it first (git push {remote} HEAD)"),
            ([*sweep_command(None, *GRID), "--address", "10.0.0.1:6379"],
             "error: --address 10.0.0.1:6379: the other machines cannot clone this folder; pass --git-remote URL")):
        refused = run(command, root, env, check=False)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.strip().splitlines()[-1].startswith(expected), refused.stderr
        assert "Traceback" not in refused.stderr and "points done" not in refused.stdout
