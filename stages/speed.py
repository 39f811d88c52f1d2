"""Step ``speed``: measured inference speed of the dense, sparse and compact models → ``metrics/speed.json``.

Timings vary from run to run and from machine to machine, so they live apart from
``metrics/evaluate.json`` (what ``dvc metrics diff`` compares) and carry the machine they were
measured on.  Contenders take turns batch by batch (:mod:`sparsenet.speed`), so their ratios hold
while the machine's speed drifts.
"""

from __future__ import annotations

import torch

from sparsenet import engine
from sparsenet.checkpoints import load_model
from sparsenet.config import Config
from sparsenet.data import BatchLoader
from sparsenet.io import write_json
from sparsenet.machine import machine
from sparsenet.models import default_device
from sparsenet.prepared import load_meta, load_split
from sparsenet.speed import LATENCY_CONTENDERS, batch_input, eager_and_engine, images_per_second, latency_ms, speedups
from sparsenet.stage import Paths

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


def measure_speed(models: dict[str, torch.nn.Module], test: BatchLoader, size: int, in_channels: int,
                  seed: int = 0) -> dict:
    """images/s at batch 256 of each model in eager PyTorch and on the engine, batch-1 latency, the
    speed-ups (each named by what it compares), how closely the engine reproduces each model on
    the test set, and the machine.  The timed batch is random, drawn from ``seed``."""
    compiled, contenders = eager_and_engine({name: models[name] for name in TIMED})
    device = next(models["dense"].parameters()).device
    x = batch_input(SPEED_BATCH_SIZE, size, in_channels, device, seed)
    rates = images_per_second(contenders, x)
    latency = latency_ms({key: contenders[key] for key in LATENCY_CONTENDERS}, x[:1])
    agreement = {name: engine_agreement(models[name], compiled[name], test) for name in TIMED}
    return {
        "machine": machine(device), "batch_size": SPEED_BATCH_SIZE,
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


def speed(cfg: Config, paths: Paths = Paths()) -> dict:
    """Time the dense, sparse and compact models; write ``metrics/speed.json``."""
    meta = load_meta(paths.prepared)
    test_split = load_split(paths.prepared, "test")
    test = BatchLoader(test_split, SPEED_BATCH_SIZE, meta["mean"], meta["std"], default_device())
    size, classes = int(test_split.images.shape[-1]), len(meta["classes"])
    models = {"dense": load_model(paths.dense_model, False, size, classes),
              "sparse": load_model(paths.sparse_model, True, size, classes),
              "compact": load_model(paths.compact_model, False, size, classes)}
    result = measure_speed(models, test, size, models["dense"].in_channels, cfg.seed)
    write_json(paths.speed, result)
    up, where = result["speedup"], result["machine"]
    print(f"inference at batch {SPEED_BATCH_SIZE} on {where['processor']} ({where['threads']} threads, "
          f"{result['engine']} engine): sparse {up['sparse_engine_vs_dense_eager']:.2f}x dense PyTorch, "
          f"{up['sparse_engine_vs_dense_engine']:.2f}x dense on the engine; compact "
          f"{up['compact_engine_vs_dense_engine']:.2f}x dense on the engine; batch 1: sparse on the engine "
          f"{result['batch1_p50_latency_ratio']['sparse_engine_vs_dense_eager']:.2f}x dense PyTorch's p50 latency "
          f"-> {paths.speed}")
    return result


if __name__ == "__main__":
    from sparsenet.stage import run_stage

    run_stage(speed)
