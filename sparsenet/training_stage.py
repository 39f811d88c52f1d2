"""What the training stages share: the seeded start, resume that knows its run, dvclive logs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import modulefinder
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from dvclive import Live

from sparsenet import conv_block
from sparsenet.config import Config
from sparsenet.data import BatchLoader, Dataset
from sparsenet.prepared import load_prepared
from sparsenet.io import atomic_dir
from sparsenet.machine import cpu_name
from sparsenet.models import default_device
from sparsenet.stage import Paths
from sparsenet.training import EVAL_BATCH_SIZE, seed_everything

PACKAGE_ROOT = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_ROOT.parent


def training_start(cfg: Config, paths: Paths) -> tuple[Dataset, BatchLoader, BatchLoader]:
    """The seeded start of every training stage: the prepared data and its train / test batches."""
    seed_everything(cfg.seed)
    dataset, meta = load_prepared(paths.prepared)
    device = default_device()
    train = BatchLoader(dataset.train, cfg.train.batch_size, meta["mean"], meta["std"], device, shuffle=True,
                        seed=cfg.seed)
    test = BatchLoader(dataset.test, EVAL_BATCH_SIZE, meta["mean"], meta["std"], device)
    return dataset, train, test


def resume_args(paths: Paths, stage: str, cfg: Config, *inputs: Path) -> dict:
    """``fit`` arguments that make a training stage resumable after a kill.

    The fingerprint covers everything that decides the run's result: the stage, the params, the
    source of every project module the step imports, the torch and NumPy versions, the device
    and the bytes of every input file (folders: every file inside).  A checkpoint left by a run
    that differs in any of them is never resumed.  It does not depend on how the step was started
    (``dvc repro``, ``python -m stages.<step>``, ``sparsenet <step>``).
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([stage, dataclasses.asdict(cfg), torch.__version__, np.__version__,
                              platform.machine(), _device_name(cfg.train.compiled_conv)], sort_keys=True).encode())
    for name in step_code_files(stage):
        digest.update(f"\0code {name}\0".encode())
        digest.update((PROJECT_ROOT / name).read_bytes())
    for root in inputs:
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if path.is_file():
                digest.update(f"\0input {path}\0".encode())
                _update_from_file(digest, path)
    return {"checkpoint": paths.resume / f"{stage}.pt", "fingerprint": digest.hexdigest()}


def step_code_files(stage: str) -> list[str]:
    """The project's source files (relative paths) that stage ``stage`` runs, transitively.

    The same files ``dvc.yaml`` lists for the stage (its entry point ``stages/<stage>.py`` and
    everything it imports), found the same way, so an edit of any of them makes a left-over
    checkpoint stale.  Where the package is installed without the project's ``stages/`` folder,
    the step module's closure.
    """
    return sorted(import_closure(f"stages.{stage}"))


PROJECT_PACKAGES = ("sparsenet", "stages")


class _PackageFinder(modulefinder.ModuleFinder):
    """A ModuleFinder that follows only modules of the given top-level packages.

    Where the package is installed normally, its folder is site-packages: without this limit the
    finder would walk torch and everything else there (and stop on some namespace packages).
    """

    def __init__(self, root: Path, packages: tuple[str, ...]) -> None:
        super().__init__(path=[str(root)])
        self.packages = packages

    def import_module(self, partname, fqname, parent):  # noqa: ANN001 (ModuleFinder's signature)
        if fqname.split(".")[0] not in self.packages:
            return None  # recorded as not found, not followed
        return super().import_module(partname, fqname, parent)


def import_closure(module: str, root: Path = PROJECT_ROOT,
                   packages: tuple[str, ...] = PROJECT_PACKAGES) -> set[str]:
    """Files under ``root`` (relative paths) that importing ``module`` loads from ``packages``, transitively.

    Found without running anything (``modulefinder``, with ``root`` alone on its path): every
    import statement counts, also those inside functions.
    """
    finder = _PackageFinder(root, packages)
    finder.import_hook(module)
    files = set()
    for found in finder.modules.values():
        if found.__file__:
            path = Path(found.__file__).resolve()
            if path.is_relative_to(root):
                files.add(path.relative_to(root).as_posix())
    return files


def _device_name(compiled_conv: bool = True) -> str:
    """The device as far as it can change results: the GPU's name, or the CPU's model, the vector
    instructions torch's kernels use on it (AVX2, AVX512, …) and, where ``train.conv_block`` is
    ``compiled``, what computes the conv blocks' gradients (the compiled kernels and their
    compiler, or PyTorch where they cannot be built); with ``pytorch`` nothing is compiled."""
    device = default_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    block = conv_block.runs_on() if compiled_conv else "pytorch (train.conv_block)"
    return f"cpu {platform.machine()} {cpu_name()} {torch.backends.cpu.get_cpu_capability()} training block: {block}"


def _update_from_file(digest: "hashlib._Hash", path: Path, block: int = 2**22) -> None:
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)


def live_logger(live: Live) -> Callable[[dict], None]:
    """Log one epoch's record as one dvclive step.

    dvclive's summary (``metrics.json``) keeps the last value of every metric ever logged; it is
    cleared first, so the summary shows only what the last epoch measured (e.g. no "after
    prune" accuracy for a fine-tuning epoch, where nothing was pruned).
    """
    def log(record: dict) -> None:
        live.summary = {}
        for key, value in record.items():
            if key != "epoch":
                live.log_metric(key.replace("_", "/", 1) if key.startswith(("train_", "test_")) else key, value)
        live.next_step()
    return log


@contextmanager
def new_live(directory: Path) -> Iterator[Live]:
    """dvclive per-epoch logs that replace ``directory`` whole once training has finished."""
    with atomic_dir(directory) as partial:
        # No dvc.yaml edits or experiment commits from inside a stage: dvc.yaml declares everything.
        with Live(str(partial), dvcyaml=False, save_dvc_exp=False, report=None) as live:
            yield live
