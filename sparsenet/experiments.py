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


def experiment_refs(cwd: Path | None = None, git_remote: str | None = None, rev: str | None = None) -> dict:
    """``{baseline commit: [(name, experiment commit or None), …]}`` of the experiments in the
    repo at ``cwd`` (or in ``git_remote``), of every commit (or of ``rev``), from DVC's Python API."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(cwd or ".")) as repo:
            return dict(repo.experiments.ls(rev=rev, all_commits=rev is None, git_remote=git_remote))
    except DvcException as exc:
        where = f"the git remote {git_remote}" if git_remote else (str(cwd) if cwd else "this repo")
        raise SparseNetError(f"listing the experiments of {where}: {' '.join(str(exc).split())}") from None


def finished(cwd: Path | None = None) -> list[Experiment]:
    """Every finished experiment with a ``metrics/evaluate.json``, whatever commit it is based on
    (``dvc exp show --json`` of the commits experiments are based on).  Queued, running and
    failed ones are left out."""
    baselines = [baseline for baseline, experiments in experiment_refs(cwd).items() if experiments]
    if not baselines:
        return []
    shown = json.loads(dvc("exp", "show", "--json", *(a for b in baselines for a in ("--rev", b)), cwd=cwd) or "[]")
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

    def params(self, sets: tuple[str, ...] | list[str] = ()) -> dict:
        """HEAD's ``params.yaml`` (the file a sweep's clones start from) with ``sets`` applied as
        ``dvc exp run -S`` applies them, read as ``dvc exp show`` reads it (:func:`with_sets`)."""
        return with_sets(git("show", f"{self.head}:params.yaml", cwd=self.cwd).stdout, sets)


def with_sets(params_text: str, sets: tuple[str, ...] | list[str]) -> dict:
    """The params of a ``params.yaml`` holding ``params_text`` once ``dvc exp run -S`` has applied
    ``sets`` (``key.path=value``), as ``dvc exp show`` reports them: DVC's own override and YAML
    code does both, so a value reads the same here as in the experiment (YAML 1.2: ``1e-3`` a
    number, ``on`` a string)."""
    import tempfile

    from dvc.utils.hydra import apply_overrides
    from dvc.utils.serialize import load_yaml

    with tempfile.TemporaryDirectory(prefix="sparsenet-params-") as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(params_text)
        if sets:
            try:
                apply_overrides(path, list(sets))
            except Exception as exc:  # DVC's own words for a value it cannot parse
                raise SparseNetError(f"--set {' '.join(sets)}: {exc}") from None
        return json.loads(json.dumps(load_yaml(path)))
