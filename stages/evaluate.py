"""Step ``evaluate``: accuracy, sparsity, size and cost of every model; measured inference speed."""

from __future__ import annotations

import torch

from sparsenet import analysis, engine
from sparsenet.checkpoints import load_checkpoint, load_model, load_packed, same_tensors
from sparsenet.config import Config
from sparsenet.data import BatchLoader
from sparsenet.prepared import load_meta, load_split
from sparsenet.io import write_json
from sparsenet.models import default_device
from sparsenet.stage import Paths
from sparsenet.pruning import pruned_layer_names
from sparsenet.speed import LATENCY_CONTENDERS, batch_input, eager_and_engine, images_per_second, latency_ms, speedups
from sparsenet.training import EVAL_BATCH_SIZE, evaluate as test_loss_and_accuracy

SPEED_BATCH_SIZE = 256
TIMED = ("dense", "sparse", "compact")


def engine_agreement(eager: torch.nn.Module, compiled: engine.CompiledModel, test: BatchLoader) -> tuple[float, float]:
    """(fraction of test images both predict alike, largest absolute logit difference)."""
    same, count, largest = 0, 0, 0.0
    with torch.inference_mode():
        for images, _ in test:
            expected, got = eager(images).cpu(), compiled(images).cpu()
            same += int((expected.argmax(1) == got.argmax(1)).sum())
            count += len(images)
            largest = max(largest, float((expected - got).abs().max()))
    return same / count, largest


def measure_speed(models: dict[str, torch.nn.Module], test: BatchLoader, size: int, in_channels: int) -> dict:
    """``metrics/speed.json``: images/s at batch 256 of each model in eager PyTorch and on the
    engine, batch-1 latency, the speed-ups (each named by what it compares), and how closely the
    engine reproduces each model on the test set."""
    compiled, contenders = eager_and_engine({name: models[name] for name in TIMED})
    device = next(models["dense"].parameters()).device
    x = batch_input(SPEED_BATCH_SIZE, size, in_channels, device)
    rates = images_per_second(contenders, x)
    latency = latency_ms({key: contenders[key] for key in LATENCY_CONTENDERS}, x[:1])
    agreement = {name: engine_agreement(models[name], compiled[name], test) for name in TIMED}
    return {
        "device": str(device), "threads": torch.get_num_threads(), "batch_size": SPEED_BATCH_SIZE,
        "engine": compiled["dense"].engine,
        "engines": {name: compiled[name].engine for name in TIMED},
        "engine_fallback_reasons": {name: compiled[name].reason for name in TIMED if compiled[name].reason},
        "images_per_second": rates,
        "speedup": speedups(rates),
        "batch1_latency_ms": latency,
        "batch1_p50_latency_ratio": {  # lower is faster
            "sparse_engine_vs_dense_eager": latency["sparse_engine"]["p50"] / latency["dense_eager"]["p50"],
            "sparse_engine_vs_sparse_eager": latency["sparse_engine"]["p50"] / latency["sparse_eager"]["p50"],
        },
        "engine_prediction_agreement": {name: value[0] for name, value in agreement.items()},
        "engine_max_abs_logit_difference": {name: value[1] for name, value in agreement.items()},
    }


def packed_metrics(paths: Paths, dense_bytes: int) -> dict:
    """Size of ``models/packed.pt`` and whether it restores ``models/sparse.pt`` bit for bit."""
    lossless = same_tensors(load_packed(paths.packed_model), load_checkpoint(paths.sparse_model))
    size = paths.packed_model.stat().st_size
    return {"checkpoint_bytes": size, "times_smaller_than_dense": dense_bytes / size, "restores_sparse": lossless}


def evaluate(cfg: Config, paths: Paths = Paths()) -> dict:
    """Accuracy, sparsity, cost and size of the dense, sparse, compact, control, compressed and
    small-dense models, and of the packed checkpoint; speed.

    ``metrics/evaluate.json`` is deterministic (same params + seed → same file); measured
    timings go to ``metrics/speed.json``.  ``sparse.sparsity`` is the pruned fraction of the
    weights the target covers (``prune.exclude`` and the layers a structure never prunes left
    out), ``sparse.sparsity_all_layers`` that of every weight layer; both are counted from the
    masks.
    """
    meta = load_meta(paths.prepared)
    test_split = load_split(paths.prepared, "test")  # the training split is not needed here
    test = BatchLoader(test_split, EVAL_BATCH_SIZE, meta["mean"], meta["std"], default_device())
    size, classes = int(test_split.images.shape[-1]), len(meta["classes"])
    models = {
        "dense": (paths.dense_model, load_model(paths.dense_model, False, size, classes)),
        "sparse": (paths.sparse_model, load_model(paths.sparse_model, True, size, classes)),
        "compact": (paths.compact_model, load_model(paths.compact_model, False, size, classes)),
    }
    metrics: dict = {}
    untimed = {
        "control": (paths.control_model, load_model(paths.control_model, False, size, classes)),
        "compressed": (paths.compressed_model, load_model(paths.compressed_model, True, size, classes)),
        "small": (paths.small_model, load_model(paths.small_model, False, size, classes)),
    }
    for name, (path, model) in [*models.items(), *untimed.items()]:
        loss, accuracy = test_loss_and_accuracy(model, test)
        cost = analysis.model_cost(model, size)
        metrics[name] = {"accuracy": accuracy, "loss": loss, "params": cost.params,
                         "nonzero_params": cost.nonzero_params, "macs": cost.macs,
                         "nonzero_macs": cost.nonzero_macs, "checkpoint_bytes": path.stat().st_size}
    speed = measure_speed({name: model for name, (_, model) in models.items()}, test, size,
                          models["dense"][1].in_channels)
    sparse = models["sparse"][1]
    layers = analysis.layer_sparsity(sparse)
    analysis.interpret_sparsity(sparse)
    p = cfg.prune
    covered = pruned_layer_names(p.method, p.structure, p.exclude)
    metrics["sparse"].update({
        "sparsity": analysis.overall_sparsity(layers, covered),
        "sparsity_all_layers": analysis.overall_sparsity(layers),
        "pruned_layers": covered,
        "accuracy_drop": metrics["dense"]["accuracy"] - metrics["sparse"]["accuracy"],
        "accuracy_drop_vs_control": metrics["control"]["accuracy"] - metrics["sparse"]["accuracy"],
        "accuracy_drop_vs_small": metrics["small"]["accuracy"] - metrics["sparse"]["accuracy"],
        "layers": {layer.name: {"sparsity": layer.sparsity, "zeros": layer.zeros, "total": layer.total}
                   for layer in layers},
    })
    metrics["compact"]["widths"] = list(models["compact"][1].widths)
    metrics["small"]["widths"] = list(untimed["small"][1].widths)
    dense_bytes = metrics["dense"]["checkpoint_bytes"]
    metrics["packed"] = packed_metrics(paths, dense_bytes)
    metrics["compressed"].update({
        "times_smaller_than_dense": dense_bytes / metrics["compressed"]["checkpoint_bytes"],
        "accuracy_drop_vs_sparse": metrics["sparse"]["accuracy"] - metrics["compressed"]["accuracy"],
    })
    write_json(paths.metrics, metrics)
    write_json(paths.speed, speed)
    print(f"dense accuracy {metrics['dense']['accuracy']:.4f} | control (dense, same epochs) "
          f"{metrics['control']['accuracy']:.4f} | small dense from scratch {metrics['small']['accuracy']:.4f} "
          f"({metrics['small']['params']:,} params, widths {metrics['small']['widths']}) | sparse accuracy "
          f"{metrics['sparse']['accuracy']:.4f} "
          f"at sparsity {metrics['sparse']['sparsity']:.4f} over {', '.join(covered)} "
          f"({metrics['sparse']['sparsity_all_layers']:.4f} over all layers) -> {paths.metrics}")
    packed, compressed = metrics["packed"], metrics["compressed"]
    print(f"checkpoint bytes: dense {dense_bytes:,} | sparse (masked) {metrics['sparse']['checkpoint_bytes']:,} | "
          f"packed {packed['checkpoint_bytes']:,} ({packed['times_smaller_than_dense']:.1f}x smaller than dense; "
          f"restores the sparse model exactly: {packed['restores_sparse']}) | compressed "
          f"{compressed['checkpoint_bytes']:,} ({compressed['times_smaller_than_dense']:.1f}x smaller, accuracy "
          f"{compressed['accuracy']:.4f}, {-compressed['accuracy_drop_vs_sparse'] * 100:+.2f} points vs sparse)")
    up = speed["speedup"]
    print(f"inference at batch {SPEED_BATCH_SIZE} on {speed['device']} ({speed['engine']} engine): sparse "
          f"{up['sparse_engine_vs_dense_eager']:.2f}x dense PyTorch, {up['sparse_engine_vs_dense_engine']:.2f}x dense on "
          f"the engine; compact {up['compact_engine_vs_dense_engine']:.2f}x dense on the engine "
          f"({metrics['compact']['macs'] / metrics['dense']['macs']:.2f}x its MACs); batch 1: sparse on the engine "
          f"{speed['batch1_p50_latency_ratio']['sparse_engine_vs_dense_eager']:.2f}x dense PyTorch's p50 latency -> {paths.speed}")
    return metrics


if __name__ == "__main__":
    from sparsenet.stage import run_stage

    run_stage(evaluate)
