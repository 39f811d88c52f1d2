"""Benchmarks: ratios measured in one run, printed and written to JSON.

    python -m sparsenet.bench                    # uses data/prepared if present, else synthetic data
    python -m sparsenet.bench --quick            # a few seconds, for a smoke check

Measured, each as a ratio of two timings taken in this same process:
- the pipeline's training data path (in-memory uint8 → normalised batches) against the compute
  bound (the same training steps on one pre-loaded batch), and against a naive
  ``torchvision.datasets.ImageFolder`` + ``DataLoader`` + PIL transforms over the same images
  written as PNG files (loader alone, and loader + training step);
- a SparseNet training step (90% masked) against a dense LeNet step;
- inference at batch 256 and batch 1: the dense, the sparse (the run's models/sparse.pt, else a
  95% magnitude-pruned one) and the compact model from 50% filter pruning, each in eager
  PyTorch and on :mod:`sparsenet.engine`, and the time each spends per layer;
- fp32 matmul GFLOP/s of this machine and the GFLOP/s LeNet training achieves.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from sparsenet import training_forward
from sparsenet.analysis import model_cost
from sparsenet.checkpoints import load_model
from sparsenet.compact import compact
from sparsenet.errors import SparseNetError, one_line_errors
from sparsenet.data import BatchLoader, Split
from sparsenet.prepared import load_prepared
from sparsenet.sources import make_synthetic
from sparsenet.io import write_json
from sparsenet.machine import code_commit, machine
from sparsenet.models import LeNet, SparseNet, default_device, enforce_masks_after_steps
from sparsenet.options import LAYER_NAMES
from sparsenet.pruning import prune_model
from sparsenet.stage import keep_freed_memory
from sparsenet.speed import (LATENCY_CONTENDERS, batch_input, eager_and_engine, images_per_second, latency_ms, speedups,
                             taking_turns)

INFERENCE_BATCH = 256


def _median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    return _interleaved({"fn": fn}, repeats, warmup)["fn"]


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, the functions taking turns in every repeat (:func:`taking_turns`)."""
    return {name: statistics.median(values) for name, values in taking_turns(fns, repeats, warmup).items()}


def _trainer(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], None]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    enforce_masks_after_steps(optimizer, model)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        loss = loss_fn(training_forward.forward(model, images), labels)  # as the training stages step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _images_per_second(batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       step: Callable[[torch.Tensor, torch.Tensor], None] | None) -> float:
    count, start = 0, time.perf_counter()
    for images, labels in batches:
        if step is not None:
            step(images, labels)
        count += len(labels)
    return count / (time.perf_counter() - start)


def _pass(batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
          step: Callable[[torch.Tensor, torch.Tensor], None] | None) -> Callable[[], None]:
    """One pass over fresh ``batches()``, feeding each batch to ``step`` (if any)."""
    def run() -> None:
        for images, labels in batches():
            if step is not None:
                step(images, labels)
    return run


def _naive_loader(split: Split, classes: int, folder: Path, batch_size: int):
    """The same images as PNG files, read back by ImageFolder + DataLoader + PIL transforms."""
    from PIL import Image
    from torchvision import datasets, transforms

    for index, (image, label) in enumerate(zip(torch.from_numpy(np.array(split.images)), split.labels)):
        target = folder / f"class_{int(label)}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.expand(3, -1, -1).permute(1, 2, 0).numpy()).save(target / f"{index}.png")
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.25] * 3)])
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)


@torch.no_grad()
def layer_milliseconds(models: dict[str, nn.Module], image_size: int, batch_size: int,
                       repeats: int) -> dict[str, dict[str, float]]:
    """Median milliseconds per inference batch in each layer, and in the rest (pooling, ReLU).

    The models take turns, like :func:`sparsenet.speed.images_per_second`; shows where pruning saves
    time and where it cannot.
    """
    warmup = 5
    times: dict[str, dict[str, list[float]]] = {name: {} for name in models}
    started: dict[str, float] = {}
    hooks = []
    for model_name, model in models.items():
        model.eval()
        for layer_name in LAYER_NAMES:
            layer, record = getattr(model, layer_name), times[model_name].setdefault(layer_name, [])
            hooks.append(layer.register_forward_pre_hook(
                lambda *_, key=(model_name, layer_name): started.__setitem__(key, time.perf_counter())))
            hooks.append(layer.register_forward_hook(
                lambda *_, key=(model_name, layer_name), record=record: record.append(
                    time.perf_counter() - started[key])))
    x = torch.randn(batch_size, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    inputs = {name: x.to(next(model.parameters()).device) for name, model in models.items()}
    try:
        totals = _interleaved({name: (lambda m=model, x=inputs[name]: m(x)) for name, model in models.items()},
                              repeats, warmup)
    finally:
        for hook in hooks:
            hook.remove()
    result = {}
    for name, layers in times.items():  # the hooks also saw the warm-up calls
        ms = {layer: statistics.median(values[warmup:]) * 1e3 for layer, values in layers.items()}
        ms["pooling+relu"] = max(totals[name] * 1e3 - sum(ms.values()), 0.0)
        ms["total"] = totals[name] * 1e3
        result[name] = ms
    return result


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size ** 3 / _median_seconds(lambda: a @ b, repeats) / 1e9


def inference(classes: int, size: int, repeats: int, models: Path) -> dict:
    """Eager PyTorch and the engine, dense, sparse and compact (50% filters), taking turns.

    Uses the run's ``models/dense.pt`` and ``models/sparse.pt`` when they fit the data, else a
    fresh LeNet and a 95% magnitude-pruned copy; the compact model is the dense one with 50% of
    its filters pruned by L1 norm (its speed does not depend on training).
    """
    torch.manual_seed(0)
    try:
        dense = load_model(models / "dense.pt", False, size, classes).cpu()
        sparse = load_model(models / "sparse.pt", True, size, classes).cpu()
        origin = str(models)
    except SparseNetError:
        dense = LeNet(classes, size)
        sparse = SparseNet.from_dense(dense)
        prune_model(sparse, "magnitude", 0.95, scope="global")
        origin = "fresh LeNet, 95% magnitude-pruned"
    filters = SparseNet.from_dense(dense)
    prune_model(filters, "structured", 0.5, "filters")
    small = compact(filters)
    eager = {"dense": dense, "sparse": sparse, "compact": small}
    compiled, contenders = eager_and_engine(eager)
    x = batch_input(INFERENCE_BATCH, size)
    rates = images_per_second(contenders, x, repeats=repeats * 6)
    latency = latency_ms({k: contenders[k] for k in LATENCY_CONTENDERS}, x[:1],
                         repeats=repeats * 40)
    layers = layer_milliseconds(eager, size, INFERENCE_BATCH, repeats * 4)
    for name, forward in compiled.items():
        if forward.engine != "pytorch":
            stages = forward.layer_milliseconds(x, repeats * 4)
            layers[f"{name}_engine"] = {"input copy": stages["input"], "conv1 (+pool, ReLU)": stages["conv1"],
                                        "conv2 (+pool, ReLU)": stages["conv2"], "fc1": stages["fc1"],
                                        "fc2": stages["fc2"], "fc3": stages["fc3"], "total": sum(stages.values())}
    return {"models": origin, "engine": compiled["dense"].engine, "compact_widths": list(small.widths),
            "compact_macs_fraction": model_cost(small, size).macs / model_cost(dense, size).macs,
            "images_per_second": rates,
            "speedup": speedups(rates),
            "batch1_latency_ms": latency,
            "batch1_p50_latency_ratio_sparse_engine_vs_dense_eager":  # lower is faster
                latency["sparse_engine"]["p50"] / latency["dense_eager"]["p50"],
            "layer_ms": layers}


def run(images: int, batch_size: int, repeats: int, prepared: Path | None, models: Path = Path("models")) -> dict:
    keep_freed_memory()  # as every pipeline stage does
    device = default_device()
    torch.manual_seed(0)
    if prepared is not None and (prepared / "meta.json").is_file():
        dataset, meta = load_prepared(prepared)
        source = str(prepared)
        mean, std = meta["mean"], meta["std"]
    else:
        dataset = make_synthetic(images, 10, 10, 64, seed=0)
        source, mean, std = "synthetic", 0.5, 0.25
    split = Split(dataset.train.images[:images], dataset.train.labels[:images])  # as training gets it: mapped
    size, classes = split.images.shape[-1], len(dataset.classes)
    loader = BatchLoader(split, batch_size, mean, std, device, shuffle=True)
    results: dict = {"machine": machine(device), "commit": code_commit(), "data": source, "images": len(split), "batch_size": batch_size}

    # Training data path.
    dense = LeNet(classes, size).to(device, memory_format=torch.channels_last)
    step = _trainer(dense)
    one_batch = next(iter(loader))
    steps_per_epoch = len(loader)
    seconds = _interleaved({
        "compute": _pass(lambda: [one_batch] * steps_per_epoch, step),
        "pipeline": _pass(lambda: loader, step),
        "loader_only": _pass(lambda: loader, None),
    }, repeats)
    compute, pipeline, loader_only = (len(loader.split) / seconds[k] for k in ("compute", "pipeline", "loader_only"))
    with tempfile.TemporaryDirectory() as tmp:
        naive = _naive_loader(split, classes, Path(tmp), batch_size)
        to_device = ((x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)) for x, y in naive)
        naive_training = _images_per_second(to_device, step)
        naive_only = _images_per_second(naive, None)
    results["training_data_path"] = {
        "compute_bound_img_s": compute, "pipeline_img_s": pipeline,
        "pipeline_vs_compute_bound": pipeline / compute,
        "loader_only_img_s": loader_only, "naive_loader_only_img_s": naive_only,
        "loader_vs_naive_loader": loader_only / naive_only,
        "naive_training_img_s": naive_training, "training_vs_naive_training": pipeline / naive_training,
    }

    # Sparse vs dense training step, same batch.
    images_, labels_ = one_batch
    sparse = SparseNet.from_dense(LeNet(classes, size)).to(device, memory_format=torch.channels_last)
    prune_model(sparse, "magnitude", 0.9, scope="global")
    dense_step, sparse_step = _trainer(LeNet(classes, size).to(device, memory_format=torch.channels_last)), _trainer(sparse)
    steps = _interleaved({"dense": lambda: dense_step(images_, labels_),
                          "sparse": lambda: sparse_step(images_, labels_)}, repeats * 10, warmup=3)
    dense_s, sparse_s = steps["dense"], steps["sparse"]
    results["training_step"] = {"dense_ms": dense_s * 1e3, "sparse_ms": sparse_s * 1e3,
                                "sparse_vs_dense": sparse_s / dense_s}

    results["inference"] = inference(classes, size, repeats, models)
    reference = LeNet(classes, size)

    # How much of the machine LeNet training uses: fwd + bwd ≈ 3 × forward MACs × 2 FLOPs.
    peak = matmul_gflops()
    flops_per_image = 3 * 2 * model_cost(reference, size).macs
    achieved = flops_per_image * compute / 1e9
    results["flops"] = {"matmul_gflops": peak, "lenet_training_gflops": achieved, "fraction_of_matmul": achieved / peak}
    return results


def report(results: dict) -> str:
    data, step, inf, flops = (results["training_data_path"], results["training_step"], results["inference"],
                              results["flops"])
    return "\n".join([
        f"machine: {results['machine']['processor']}, {results['machine']['threads']} threads, "
        f"{results['machine']['device']}, torch {results['machine']['torch']}; data: {results['data']} "
        f"({results['images']} images, batch {results['batch_size']})",
        f"training, pipeline vs compute bound   : {data['pipeline_vs_compute_bound']:.2f}x "
        f"({data['pipeline_img_s']:.0f} vs {data['compute_bound_img_s']:.0f} img/s)",
        f"loader alone, ours vs naive ImageFolder: {data['loader_vs_naive_loader']:.1f}x "
        f"({data['loader_only_img_s']:.0f} vs {data['naive_loader_only_img_s']:.0f} img/s)",
        f"training, ours vs naive ImageFolder    : {data['training_vs_naive_training']:.2f}x "
        f"({data['pipeline_img_s']:.0f} vs {data['naive_training_img_s']:.0f} img/s)",
        f"training step, sparse vs dense         : {step['sparse_vs_dense']:.2f}x "
        f"({step['sparse_ms']:.1f} vs {step['dense_ms']:.1f} ms)",
        f"inference at batch {INFERENCE_BATCH}, images/s ({inf['models']}; engine: {inf['engine']}):",
        "  " + ", ".join(f"{name} {rate:,.0f}" for name, rate in inf["images_per_second"].items()),
        "  " + ", ".join(f"{name.replace('_vs_', ' vs ')} {value:.2f}x" for name, value in inf["speedup"].items()),
        f"  compact model widths {inf['compact_widths']}, {inf['compact_macs_fraction']:.2f}x the dense MACs",
        "batch 1 latency, ms (p50 / p99): " + ", ".join(
            f"{name} {v['p50']:.3f} / {v['p99']:.3f}" for name, v in inf["batch1_latency_ms"].items())
        + f"; sparse engine's p50 latency {inf['batch1_p50_latency_ratio_sparse_engine_vs_dense_eager']:.2f}x dense "
        "PyTorch's (lower is faster)",
        f"ms per {INFERENCE_BATCH} images, per layer:",
        *(f"  {name:15} " + ", ".join(f"{layer} {ms:.2f}" for layer, ms in layers.items())
          for name, layers in inf["layer_ms"].items()),
        f"fp32 matmul {flops['matmul_gflops']:.1f} GFLOP/s; LeNet training {flops['lenet_training_gflops']:.1f} "
        f"GFLOP/s = {flops['fraction_of_matmul']:.2f} of it",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sparsenet.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4096, help="training images per measured pass (default 4096)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats, the median is kept")
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"),
                        help="prepared data to read (default data/prepared; synthetic when missing)")
    parser.add_argument("--models", type=Path, default=Path("models"),
                        help="folder with the run's dense.pt and sparse.pt (default models; fresh models when missing)")
    parser.add_argument("--out", type=Path, default=Path("metrics/bench.json"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check, not a measurement")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 256, 1
    with one_line_errors():
        results = run(args.images, args.batch_size, args.repeats, args.prepared, args.models)
    write_json(args.out, results)
    print(report(results))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
