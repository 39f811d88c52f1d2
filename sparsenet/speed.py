"""Inference speed of several contenders, measured taking turns in one run.

This machine's speed drifts by tens of percent over minutes; contenders timed batch by batch in
turn see the same drift, so their ratios hold even when the timings move.  Everything is timed
under ``torch.inference_mode()``.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from torch import nn

from sparsenet import engine

Forward = Callable[[torch.Tensor], torch.Tensor]

# The ratios reported at batch 256, each named "<faster>_vs_<reference>", and the contenders timed
# at batch 1.
SPEEDUPS = (("sparse_engine", "dense_eager"), ("sparse_engine", "dense_engine"), ("compact_engine", "dense_engine"),
            ("compact_engine", "dense_eager"), ("compact_eager", "dense_eager"), ("dense_engine", "dense_eager"))
LATENCY_CONTENDERS = ("dense_eager", "sparse_eager", "dense_engine", "sparse_engine")


def eager_and_engine(models: dict[str, nn.Module]) -> tuple[dict[str, engine.CompiledModel], dict[str, Forward]]:
    """Each model compiled on the engine, and the contenders ``<name>_eager`` / ``<name>_engine``.

    The models compile at once: the compiler runs as its own process, so the cores share the
    seconds a first build takes.
    """
    with ThreadPoolExecutor(max_workers=max(1, len(models))) as pool:
        compiled = dict(zip(models, pool.map(engine.compile, models.values())))
    return compiled, {**{f"{name}_eager": model for name, model in models.items()},
                      **{f"{name}_engine": forward for name, forward in compiled.items()}}


def speedups(rates: dict[str, float]) -> dict[str, float]:
    """The :data:`SPEEDUPS` ratios of measured images/s."""
    return {f"{a}_vs_{b}": rates[a] / rates[b] for a, b in SPEEDUPS}


def taking_turns(fns: dict[str, Callable[[], object]], repeats: int, warmup: int,
                 synchronize: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each function over ``repeats`` rounds (after ``warmup`` rounds), one
    call each per round: the drift of the machine's speed hits every contender alike.
    ``synchronize``: wait for the GPU before and after each call."""
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            if synchronize:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if synchronize:
                torch.cuda.synchronize()
            if i >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def _timed_turns(contenders: dict[str, Forward], x: torch.Tensor, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per inference call of each contender on ``x``, taking turns."""
    with torch.inference_mode():
        return taking_turns({name: (lambda forward=forward: forward(x)) for name, forward in contenders.items()},
                            repeats, warmup, x.is_cuda)


def batch_input(batch_size: int, image_size: int, in_channels: int = 3,
                device: torch.device | str = "cpu", seed: int = 0) -> torch.Tensor:
    """A random normalised batch in channels-last order, as the pipeline's loader gives it."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, in_channels, image_size, image_size, generator=generator)
    return x.to(device).contiguous(memory_format=torch.channels_last)


def images_per_second(contenders: dict[str, Forward], x: torch.Tensor, repeats: int = 30,
                      warmup: int = 5) -> dict[str, float]:
    """Images per second of each contender on batch ``x``: the median over ``repeats`` turns."""
    times = _timed_turns(contenders, x, repeats, warmup)
    return {name: len(x) / statistics.median(values) for name, values in times.items()}


def latency_ms(contenders: dict[str, Forward], x: torch.Tensor, repeats: int = 300,
               warmup: int = 20) -> dict[str, dict[str, float]]:
    """Median (p50) and 99th-percentile (p99) milliseconds per call of each contender on ``x``."""
    times = _timed_turns(contenders, x, repeats, warmup)
    result = {}
    for name, values in times.items():
        ordered = sorted(values)
        result[name] = {"p50": statistics.median(ordered) * 1e3,
                        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3}
    return result
