"""The frontier sweep on a real Ray cluster of two nodes, with real DVC and git: a bare git repo
as the shared git remote, a folder as the DVC remote, every address on 127.0.0.1.

One module-scoped project and cluster; the tests run in order, each building on the last (the
points a test publishes are the ones the next one finds done).
"""

from __future__ import annotations

import csv
import json
import os
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
LOOPBACK = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every node and the driver on 127.0.0.1
    "RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper": "true",
    "RAY_AUTH_MODE": "token",
}
LOOPBACK_ADDRESSES = {"127.0.0.1", "::ffff:127.0.0.1"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and one worker node of one CPU each, token authentication on, a token of their own."""
    token = tmp_path_factory.mktemp("ray") / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    settings = dict(LOOPBACK, RAY_AUTH_TOKEN_PATH=str(token))
    mp = pytest.MonkeyPatch()
    for key, value in settings.items():
        mp.setenv(key, value)
    from ray.cluster_utils import Cluster  # after the settings: Ray reads them once, at import

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes.add_node(num_cpus=1)
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


def sweep_command(remote: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sparsenet.frontier", "sweep", "--git-remote", str(remote), *args]


def experiments(root: Path, env: dict, shas: bool = False) -> list[tuple[str, ...]]:
    """(name, baseline commit[, the experiment's commit]) of every finished experiment ``dvc exp
    show`` lists."""
    shown = json.loads(run(dvc("exp", "show", "--json", "--all-commits"), root, env).stdout)
    return sorted((exp["name"], baseline["rev"], *([exp["revs"][0]["rev"]] if shas else []))
                  for baseline in shown for exp in baseline.get("experiments") or []
                  if (exp.get("executor") or {}).get("state") in (None, "success"))


def recorded_outputs(root: Path, env: dict, rev: str) -> dict[str, str]:
    """Every output's hash in the ``dvc.lock`` of commit ``rev``, and its metrics file."""
    lock = yaml.safe_load(run(["git", "show", f"{rev}:dvc.lock"], root, env).stdout)
    hashes = {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs") or []
              if out["path"] not in ("metrics/speed.json", "plots/report.md")}  # timings vary, and the page showing them
    return hashes


def published(remote: Path, root: Path, env: dict) -> list[str]:
    listed = run(dvc("exp", "list", str(remote), "--all-commits", "--name-only"), root, env).stdout
    return sorted(word for word in listed.split() if word.startswith("sweep-"))  # DVC may add a notice


def trained(output: str) -> list[str]:
    """Points the sweep ran to the end this time (``done: <name>: accuracy …``)."""
    return sorted(line.split(":")[1].strip() for line in output.splitlines()
                  if line.startswith("done: ") and ": accuracy " in line)


def dvc_runs_on(raylet: psutil.Process) -> list[psutil.Process]:
    """The ``dvc exp run`` processes below a node's raylet."""
    return [p for p in raylet.children(recursive=True) if "exp" in p.cmdline() and "run" in p.cmdline()]


def test_a_killed_driver_and_a_killed_node_leave_every_point_published_once(project, cluster):
    root, remote, _, env = project
    nodes, _ = cluster
    head = run(["git", "rev-parse", "HEAD"], root, env).stdout.strip()
    command = sweep_command(remote, *GRID)
    # the driver SIGKILLed once two points are published: the rest of its tasks die with it
    driver = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    deadline = time.monotonic() + 300
    while len(published(remote, root, env)) < 2:
        assert driver.poll() is None and time.monotonic() < deadline, driver.stdout.read()
        time.sleep(1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    time.sleep(5)  # the tasks of a dead driver are killed with their processes: nothing publishes late
    before = published(remote, root, env)
    assert 2 <= len(before) < 8

    # run again; kill the worker node while it runs a point: Ray runs that point again on the head
    again = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    worker = nodes.list_all_nodes()[1]
    raylet = psutil.Process(worker.all_processes["raylet"][0].process.pid)
    deadline = time.monotonic() + 300
    while not dvc_runs_on(raylet):
        assert again.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
    cluster_addresses = listening_addresses(psutil.Process())  # the nodes run below this process
    nodes.remove_node(worker)
    nodes.add_node(num_cpus=1)  # a node joins instead: two points at once again
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output
    assert cluster_addresses and cluster_addresses <= LOOPBACK_ADDRESSES, cluster_addresses
    assert f"8 points: {len(before)} already done for this code, {8 - len(before)} to run" in output, output
    assert sorted(trained(output) + before) == published(remote, root, env), output  # only the missing ones ran
    names = [name for name, _ in experiments(root, env)]
    assert len(names) == len(set(names)) == 8, names  # every point in the user's repo, none twice
    assert {baseline for _, baseline in experiments(root, env)} == {head}

    with open(root / "plots" / "frontier.csv") as fh:
        means = {(row["kind"], row["line"].split(",")[0], row["target_sparsity"]): row for row in csv.DictReader(fh)}
    for method in ("magnitude (layer)", "random (layer)"):
        for target in ("0.5", "0.8"):
            row = means[("pruned", method, target)]
            assert row["n"] == "2" and row["seeds"] == "0 1" and row["accuracy_std"] != ""
            assert 0 < float(row["accuracy_mean"]) <= 1
    with open(root / "plots" / "frontier_runs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {row["commit"] for row in rows} == {head[:12]}
    accuracies = {row["experiment"]: float(row["accuracy"]) for row in rows if row["kind"] == "pruned"}
    for name in ("frontier_runs.csv", "frontier.md"):  # the project's record stands beside the user's tables
        assert (root / "results" / "frontier" / name).read_bytes() == (REPO / "results" / "frontier" / name).read_bytes()
    magnitude = [accuracies[f"sweep-magnitude-05-seed{seed}"] for seed in (0, 1)]
    assert float(means[("pruned", "magnitude (layer)", "0.5")]["accuracy_mean"]) == pytest.approx(sum(magnitude) / 2)


def commit_change(root: Path, env: dict, path: str, text: str) -> str:
    with open(root / path, "a") as fh:
        fh.write(text)
    run(["git", "commit", "-qam", f"change {path}"], root, env)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], root, env)
    return run(["git", "rev-parse", "HEAD"], root, env).stdout.strip()


def listening_addresses(root_process: psutil.Process) -> set[str]:
    """The addresses every process below ``root_process`` listens on."""
    addresses = set()
    for process in [root_process, *root_process.children(recursive=True)]:
        try:
            addresses |= {c.laddr.ip for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return addresses


def test_a_change_to_the_plots_reruns_nothing_and_one_to_training_every_point(project):
    root, remote, _, env = project
    commit_change(root, env, "sparsenet/plots.py", "\n# the figures' code only\n")
    again = run(sweep_command(remote, *GRID), root, env)
    assert "8 points: 8 already done for this code, 0 to run" in again.stdout, again.stdout
    assert "8 experiments, " in again.stdout  # the tables still show them: the same code made them

    first = {name: recorded_outputs(root, env, rev) for name, _, rev in experiments(root, env, shas=True)}
    head = commit_change(root, env, "sparsenet/training.py", "\n# a module every training stage imports\n")
    # on a local instance this time: this repo as the git remote, its DVC cache shared
    local = {key: value for key, value in env.items() if key != "RAY_ADDRESS" and key not in LOOPBACK}
    command = [sys.executable, "-m", "sparsenet.frontier", "sweep", "--methods", "magnitude", "--sparsities", "0.5",
               "--seeds", "0", "1"]
    driver = subprocess.Popen(command, cwd=root, env=local, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    tree = psutil.Process(driver.pid)
    deadline = time.monotonic() + 120
    while not [p for p in tree.children(recursive=True) if "exp" in p.cmdline() and "run" in p.cmdline()]:
        assert driver.poll() is None and time.monotonic() < deadline, driver.stdout.read()
        time.sleep(0.5)
    addresses = listening_addresses(tree)
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output
    assert addresses and addresses <= LOOPBACK_ADDRESSES, addresses  # Ray on loopback only
    assert "2 points: 0 already done for this code, 2 to run" in output, output
    assert trained(output) == ["sweep-magnitude-05-seed0", "sweep-magnitude-05-seed1"]
    with open(root / "plots" / "frontier_runs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {row["commit"] for row in rows} == {head[:12]}  # only this code's: the two points just run
    assert sorted({row["experiment"] for row in rows}) == ["sweep-magnitude-05-seed0", "sweep-magnitude-05-seed1"]
    everything = run([sys.executable, "-m", "sparsenet.frontier", "plot", "--all-commits", "--out", "all"], root, env)
    assert "10 experiments, " in everything.stdout, everything.stdout
    # determinism: retrained in other clones by other processes, the same params and seed gave the
    # same bytes (every checkpoint, log and metrics/evaluate.json) as on the cluster before
    again = {name: recorded_outputs(root, env, rev) for name, baseline, rev in experiments(root, env, shas=True)
             if baseline == head}
    assert sorted(again) == ["sweep-magnitude-05-seed0", "sweep-magnitude-05-seed1"]
    for name, hashes in again.items():
        assert hashes == first[name] and "models/sparse.pt" in hashes and "metrics/evaluate.json" in hashes


def test_a_bad_value_fails_each_point_in_one_line_and_the_others_stand(project):
    root, remote, _, env = project
    before = experiments(root, env)
    bad = run(sweep_command(remote, "--methods", "magnitude", "--sparsities", "0.5", "--seeds", "0", "1",
                            "--set", "prune.sparsity=2"), root, env, check=False)
    output = bad.stdout + bad.stderr
    errors = [line for line in output.splitlines() if line.startswith("failed: ")]
    assert bad.returncode == 2 and len(errors) == 2, output  # exit status: how many failed
    assert all("prune.sparsity" in line for line in errors), errors
    assert "Traceback" not in output
    assert experiments(root, env) == before
