"""Prepared uint8 images → normalised batches: the in-memory or memory-mapped splits and their loader.

A split's images are uint8 N×C×S×S (C = 1 for gray sources, 3 otherwise), held in memory or
memory-mapped from ``data/prepared`` (:mod:`sparsenet.prepared`); labels are int64.  Gray images
stay one channel on disk and are broadcast to the model's three input channels per batch, which
keeps the prepared data 3× smaller at no training cost.  Where the data comes from is
:mod:`sparsenet.sources`; how an image file is read, :mod:`sparsenet.decode`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from sparsenet.memory import available_memory


MODEL_CHANNELS = 3


@dataclass
class Split:
    """One split of prepared data: uint8 images N×C×S×S (a tensor, or a NumPy array such as a
    read-only memory map) and int64 labels N."""

    images: torch.Tensor | np.ndarray
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    """Both splits plus what is needed to feed and label them."""

    train: Split
    test: Split
    classes: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    # Per split: where each item came from (a path, or ``train[i]``) and a digest of its bytes.
    origins: dict[str, list[str]] = field(default_factory=dict)
    digests: dict[str, list[bytes]] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])


# --------------------------------------------------------------------------- batches

# On CPU the split is normalised once, up front, when its float copy stays below this size (and
# below half the memory available): the three per-batch passes it saves (to float, minus mean,
# over std) cost ~5% of a training step.
NORMALISE_ONCE_MAX_BYTES = 4 * 2**30


class BatchLoader:
    """Normalised float batches from uint8 images in memory or memory-mapped (no per-epoch decoding).

    A split whose float copy fits (``normalise_once_max_bytes`` and half the memory available)
    is read and normalised once, up front, on CPU; any other is streamed: each batch gathers
    its images from the array (a memory map reads only those pages) and normalises them.  The
    values are the same either way.  Gray (1-channel) data is broadcast to 3 channels per batch;
    batches are channels-last, which is markedly faster for LeNet's convolutions on CPU.
    """

    def __init__(self, split: Split, batch_size: int, mean: float, std: float,
                 device: torch.device, shuffle: bool = False, seed: int = 0,
                 normalise_once_max_bytes: int = NORMALISE_ONCE_MAX_BYTES) -> None:
        self.split, self.batch_size, self.device = split, batch_size, device
        self.mean, self.std = mean * 255.0, std * 255.0
        self.shuffle, self.generator = shuffle, torch.Generator().manual_seed(seed)
        # On a GPU normalising is nearly free and copying uint8 moves 4x fewer bytes.  On CPU the
        # float copy must also leave room: at most half of the memory still available.
        available = available_memory()
        limit = normalise_once_max_bytes if available is None else min(normalise_once_max_bytes, available // 2)
        small = int(np.prod(split.images.shape)) * 4 <= limit
        self.normalised = None
        if device.type == "cpu" and small:
            self.normalised = self.normalise(_in_memory(split.images))

    def __len__(self) -> int:
        return (len(self.split) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        return self._batches(order, n)

    def sample(self, batches: int, seed: int) -> "BatchSample":
        """``batches`` batches of images drawn at random by ``seed``: the same ones at every pass.

        Leaves this loader's own order (its generator) untouched, so training goes on as it
        would without the sample.
        """
        order = torch.randperm(len(self.split), generator=torch.Generator().manual_seed(seed))
        return BatchSample(self, order[:batches * self.batch_size])

    def _batches(self, order: torch.Tensor | None, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, n, self.batch_size):
            index = slice(start, start + self.batch_size) if order is None else order[start:start + self.batch_size]
            if self.normalised is not None:
                images = self.normalised[index]
            else:
                images = self.normalise(_gather(self.split.images, index).to(self.device, non_blocking=True))
            yield to_model_layout(images), self.split.labels[index].to(self.device, non_blocking=True)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images → float ``(x − mean) / std``, still N×C×S×S as stored."""
        return images.float().sub_(self.mean).div_(self.std)


def _in_memory(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The whole array as a contiguous tensor in memory (a memory map is read into a copy)."""
    if isinstance(images, torch.Tensor):
        return images.contiguous()
    return torch.from_numpy(np.array(images, copy=True))


def _gather(images: torch.Tensor | np.ndarray, index: slice | torch.Tensor) -> torch.Tensor:
    """The images at ``index`` (a slice, or positions in batch order) as a tensor in memory."""
    if isinstance(images, torch.Tensor):
        return images[index]
    if isinstance(index, slice):
        return torch.from_numpy(np.array(images[index]))  # a copy: a slice of a map is the map's pages
    return torch.from_numpy(np.asarray(images[index.numpy()]))  # fancy indexing copies already


class BatchSample:
    """A fixed subset of a :class:`BatchLoader`'s split, batched the same way at every pass."""

    def __init__(self, loader: BatchLoader, order: torch.Tensor) -> None:
        self.loader, self.order = loader, order

    def __len__(self) -> int:
        return (len(self.order) + self.loader.batch_size - 1) // self.loader.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.loader._batches(self.order, len(self.order))


def to_model_layout(images: torch.Tensor) -> torch.Tensor:
    """N×C×S×S float → N×3×S×S channels-last (gray broadcast to the model's three channels)."""
    if images.shape[1] != MODEL_CHANNELS:
        images = images.expand(-1, MODEL_CHANNELS, -1, -1)
    return images.contiguous(memory_format=torch.channels_last)
