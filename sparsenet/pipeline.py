"""The five pipeline steps; the stage scripts call these and nothing else.

Each function reads its inputs from the project's standard paths (see :class:`Paths`), does one
step and writes its outputs atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from dvclive import Live

from sparsenet import analysis, plots
from sparsenet.compact import compact
from sparsenet.config import Config, load_config
from sparsenet.data import BatchLoader, Dataset, load_prepared, load_source, save_prepared
from sparsenet.errors import SparseNetError
from sparsenet.io import atomic_dir, load_checkpoint, read_json, save_checkpoint, write_json
from sparsenet.models import LeNet, SparseNet, compact_checkpoint, default_device, lenet_from_state_dict
from sparsenet.pruning import prune_model, scheduled_sparsity
from sparsenet.report import write_report
from sparsenet.training import evaluate as evaluate_model
from sparsenet.training import fit, keep_freed_memory, seed_everything

EVAL_BATCH_SIZE = 256  # larger batches run slower on CPU for LeNet
SPEED_BATCH_SIZE = 256


@dataclass(frozen=True)
class Paths:
    """Where every step reads and writes, relative to the project root (the working directory)."""

    prepared: Path = Path("data/prepared")
    dense_model: Path = Path("models/dense.pt")
    dense_history: Path = Path("models/dense_history.pt")
    sparse_model: Path = Path("models/sparse.pt")
    compact_model: Path = Path("models/compact.pt")
    control_model: Path = Path("models/control.pt")
    dense_log: Path = Path("logs/train_dense")
    prune_log: Path = Path("logs/prune_train")
    control_log: Path = Path("logs/train_control")
    metrics: Path = Path("metrics/evaluate.json")
    speed: Path = Path("metrics/speed.json")
    plots: Path = Path("plots")
    resume: Path = Path(".sparsenet/resume")  # per-epoch training state; deleted once a stage is done


# --------------------------------------------------------------------------- prepare

def prepare(cfg: Config, paths: Paths = Paths()) -> dict:
    """Read the configured source, bring it to S×S, write ``data/prepared`` and its report."""
    data_cfg = cfg.data
    _check_outside_user_folders(paths.prepared, cfg)
    dataset = load_source(data_cfg, cfg.seed)
    report = {
        "source": data_cfg.source,
        "classes": dataset.classes,
        "train_images": len(dataset.train),
        "test_images": len(dataset.test),
        "image_shape": [3, data_cfg.image_size, data_cfg.image_size],
        "skipped_count": len(dataset.skipped),
        "skipped": dataset.skipped,
    }
    save_prepared(dataset, paths.prepared, report)
    print(f"prepared {len(dataset.train)} train / {len(dataset.test)} test images, "
          f"{len(dataset.classes)} classes, {data_cfg.image_size}x{data_cfg.image_size}x3 -> {paths.prepared}")
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} unreadable file(s), listed in {paths.prepared / 'report.json'}:")
        for item in dataset.skipped[:10]:
            print(f"  {item['path']}: {item['reason']}")
    return report


def _check_outside_user_folders(prepared: Path, cfg: Config) -> None:
    """The prepared output must never sit inside (or contain) a user's image folder."""
    if cfg.data.source != "folder":
        return
    out = prepared.resolve()
    for key, folder in (("data.train_dir", cfg.data.train_dir), ("data.test_dir", cfg.data.test_dir)):
        user = Path(folder).resolve()
        if out == user or user in out.parents or out in user.parents:
            raise SparseNetError(f"{key} = '{folder}' overlaps the prepared output {prepared}; "
                                 "keep your images in their own folder (e.g. data/train)")


# --------------------------------------------------------------------------- training

def _training_start(cfg: Config, paths: Paths) -> tuple[Dataset, BatchLoader, BatchLoader]:
    """The seeded start of every training stage: the prepared data and its train / test batches."""
    seed_everything(cfg.seed)
    dataset, meta = load_prepared(paths.prepared)
    device = default_device()
    train = BatchLoader(dataset.train, cfg.train.batch_size, meta["mean"], meta["std"], device, shuffle=True,
                        seed=cfg.seed)
    test = BatchLoader(dataset.test, EVAL_BATCH_SIZE, meta["mean"], meta["std"], device)
    return dataset, train, test


def _dense_model(paths: Paths, dataset: Dataset) -> LeNet:
    return load_model(paths.dense_model, sparse=False, image_size=dataset.image_size,
                      num_classes=len(dataset.classes))


def _resume_args(paths: Paths, stage: str, cfg: Config, *inputs: Path) -> dict:
    """``fit`` arguments that make a training stage resumable after a kill.

    The fingerprint covers the params and the stage's input files, so a checkpoint left by a run
    with other params or inputs is never resumed.
    """
    digest = hashlib.sha256(json.dumps([stage, dataclasses.asdict(cfg)], sort_keys=True).encode())
    for path in inputs:
        digest.update(path.read_bytes())
    return {"checkpoint": paths.resume / f"{stage}.pt", "fingerprint": digest.hexdigest()}


def _live_logger(live: Live) -> Callable[[dict], None]:
    def log(record: dict) -> None:
        for key, value in record.items():
            if key != "epoch":
                live.log_metric(key.replace("_", "/", 1) if key.startswith(("train_", "test_")) else key, value)
        live.next_step()
    return log


@contextmanager
def _new_live(directory: Path) -> Iterator[Live]:
    """dvclive per-epoch logs that replace ``directory`` whole once training has finished."""
    with atomic_dir(directory) as partial:
        # No dvc.yaml edits or experiment commits from inside a stage: dvc.yaml declares everything.
        with Live(str(partial), dvcyaml=False, save_dvc_exp=False, report=None) as live:
            yield live


def train_dense(cfg: Config, paths: Paths = Paths()) -> list[dict]:
    """Train LeNet with Adam + CrossEntropyLoss; write ``models/dense.pt`` and per-epoch logs."""
    dataset, train, test = _training_start(cfg, paths)
    model = LeNet(len(dataset.classes), dataset.image_size).to(default_device(), memory_format=torch.channels_last)
    # Weights at initialisation and after every epoch: the points prune.rewind can go back to.
    snapshots = {f"init.{k}": v for k, v in _plain_state(model).items()}

    def snapshot(epoch: int, _: dict) -> None:
        snapshots.update({f"epoch{epoch}.{k}": v for k, v in _plain_state(model).items()})

    with _new_live(paths.dense_log) as live:
        resume = _resume_args(paths, "train_dense", cfg, paths.prepared / "meta.json")
        history = fit(model, train, test, cfg.train.epochs, cfg.train.lr, desc="train_dense",
                      after_epoch=snapshot, log=_live_logger(live), lr_schedule=cfg.train.lr_schedule,
                      extra=snapshots, **resume)
    save_checkpoint(paths.dense_model, _plain_state(model))
    save_checkpoint(paths.dense_history, snapshots)
    resume["checkpoint"].unlink(missing_ok=True)
    return history


def rewind_state(history: dict[str, torch.Tensor], point: str) -> dict[str, torch.Tensor]:
    """The dense weights at ``point`` (``init`` or an epoch number) from ``dense_history.pt``."""
    prefix = "init." if point == "init" else f"epoch{point}."
    state = {k[len(prefix):]: v for k, v in history.items() if k.startswith(prefix)}
    if not state:
        points = sorted({k.split(".", 1)[0] for k in history})
        raise SparseNetError(f"prune.rewind = '{point}': not in the dense training history (has: {', '.join(points)})")
    return state


def prune_train(cfg: Config, paths: Paths = Paths()) -> list[dict]:
    """SparseNet from the dense weights; train, then prune on schedule, after every epoch.

    Each of the ``prune.epochs`` rounds trains one epoch, records the test accuracy, prunes to
    the round's scheduled sparsity and records the test accuracy again; with ``prune.rewind`` the
    surviving weights then go back to their dense values at initialisation or that epoch.
    ``prune.finetune_epochs`` further epochs then train with the final masks fixed.  Every record
    holds ``sparsity``.
    """
    dataset, train, test = _training_start(cfg, paths)
    net = SparseNet.from_dense(_dense_model(paths, dataset)).to(memory_format=torch.channels_last)
    p = cfg.prune
    rewind_to = None if p.rewind == "none" else rewind_state(load_checkpoint(paths.dense_history), p.rewind)

    def prune_after_epoch(epoch: int, record: dict) -> None:
        if epoch <= p.epochs:  # pruning round; later epochs fine-tune the final masks
            target = scheduled_sparsity(p.sparsity, epoch, p.epochs, p.schedule)
            prune_model(net, p.method, target, p.structure, p.scope, seed=cfg.seed, round_index=epoch,
                        exclude=tuple(p.exclude))
            loss, accuracy = evaluate_model(net, test)
            record.update({"test_loss_after_prune": loss, "test_accuracy_after_prune": accuracy})
            if rewind_to is not None:  # lottery-ticket style: surviving weights restart from there
                net.rewind(rewind_to)
        record["sparsity"] = analysis.overall_sparsity(analysis.layer_sparsity(net))

    with _new_live(paths.prune_log) as live:
        resume = _resume_args(paths, "prune_train", cfg, paths.prepared / "meta.json", paths.dense_model,
                              paths.dense_history)
        history = fit(net, train, test, p.epochs + p.finetune_epochs, p.lr, desc=f"prune_train ({p.method})",
                      after_epoch=prune_after_epoch, log=_live_logger(live), lr_schedule=p.lr_schedule,
                      **resume)
    save_checkpoint(paths.sparse_model, _plain_state(net))
    small = compact(net)
    save_checkpoint(paths.compact_model, compact_checkpoint(small))
    resume["checkpoint"].unlink(missing_ok=True)
    print(f"compact model: widths {small.widths} (dense LeNet {net.widths}) -> {paths.compact_model}")
    return history


def train_control(cfg: Config, paths: Paths = Paths()) -> list[dict]:
    """The fair baseline for ``prune_train``: the dense model trained on without pruning.

    Same start (``models/dense.pt``), epochs (``prune.epochs + prune.finetune_epochs``), learning
    rate, schedule, seed and batch order as ``prune_train``; only the pruning is missing.  So the
    control has seen as many epochs in total as the pruned model, and ``evaluate`` reports the
    pruned accuracy against it (``accuracy_drop_vs_control``) as well as against the dense model.
    """
    dataset, train, test = _training_start(cfg, paths)
    model = _dense_model(paths, dataset)
    p = cfg.prune
    with _new_live(paths.control_log) as live:
        resume = _resume_args(paths, "train_control", cfg, paths.prepared / "meta.json", paths.dense_model)
        history = fit(model, train, test, p.epochs + p.finetune_epochs, p.lr, desc="train_control",
                      log=_live_logger(live), lr_schedule=p.lr_schedule, **resume)
    save_checkpoint(paths.control_model, _plain_state(model))
    resume["checkpoint"].unlink(missing_ok=True)
    return history


def _plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU, contiguous copy of the state dict (never aliasing the live parameters)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def load_model(path: Path, sparse: bool, image_size: int, num_classes: int) -> LeNet:
    """Rebuild LeNet / SparseNet from a checkpoint, checking it fits the prepared data."""
    try:
        model = lenet_from_state_dict(load_checkpoint(path), sparse, image_size)
    except ValueError as exc:
        raise SparseNetError(f"{path}: {exc}; re-run dvc repro") from None
    if model.num_classes != num_classes:
        raise SparseNetError(f"{path}: checkpoint is for {model.num_classes} classes, the prepared data has "
                             f"{num_classes}; re-run dvc repro")
    return model.to(default_device(), memory_format=torch.channels_last)


# --------------------------------------------------------------------------- evaluate / visualize

def evaluate(cfg: Config, paths: Paths = Paths()) -> dict:
    """Accuracy, sparsity and cost of the dense, sparse, compact and control models; speed.

    ``metrics/evaluate.json`` is deterministic (same params + seed → same file);
    measured timings go to ``metrics/speed.json``.
    """
    dataset, meta = load_prepared(paths.prepared)
    test = BatchLoader(dataset.test, EVAL_BATCH_SIZE, meta["mean"], meta["std"], default_device())
    size, classes = dataset.image_size, len(dataset.classes)
    models = {
        "dense": (paths.dense_model, load_model(paths.dense_model, False, size, classes)),
        "sparse": (paths.sparse_model, load_model(paths.sparse_model, True, size, classes)),
        "compact": (paths.compact_model, load_model(paths.compact_model, False, size, classes)),
    }
    metrics: dict = {}
    speed: dict = {"device": str(default_device()), "batch_size": SPEED_BATCH_SIZE}
    control = load_model(paths.control_model, False, size, classes)
    for name, (path, model) in [*models.items(), ("control", (paths.control_model, control))]:
        loss, accuracy = evaluate_model(model, test)
        cost = analysis.model_cost(model, size)
        metrics[name] = {"accuracy": accuracy, "loss": loss, "params": cost.params,
                         "nonzero_params": cost.nonzero_params, "macs": cost.macs,
                         "nonzero_macs": cost.nonzero_macs, "checkpoint_bytes": path.stat().st_size}
    rates = analysis.throughput({name: model for name, (_, model) in models.items()}, size, SPEED_BATCH_SIZE)
    speed.update({name: {"images_per_second": rate} for name, rate in rates.items()})
    layers = analysis.layer_sparsity(models["sparse"][1])
    analysis.interpret_sparsity(models["sparse"][1])
    metrics["sparse"].update({
        "sparsity": analysis.overall_sparsity(layers),
        "accuracy_drop": metrics["dense"]["accuracy"] - metrics["sparse"]["accuracy"],
        "accuracy_drop_vs_control": metrics["control"]["accuracy"] - metrics["sparse"]["accuracy"],
        "layers": {layer.name: {"sparsity": layer.sparsity, "zeros": layer.zeros, "total": layer.total}
                   for layer in layers},
    })
    metrics["compact"]["widths"] = list(models["compact"][1].widths)
    speed["speedup"] = speed["compact"]["images_per_second"] / speed["dense"]["images_per_second"]
    write_json(paths.metrics, metrics)
    write_json(paths.speed, speed)
    print(f"dense accuracy {metrics['dense']['accuracy']:.4f} | control (dense, same epochs) "
          f"{metrics['control']['accuracy']:.4f} | sparse accuracy {metrics['sparse']['accuracy']:.4f} "
          f"at sparsity {metrics['sparse']['sparsity']:.4f} -> {paths.metrics}")
    print(f"compact model: {metrics['compact']['macs'] / metrics['dense']['macs']:.2f}x the dense MACs, "
          f"{speed['speedup']:.2f}x its inference speed ({speed['device']}) -> {paths.speed}")
    return metrics


def visualize(cfg: Config, paths: Paths = Paths()) -> list[Path]:
    """Draw every figure under ``plots/`` and ``plots/report.md`` from what the earlier steps wrote."""
    _, meta = load_prepared(paths.prepared)
    size, classes = meta["image_size"], len(meta["classes"])
    dense = load_model(paths.dense_model, sparse=False, image_size=size, num_classes=classes)
    sparse = load_model(paths.sparse_model, sparse=True, image_size=size, num_classes=classes)
    dense_history = plots.read_live_history(paths.dense_log)
    prune_history = plots.read_live_history(paths.prune_log)
    control_history = plots.read_live_history(paths.control_log)
    metrics = read_json(paths.metrics)
    p = cfg.prune
    title = f"{p.method}, {p.structure if p.method == 'structured' else p.scope + ' scope'}, target {p.sparsity:g}"
    out = paths.plots
    written = [
        plots.loss_curves(dense_history, prune_history, out / "loss_curves.png", title),
        plots.accuracy_per_round(prune_history, control_history, metrics["dense"]["accuracy"],
                                 out / "accuracy_per_round.png", title),
        plots.sparsity_heatmaps(sparse, out / "sparsity_heatmaps.png", title),
        plots.zero_weights(analysis.layer_sparsity(sparse), out / "zero_weights.png", title),
        plots.conv1_filters(dense, sparse, out / "conv1_filters.png", title),
    ]
    speed = read_json(paths.speed) if paths.speed.is_file() else {}
    written.append(write_report(cfg, metrics, speed, written, out / "report.md"))
    for path in written:
        print(f"wrote {path}")
    return written


# --------------------------------------------------------------------------- entry point

STEPS: dict[str, Callable[[Config, Paths], object]] = {
    "prepare": prepare,
    "train_dense": train_dense,
    "prune_train": prune_train,
    "train_control": train_control,
    "evaluate": evaluate,
    "visualize": visualize,
}


def run_stage(name: str, params: str = "params.yaml") -> None:
    """Load params, run one step; a user-facing problem ends as one error line and exit code 2."""
    keep_freed_memory()
    try:
        STEPS[name](load_config(params), Paths())
    except SparseNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
