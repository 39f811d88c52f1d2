"""dvc.yaml declares exactly the project modules each stage imports, and every file it reads.

The import closure is derived statically with ``modulefinder`` from each stage's command.  What a
stage really opens is recorded at run time by ``tests/read_audit/sitecustomize.py`` during the
pipeline test's ``dvc repro`` (see ``undeclared_reads``, used by ``tests/test_pipeline.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sparsenet.training_stage import import_closure

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
TOOLING = (".git/", ".dvc/", ".dvcignore", ".gitignore", ".sparsenet/")  # DVC's and git's files; resume state


def stage_module(stage: dict) -> str:
    """``stages.prepare`` from the command ``python -m stages.prepare``."""
    words = stage["cmd"].split()
    assert words[:2] == ["python", "-m"] and len(words) == 3, f"unexpected stage command {stage['cmd']!r}"
    return words[2]


def stage_script(stage: dict) -> str:
    return stage_module(stage).replace(".", "/") + ".py"


def declared(stage: dict, key: str) -> list[str]:
    """Paths listed under ``deps`` / ``outs`` / ``metrics`` / ``plots`` (entries may be mappings)."""
    paths = []
    for entry in stage.get(key, []):
        paths.extend(entry if isinstance(entry, dict) else [entry])
    return paths


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_deps_list_exactly_the_modules_it_imports(name):
    stage = STAGES[name]
    closure = import_closure(stage_module(stage))
    modules = {dep for dep in declared(stage, "deps") if dep.endswith(".py")}
    assert closure - modules == set(), f"{name}: imports but does not depend on these"
    assert modules - closure == set(), f"{name}: depends on modules it never imports (edits re-run it needlessly)"


def test_import_closure_finds_transitive_and_function_level_imports(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("import pkg.b\n")
    (tmp_path / "pkg" / "b.py").write_text("def later():\n    from pkg import c\n")
    (tmp_path / "pkg" / "c.py").write_text("import json\n")
    (tmp_path / "pkg" / "unused.py").write_text("")
    assert import_closure("pkg.a", tmp_path, ("pkg",)) == {"pkg/__init__.py", "pkg/a.py", "pkg/b.py", "pkg/c.py"}


def test_import_closure_stays_inside_its_packages_where_they_sit_among_others(tmp_path):
    """As in site-packages, where a normal install puts the package beside torch and the rest."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("import other\nimport spaced.sub.mod\n")
    (tmp_path / "other").mkdir()  # another distribution's package
    (tmp_path / "other" / "__init__.py").write_text("")
    (tmp_path / "spaced" / "sub").mkdir(parents=True)  # a namespace package: modulefinder fails on it
    (tmp_path / "spaced" / "sub" / "mod.py").write_text("")
    assert import_closure("pkg.a", tmp_path, ("pkg",)) == {"pkg/__init__.py", "pkg/a.py"}


def undeclared_reads(log: Path, root: Path) -> dict[str, set[str]]:
    """Per stage script, the project files it opened for reading that its dvc.yaml entry does not cover.

    Covered: its deps (files, or anything inside a folder dep), params.yaml when it declares
    params, its own outputs and their temporary siblings (fsync reopens them), the folders that
    hold them, and DVC's and git's own files.  A cached ``.pyc`` counts as its ``.py`` source.
    """
    by_script = {Path(stage_script(stage)).name: (name, stage) for name, stage in STAGES.items()}
    missing: dict[str, set[str]] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        script, path = line.split("\t")
        path_obj = Path(path)
        if not path_obj.is_relative_to(root) or script not in by_script:
            continue
        relative = path_obj.relative_to(root).as_posix()
        if "__pycache__/" in relative:  # sparsenet/__pycache__/io.cpython-311.pyc -> sparsenet/io.py
            folder, cached = relative.split("__pycache__/")
            relative = folder + cached.split(".")[0] + ".py"
        name, stage = by_script[script]
        deps = declared(stage, "deps")
        outs = declared(stage, "outs") + declared(stage, "metrics") + declared(stage, "plots")
        if (relative + "/").startswith(TOOLING) or relative in TOOLING or (relative == "params.yaml" and stage.get("params")):
            continue
        if any(relative == dep or relative.startswith(dep.rstrip("/") + "/") for dep in deps):
            continue
        if any(_output_or_beside(relative, out) for out in outs):
            continue
        missing.setdefault(name, set()).add(relative)
    return missing


def _output_or_beside(path: str, out: str) -> bool:
    """``path`` is ``out``, inside it, a folder holding it, or inside a temporary sibling of any of
    those (``.<name>.…``: atomic writes of files and whole folders)."""
    out_path, candidate = Path(out), Path(path)
    if candidate == out_path or out_path in candidate.parents or candidate in out_path.parents:
        return True
    on_the_way = [out_path, *[p for p in out_path.parents if p != Path(".")]]
    return any(part.parent == folder.parent and part.name.startswith(f".{folder.name}.")
               for folder in on_the_way for part in [candidate, *candidate.parents])


def tracked(config, log: set[str], prefix: str = ""):
    """A copy of a config dataclass that adds the dotted key of every param read to ``log``.

    Reads by ``resume_args`` are not recorded: it hashes the whole config into the resume
    fingerprint on purpose (to be safe, not because the result depends on every param).
    """
    import dataclasses
    import sys

    field_names = {f.name for f in dataclasses.fields(config)}

    class Tracked(type(config)):
        def __getattribute__(self, name):
            value = object.__getattribute__(self, name)
            if name not in field_names:
                return value
            if dataclasses.is_dataclass(value):
                return tracked(value, log, f"{prefix}{name}.")
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_name != "resume_args":
                frame = frame.f_back
            if frame is None:
                log.add(prefix + name)
            return value

    copy = object.__new__(Tracked)
    for name in field_names:
        object.__setattr__(copy, name, getattr(config, name))
    return copy


def test_tracked_config_records_nested_reads():
    from sparsenet.config import config_from_dict

    log: set[str] = set()
    cfg = tracked(config_from_dict({}), log)
    assert cfg.prune.method == "magnitude" and cfg.seed == 0 and cfg.data.synthetic.classes == 4
    assert log == {"prune.method", "seed", "data.synthetic.classes"}


def test_each_stage_declares_exactly_the_params_it_reads(tmp_path):
    """Run every step in-process on tiny data, under two configs that take different paths (an
    unstructured rewind; structured Taylor pruning with sensitivity allocation): each param a
    step reads is under its dvc.yaml ``params``, and each declared one is read."""
    from dataclasses import fields
    from importlib import import_module

    from sparsenet.config import config_from_dict
    from sparsenet.stage import Paths

    base = {"data": {"source": "synthetic", "image_size": 32, "synthetic": {"train_size": 64, "test_size": 32}},
            "train": {"epochs": 1, "batch_size": 32}}
    configs = {  # config → the steps to run under it (the second only where the pruning path matters)
        "rewind": ({"prune": {"epochs": 1, "finetune_epochs": 1, "rewind": "init", "lr_schedule": "cosine"}}, STAGES),
        "structured": ({"prune": {"method": "structured", "criterion": "taylor", "allocation": "sensitivity",
                                  "round_to": 4, "score_batches": 1, "sparsity": 0.5, "epochs": 1,
                                  "finetune_epochs": 1}},
                       ("prepare", "train_dense", "prune_train", "train_small")),
    }
    undeclared, reads = {}, {name: set() for name in STAGES}
    for label, (overrides, steps) in configs.items():
        cfg = config_from_dict({**base, **overrides})
        paths = Paths(**{f.name: tmp_path / label / getattr(Paths(), f.name) for f in fields(Paths)})
        for name, stage in STAGES.items():
            if name not in steps:
                continue
            read: set[str] = set()
            step = getattr(import_module(f"stages.{name}"), name)
            step(tracked(cfg, read), paths)
            params = stage.get("params", [])
            missing = {key for key in read if not any(key == p or key.startswith(p + ".") for p in params)}
            if missing:
                undeclared[f"{name} ({label})"] = missing
            reads[name] |= read
    assert undeclared == {}
    unread = {name: [p for p in stage.get("params", []) if not any(r == p or r.startswith(p + ".") for r in reads[name])]
              for name, stage in STAGES.items()}
    assert {name: keys for name, keys in unread.items() if keys} == {}
