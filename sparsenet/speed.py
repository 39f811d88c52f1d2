"""Inference speed of several contenders, measured taking turns in one run.

This machine's speed drifts by tens of percent over minutes; contenders timed batch by batch in
turn see the same drift, so their ratios hold even when the timings move.  Everything is timed
under ``torch.inference_mode()``.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]


def _timed_turns(contenders: dict[str, Forward], x: torch.Tensor, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each contender over ``repeats`` rounds, one call each per round."""
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    cuda = x.is_cuda
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for name, forward in contenders.items():
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                forward(x)
                if cuda:
                    torch.cuda.synchronize()
                if i >= warmup:
                    seconds[name].append(time.perf_counter() - start)
    return seconds


def batch_input(batch_size: int, image_size: int, in_channels: int = 3,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """A random normalised batch in channels-last order, as the pipeline's loader gives it."""
    generator = torch.Generator().manual_seed(0)
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
