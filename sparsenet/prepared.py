"""The prepared data on disk: ``data/prepared/`` written chunk by chunk, read memory-mapped.

``<split>_images.npy`` (uint8 N×C×S×S) and ``<split>_labels.npy`` (int64 N) for ``train`` and
``test``, ``meta.json`` (classes, size, channels, mean/std) and ``report.json`` (what was read,
what was skipped, train/test duplicates).  The images go straight from the decoder to the end of
their ``.npy`` file, chunk by chunk, so preparing takes disk, not memory: what the writer holds is
one chunk, a 256-bin histogram and, per image, its label and a 16-byte digest (train: with its
origin, for the duplicates report).  The folder is written whole
to a side folder and swapped in: a kill leaves the old prepared data or the new, never a mix.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from numpy.lib import format as npy

from sparsenet.data import Dataset, Split
from sparsenet.errors import SparseNetError
from sparsenet.io import atomic_dir, read_json, write_json

SPLITS = ("train", "test")
DUPLICATE_EXAMPLES = 10  # pairs listed in the prepare report
PREPARED_META_KEYS = ("classes", "image_size", "mean", "std")
REPORT_ORDER = ("source", "classes", "train_images", "test_images", "image_shape", "skipped_count", "skipped",
                "train_test_duplicates")
_PREPARE_AGAIN = "re-run the prepare stage (dvc repro)"


@dataclass
class Chunk:
    """Consecutive images of one split, in their final order."""

    images: np.ndarray      # k×C×S×S uint8
    labels: np.ndarray      # k int64
    origins: list[str]      # where each came from: a path, or ``train[i]``
    digests: list[bytes] | None  # of each one's source bytes (the file, or the raw image); None: not compared
    histogram: np.ndarray | None = None  # of its pixel values (256 bins), when the decoder counted them


@dataclass
class Source:
    """A data source as the writer reads it: each split a stream of chunks, train first.

    ``counts``: at most this many images per split (a folder's files, some of which may turn out
    unreadable); ``skipped`` grows, while the chunks are read, by every file left out and why.
    """

    classes: list[str]
    channels: int
    image_size: int
    counts: dict[str, int]
    chunks: Callable[[str], Iterator[Chunk]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    close: Callable[[], None] = lambda: None  # called when the writer is done with it (a decoding pool)


def statistics(histogram: np.ndarray) -> tuple[float, float]:
    """Mean and (unbiased) standard deviation, scaled to [0, 1], of the uint8 values counted in
    ``histogram`` (256 bins): exact, integer sums with one rounding at the end."""
    counts = [int(n) for n in histogram]
    count = sum(counts)
    total = sum(value * n for value, n in enumerate(counts))
    squares = sum(value * value * n for value, n in enumerate(counts))
    variance = (squares * count - total * total) / (count * max(count - 1, 1))
    return total / count / 255.0, variance ** 0.5 / 255.0


def histogram(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """The 256 counts of uint8 images' values (torch counts uint8 as it is; NumPy would first
    copy the images to int64)."""
    return torch.bincount(torch.as_tensor(images).reshape(-1), minlength=256).numpy()


def pixel_statistics(images: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """:func:`statistics` of uint8 images held in memory, from their histogram (no float copy)."""
    return statistics(histogram(images))


class Duplicates:
    """Test items whose source bytes also occur in train: their count and the first ``limit`` pairs.

    Train is added before test; a digest names the first train item that had it.
    """

    def __init__(self, limit: int = DUPLICATE_EXAMPLES) -> None:
        self.limit, self.train, self.count, self.first = limit, {}, 0, []

    def add_train(self, origins: list[str], digests: list[bytes]) -> None:
        for origin, digest in zip(origins, digests):
            self.train.setdefault(digest, origin)

    def add_test(self, origins: list[str], digests: list[bytes]) -> None:
        for origin, digest in zip(origins, digests):
            if digest in self.train:
                self.count += 1
                if len(self.first) < self.limit:
                    self.first.append({"test": origin, "train": self.train[digest]})

    def report(self) -> dict:
        return {"count": self.count, "first": self.first}


def array_bytes(source: Source) -> int:
    """Bytes of the arrays ``source`` can fill: images and labels of every split."""
    per_image = source.channels * source.image_size * source.image_size + 8
    return sum(source.counts.values()) * per_image


def check_disk(out_dir: Path, source: Source, where: Path | None = None) -> None:
    """Stop with one line before writing arrays for ``out_dir`` that the file system of ``where``
    (default: ``out_dir``) has no room for.

    The arrays' full size against the free space: a folder source's unreadable files make the
    arrays smaller, never larger; the previous prepared data stays until the new is complete.
    """
    needed = array_bytes(source)
    existing = next(p for p in [where or out_dir, *(where or out_dir).parents] if p.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        images, size = sum(source.counts.values()), source.image_size
        raise SparseNetError(
            f"{out_dir}: the prepared arrays need {needed / 2**30:,.1f} GiB ({images:,} images of "
            f"{source.channels}x{size}x{size}), its file system has {free / 2**30:,.1f} GiB free; "
            "free some space or lower data.image_size")


def write_prepared(source: Source, out_dir: str | Path, report: dict | None = None,
                   progress: Callable[[int], None] | None = None) -> dict:
    """Write ``source`` into ``out_dir`` (arrays, ``meta.json``, ``report.json``); returns the report.

    ``report`` holds fields of the caller's (source name, shape); the writer adds the counts,
    the skipped files and the test images whose bytes also occur in train.  ``progress`` is
    called with the images of each chunk written.
    """
    out_dir = Path(out_dir)
    try:
        return _write(source, out_dir, report, progress)
    finally:
        source.close()


def _write(source: Source, out_dir: Path, report: dict | None, progress: Callable[[int], None] | None) -> dict:
    counts = np.zeros(256, dtype=np.int64)
    duplicates = Duplicates()
    sizes = {}
    with atomic_dir(out_dir) as partial:
        check_disk(out_dir, source, partial)  # where the arrays go, once the last run's partial folder is gone
        for name in SPLITS:
            shape = (source.counts[name], source.channels, source.image_size, source.image_size)
            path = partial / f"{name}_images.npy"
            labels, count = [], 0
            with open(path, "wb") as images:  # written in order: a full disk is an error, not a SIGBUS of a map
                npy.write_array_header_1_0(images, {"descr": "|u1", "fortran_order": False, "shape": shape})
                for chunk in source.chunks(name):
                    k = len(chunk.labels)
                    try:
                        images.write(np.ascontiguousarray(chunk.images, dtype=np.uint8).data)
                    except OSError as exc:
                        raise SparseNetError(f"{out_dir}: writing the prepared arrays failed ({exc.strerror or exc}); "
                                             "nothing was replaced") from None
                    count += k
                    labels.append(np.asarray(chunk.labels, dtype=np.int64))
                    if name == "train":
                        counts += chunk.histogram if chunk.histogram is not None else histogram(chunk.images)
                        duplicates.add_train(chunk.origins, chunk.digests or ())
                    else:
                        duplicates.add_test(chunk.origins, chunk.digests or ())
                    if progress is not None:
                        progress(k)
            if count < shape[0]:
                _shrink(path, count)
            np.save(partial / f"{name}_labels.npy", np.concatenate(labels) if labels else np.zeros(0, np.int64))
            sizes[name] = count
        mean, std = statistics(counts)
        write_json(partial / "meta.json", {
            "classes": source.classes, "image_size": source.image_size, "channels": source.channels,
            "mean": mean, "std": max(std, 1e-6), "train_size": sizes["train"], "test_size": sizes["test"],
        })
        found = {"classes": source.classes, "train_images": sizes["train"], "test_images": sizes["test"],
                 "skipped_count": len(source.skipped), "skipped": source.skipped,
                 "train_test_duplicates": duplicates.report()}
        given = dict(report or {}, **found)
        report = {key: given.pop(key) for key in REPORT_ORDER if key in given} | given
        write_json(partial / "report.json", report)
    return report


def _shrink(path: Path, count: int) -> None:
    """Cut the ``.npy`` at ``path`` to its first ``count`` items, in place.

    NumPy pads a header so that its first dimension can grow to 21 digits without moving the
    data; the new header has the same length, so only the file's end moves.
    """
    with open(path, "r+b") as fh:
        version = npy.read_magic(fh)
        v1 = version == (1, 0)
        shape, fortran, dtype = (npy.read_array_header_1_0 if v1 else npy.read_array_header_2_0)(fh)
        offset = fh.tell()
        fh.seek(0)
        header = {"descr": npy.dtype_to_descr(dtype), "fortran_order": fortran, "shape": (count, *shape[1:])}
        (npy.write_array_header_1_0 if v1 else npy.write_array_header_2_0)(fh, header)
        if fh.tell() != offset:
            raise SparseNetError(f"{path}: the header of {count} items does not fit the space of the first")
        fh.truncate(offset + count * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)


def save_prepared(dataset: Dataset, out_dir: str | Path, report: dict | None = None) -> dict:
    """Write a dataset held in memory the way ``prepare`` writes a source (:func:`write_prepared`)."""
    splits = {name: getattr(dataset, name) for name in SPLITS}

    def chunks(name: str) -> Iterator[Chunk]:
        split = splits[name]
        origins = dataset.origins.get(name) or [f"{name}[{i}]" for i in range(len(split))]
        yield Chunk(np.asarray(split.images), np.asarray(split.labels), list(origins), dataset.digests.get(name))

    source = Source(dataset.classes, int(dataset.train.images.shape[1]), dataset.image_size,
                    {name: len(split) for name, split in splits.items()}, chunks, list(dataset.skipped))
    return write_prepared(source, out_dir, report)


def load_prepared(prepared_dir: str | Path) -> tuple[Dataset, dict]:
    """Read what :func:`write_prepared` wrote (images memory-mapped); returns the dataset and its meta.

    Missing, corrupt or inconsistent files stop with one line naming the file.
    """
    meta = load_meta(prepared_dir)
    train, test = (load_split(prepared_dir, name) for name in SPLITS)
    return Dataset(train, test, meta["classes"]), meta


def load_meta(prepared_dir: str | Path) -> dict:
    """``meta.json`` of the prepared data: classes, image size, normalisation."""
    path = Path(prepared_dir) / "meta.json"
    meta = read_json(path)
    missing = [key for key in PREPARED_META_KEYS if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise SparseNetError(f"{path}: lacks {', '.join(missing)}; {_PREPARE_AGAIN}")
    return meta


def load_split(prepared_dir: str | Path, name: str) -> Split:
    """One prepared split (``train`` or ``test``): its images memory-mapped (read-only, read
    from disk as batches need them), its labels in memory."""
    arrays = []
    for kind in ("images", "labels"):
        path = Path(prepared_dir) / f"{name}_{kind}.npy"
        try:
            arrays.append(np.load(path, mmap_mode="r" if kind == "images" else None))
        except FileNotFoundError:
            raise SparseNetError(f"{path}: not found; {_PREPARE_AGAIN}") from None
        except (ValueError, OSError, EOFError) as exc:
            raise SparseNetError(f"{path}: not a readable NumPy array ({exc}); {_PREPARE_AGAIN}") from None
    images, labels = arrays
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (len(images),):
        raise SparseNetError(f"{prepared_dir}: {name} images {images.dtype} {images.shape} and labels "
                             f"{labels.shape} do not fit together; {_PREPARE_AGAIN}")
    return Split(images, torch.from_numpy(labels.astype(np.int64, copy=False)))
