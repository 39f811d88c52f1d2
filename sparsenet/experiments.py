"""The experiments DVC recorded, read back through DVC and git, and which of them ran this code.

``dvc exp show --json`` gives every finished experiment's params and metrics.  Whether one still
stands for the checked-out code is what DVC itself would decide before restoring a stage from its
run cache: the stages behind ``metrics/evaluate.json`` are defined the same in ``dvc.yaml``, the
files they depend on hold the same content (``git diff`` between the experiment's commit and
HEAD over the paths its ``dvc.lock`` lists, and the ``.dvc`` files of data DVC tracks) and the
params are the same.  A change to the plots alone leaves every experiment standing; a change
to a module a training stage imports leaves none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sparsenet.errors import SparseNetError

RESULT = "metrics/evaluate.json"  # what a point measures: the stages behind it decide whether it stands
FINISHED = (None, "success")      # executor states of experiments whose metrics are their own


@dataclass(frozen=True)
class Experiment:
    """A finished experiment: its name, its commit (``rev``), the commit it is based on, its
    ``params.yaml`` and ``metrics/evaluate.json``."""

    name: str
    rev: str
    baseline: str
    params: dict
    metrics: dict


def dvc_env() -> dict[str, str]:
    """The environment for DVC: this Python's ``bin`` first on ``PATH``, since stages run a bare
    ``python``."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def dvc(*args: str, cwd: Path | None = None) -> str:
    """Run DVC, return its standard output; a failure is one error line."""
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=dvc_env(), capture_output=True,
                            text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:]
        raise SparseNetError(f"dvc {' '.join(args)} failed (exit {result.returncode}) {' '.join(detail)}")
    return result.stdout


def git(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise SparseNetError(f"git {' '.join(args)} failed: {(result.stderr.strip().splitlines() or [''])[-1]}")
    return result


def finished(cwd: Path | None = None) -> list[Experiment]:
    """Every finished experiment with a ``metrics/evaluate.json``, whatever commit it is based on
    (``dvc exp show --json`` of the commits experiments are based on).  Queued, running and
    failed ones are left out."""
    listed = dvc("exp", "list", "--all-commits", "--sha-only", cwd=cwd).split()
    shas = [word for word in listed if len(word) == 40 and all(c in "0123456789abcdef" for c in word)]
    if not shas:
        return []
    parents = git("rev-parse", *(f"{sha}^" for sha in shas), cwd=cwd).stdout.split()  # an experiment's baseline
    revs = [arg for baseline in dict.fromkeys(parents) for arg in ("--rev", baseline)]
    shown = json.loads(dvc("exp", "show", "--json", *revs, cwd=cwd) or "[]")
    found = []
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            if (experiment.get("executor") or {}).get("state") not in FINISHED:
                continue
            for rev in experiment.get("revs") or []:
                data = rev.get("data") or {}
                metrics = ((data.get("metrics") or {}).get(RESULT) or {}).get("data")
                params = ((data.get("params") or {}).get("params.yaml") or {}).get("data")
                if metrics and params:
                    found.append(Experiment(rev.get("name") or experiment.get("name") or rev["rev"][:7], rev["rev"],
                                            baseline["rev"], params, metrics))
    return found


def _yaml_at(rev: str, path: str, cwd: Path | None) -> dict:
    shown = git("show", f"{rev}:{path}", cwd=cwd, check=False)
    return (yaml.safe_load(shown.stdout) or {}) if shown.returncode == 0 else {}


def result_stages(lock: dict, result: str = RESULT) -> list[str]:
    """The stages of a ``dvc.lock`` whose outputs ``result`` is made from, its own included."""
    stages = lock.get("stages") or {}
    made_by = {out["path"]: name for name, stage in stages.items() for out in stage.get("outs") or []}
    todo, seen = [made_by[result]] if result in made_by else [], set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [made_by[dep["path"]] for dep in stages[name].get("deps") or [] if dep["path"] in made_by]
    return sorted(seen)


class Code:
    """The checked-out commit's code, against which experiments are told current or not."""

    def __init__(self, cwd: Path | None = None, head: str = "HEAD") -> None:
        self.cwd = cwd
        self.head = git("rev-parse", head, cwd=cwd).stdout.strip()
        self.stages = _yaml_at(self.head, "dvc.yaml", cwd).get("stages") or {}
        self._known: dict[str, bool] = {}

    def runs_this(self, rev: str) -> bool:
        """Whether the experiment at ``rev`` ran the stages behind the result on this code: the
        same stage definitions and the same content in every path they depend on (outputs of
        other stages aside: those follow from the rest)."""
        if rev not in self._known:
            self._known[rev] = self._same(rev)
        return self._known[rev]

    def _same(self, rev: str) -> bool:
        lock = _yaml_at(rev, "dvc.lock", self.cwd)
        names = result_stages(lock)
        if not names:
            return False
        defined = _yaml_at(rev, "dvc.yaml", self.cwd).get("stages") or {}
        if any(defined.get(name) != self.stages.get(name) for name in names):
            return False
        stages = lock["stages"]
        outputs = {out["path"] for stage in stages.values() for out in stage.get("outs") or []}
        paths = sorted({dep["path"] for name in names for dep in stages[name].get("deps") or []
                        if dep["path"] not in outputs and not os.path.isabs(dep["path"])})
        if not paths:
            return True
        diff = git("diff", "--quiet", rev, self.head, "--", *paths, *(f"{path}.dvc" for path in paths), cwd=self.cwd,
                   check=False)
        return diff.returncode == 0

    def params(self) -> dict:
        """HEAD's ``params.yaml`` (the file a sweep's clones start from)."""
        return _yaml_at(self.head, "params.yaml", self.cwd)


def with_sets(params: dict, sets: list[str] | tuple[str, ...]) -> dict:
    """``params`` with each ``key.path=value`` applied as ``dvc exp run -S`` does (values read as
    YAML; a number in exponent form such as ``1e-3`` as a number)."""
    out = json.loads(json.dumps(params))
    for assignment in sets:
        key, _, text = assignment.partition("=")
        value: Any = yaml.safe_load(text) if text else None
        if isinstance(value, str):
            try:
                value = float(value) if value.lower() not in ("nan", "inf", "-inf", "infinity") else value
            except ValueError:
                pass
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
