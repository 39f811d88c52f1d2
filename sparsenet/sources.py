"""The three data sources as streams of chunks for :func:`sparsenet.prepared.write_prepared`.

- ``fashion-mnist``: the original IDX files (Debian ``dataset-fashion-mnist``), fetched with
  torchvision only when they are missing and the network is there; resized chunk by chunk;
- ``folder``: ``<dir>/<class>/<image>`` trees of any common format, size and mode, decoded by a
  pool of processes (``data.workers``) in order-preserving chunks;
- ``synthetic``: a deterministic generated dataset (tests, benchmarks), drawn chunk by chunk.

Each image ends as uint8 C×S×S (C = 1 for gray sources, 3 otherwise), each chunk in the order
the images will have on disk whatever the number of workers or the chunk size, so the prepared
bytes are the same for any of them.  User folders are only ever read.
"""

from __future__ import annotations

import gzip
import multiprocessing
import os
import signal
import stat
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from sparsenet.config import DataConfig
from sparsenet.data import Dataset, Split
from sparsenet.memory import check_memory
from sparsenet.decode import decode_files, digest
from sparsenet.errors import SparseNetError
from sparsenet.machine import usable_cores
from sparsenet.prepared import SPLITS, Chunk, Duplicates, Source

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CHUNK_BYTES = 4 * 2**20  # images per chunk: about this many bytes of them (at most MAX_CHUNK_IMAGES)
MAX_CHUNK_IMAGES = 2048
IN_FLIGHT = 2  # chunks per decoding process submitted ahead of the one written


def chunk_images(channels: int, image_size: int) -> int:
    """Images per chunk at this shape: ~4 MB of them (small: two decoding processes finish a split
    together), so memory does not grow with S."""
    return max(1, min(MAX_CHUNK_IMAGES, CHUNK_BYTES // (channels * image_size * image_size)))


def default_workers(workers: int) -> int:
    """``data.workers``: 0 means one decoding process per core this process may use (its CPU
    affinity, and its cgroup's CPU quota where one is set, as in a container)."""
    return workers if workers > 0 else usable_cores()


def open_source(cfg: DataConfig, seed: int, chunk: int | None = None) -> Source:
    """The configured source at ``cfg.image_size`` (``chunk`` images at a time; default :func:`chunk_images`)."""
    if cfg.source == "fashion-mnist":
        return fashion_mnist_source(cfg.fashion_mnist_dir, cfg.image_size, chunk)
    if cfg.source == "folder":
        return folder_source(cfg.train_dir, cfg.test_dir, cfg.image_size, default_workers(cfg.workers), chunk)
    syn = cfg.synthetic
    return synthetic_source(syn.train_size, syn.test_size, syn.classes, cfg.image_size, seed, chunk)


def collect(source: Source) -> Dataset:
    """A source's images held in memory (tests, small benchmarks); refused when they cannot fit."""
    try:
        check_memory(sum(source.counts.values()), source.channels, source.image_size)
        parts: dict[str, list[Chunk]] = {name: list(source.chunks(name)) for name in SPLITS}
    finally:
        source.close()
    splits, origins, digests = {}, {}, {}
    for name, chunks in parts.items():
        shape = (0, source.channels, source.image_size, source.image_size)
        images = np.concatenate([c.images for c in chunks]) if chunks else np.zeros(shape, np.uint8)
        labels = np.concatenate([c.labels for c in chunks]) if chunks else np.zeros(0, np.int64)
        splits[name] = Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))
        origins[name] = [o for c in chunks for o in c.origins]
        digests[name] = [d for c in chunks for d in (c.digests or ())]
    return Dataset(splits["train"], splits["test"], source.classes, source.skipped, origins=origins,
                   digests=digests)


# --------------------------------------------------------------------------- Fashion-MNIST

def read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SparseNetError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise SparseNetError(f"{path}: IDX header says {dims} but holds {data.size} bytes (truncated?)")
    return data.reshape(dims)


def _fetch_fashion_mnist() -> Path | None:
    """Download the IDX files with torchvision; None when offline."""
    try:
        from torchvision.datasets import FashionMNIST

        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparsenet"
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
        return root / "FashionMNIST" / "raw"
    except Exception:  # any network / filesystem failure means: not available
        return None


def load_fashion_mnist(directory: str | Path, download: bool = True) -> Dataset:
    """Fashion-MNIST from its four IDX files (28×28 gray, 10 classes: 55 MB in memory)."""
    directory = Path(directory)
    needed = [directory / name for pair in FASHION_MNIST_FILES.values() for name in pair]
    if not all(p.is_file() for p in needed):
        fetched = _fetch_fashion_mnist() if download else None
        if fetched is None:
            missing = ", ".join(p.name for p in needed if not p.is_file())
            raise SparseNetError(
                f"data.fashion_mnist_dir = '{directory}': Fashion-MNIST files missing ({missing}) and "
                "they could not be downloaded; install them with "
                "`sudo apt-get install dataset-fashion-mnist` or set data.source to folder/synthetic"
            )
        directory = fetched
    splits, origins, digests = {}, {}, {}
    for split, (images_name, labels_name) in FASHION_MNIST_FILES.items():
        images = read_idx(directory / images_name)
        labels = read_idx(directory / labels_name)
        if images.ndim != 3 or labels.shape != (images.shape[0],):
            raise SparseNetError(f"{directory}: {images_name} / {labels_name} do not match")
        splits[split] = Split(torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels.astype(np.int64)))
        origins[split] = [f"{images_name}[{i}]" for i in range(len(images))]
        digests[split] = [digest(image.tobytes()) for image in images]
    return Dataset(splits["train"], splits["test"], list(FASHION_MNIST_CLASSES), origins=origins, digests=digests)


def resize_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 N×C×H×W to N×C×S×S (each image on its own: the
    result does not depend on how many are resized at once)."""
    if images.shape[-1] == image_size and images.shape[-2] == image_size:
        return images
    resized = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear", antialias=True,
                            align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def fashion_mnist_source(directory: str | Path, image_size: int, chunk: int | None = None) -> Source:
    """Fashion-MNIST resized to S×S a chunk at a time (one gray channel)."""
    dataset = load_fashion_mnist(directory)
    step = chunk or MAX_CHUNK_IMAGES  # the resize's batch; each image is resized on its own

    def chunks(name: str) -> Iterator[Chunk]:
        split: Split = getattr(dataset, name)
        for start in range(0, len(split), step):
            part = slice(start, start + step)
            yield Chunk(resize_images(split.images[part], image_size).numpy(), split.labels[part].numpy(),
                        dataset.origins[name][part], dataset.digests[name][part])

    return Source(dataset.classes, 1, image_size, {"train": len(dataset.train), "test": len(dataset.test)}, chunks)


# --------------------------------------------------------------------------- synthetic

def synthetic_source(train_size: int, test_size: int, classes: int, image_size: int, seed: int,
                     chunk: int | None = None) -> Source:
    """A learnable, deterministic RGB dataset: each class is a coloured bar at its own angle.

    The random stream is the same for any chunk size (the labels, angles and shifts of a split
    are drawn first, then the noise image by image in order); train is drawn before test, so
    the splits must be read in that order.
    """
    gen = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:image_size, 0:image_size] / (image_size - 1) - 0.5
    palette = gen.uniform(0.3, 1.0, size=(classes, 3))
    step = chunk or max(1, 2**22 // (3 * image_size * image_size))  # ~100 MB of float64 work at a time
    sizes = {"train": train_size, "test": test_size}

    def chunks(name: str) -> Iterator[Chunk]:
        n = sizes[name]
        labels = np.arange(n) % classes
        gen.shuffle(labels)
        angles = labels * np.pi / classes + gen.normal(0, 0.08, n)
        shifts = gen.normal(0, 0.08, n)
        for start in range(0, n, step):
            part = slice(start, start + step)
            dist = np.abs(np.cos(angles[part])[:, None, None] * xs + np.sin(angles[part])[:, None, None] * ys
                          - shifts[part, None, None])
            bar = (dist < 0.08).astype(np.float32)
            noise = gen.normal(0, 0.1, (len(labels[part]), 3, image_size, image_size))
            img = bar[:, None] * palette[labels[part]][:, :, None, None] + noise
            images = np.clip(img * 255, 0, 255).astype(np.uint8)
            yield Chunk(images, labels[part].astype(np.int64), [f"{name}[{i}]" for i in range(start, start + len(images))],
                        [digest(image.tobytes()) for image in images])

    return Source([f"class_{i}" for i in range(classes)], 3, image_size, dict(sizes), chunks)


def make_synthetic(train_size: int, test_size: int, classes: int, image_size: int, seed: int) -> Dataset:
    """:func:`synthetic_source` held in memory."""
    return collect(synthetic_source(train_size, test_size, classes, image_size, seed))


# --------------------------------------------------------------------------- folders

def _class_dirs(root: Path, key: str) -> list[Path]:
    if not root.is_dir():
        raise SparseNetError(f"{key} = '{root}': folder not found; expected {root}/<class>/<image files>")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise SparseNetError(f"{key} = '{root}': no class folders inside; expected {root}/<class>/<image files>")
    return dirs


def _skip_reason(path: Path, class_dir: Path, root: Path) -> str | None:
    """Why a file in a class folder is not read at all (None: try to decode it)."""
    if any(part.startswith(".") for part in path.relative_to(class_dir).parts):
        return "hidden file"
    target = path.resolve()
    if root.resolve() not in target.parents:  # a symlink (of the file or a folder) leading out
        return f"links to {target}, outside {root}"
    if not path.exists():
        return "broken symlink"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    return None


def _list_split(root: Path, key: str, classes: list[str],
                skipped: list[dict[str, str]]) -> tuple[list[Path], list[tuple[str, int]]]:
    """(class folders, (file, label) of every file to try), skipping what is not to be read.

    One ``lstat`` per plain file: ``rglob`` descends real folders only, so below a class folder
    that is not a link a plain file is where its path says; links take the full checks.
    """
    files: list[tuple[str, int]] = []
    class_dirs = _class_dirs(root, key)
    root_real = root.resolve()
    for class_dir in class_dirs:
        label = classes.index(class_dir.name)
        direct = not class_dir.is_symlink() and root_real in class_dir.resolve().parents
        for path in sorted(class_dir.rglob("*")):
            info = path.lstat()
            if stat.S_ISDIR(info.st_mode):
                continue
            if direct and not stat.S_ISLNK(info.st_mode):
                hidden = any(part.startswith(".") for part in path.relative_to(class_dir).parts)
                reason = "hidden file" if hidden else "empty file (0 bytes)" if info.st_size == 0 else None
            else:
                reason = _skip_reason(path, class_dir, root)
                if reason is None and path.is_dir():
                    reason = "symlinked folder, not followed"
            if reason is None:
                files.append((str(path), label))
            else:
                skipped.append({"path": str(path), "reason": reason})
    return class_dirs, files


def check_separate_folders(train_dir: str | Path, test_dir: str | Path) -> None:
    """Train and test must be two folders, neither inside the other: anything else leaks test images."""
    train, test = Path(train_dir).resolve(), Path(test_dir).resolve()
    if train == test:
        raise SparseNetError(f"data.train_dir = '{train_dir}' and data.test_dir = '{test_dir}' are the same folder; "
                             "the test images must be kept apart from the training images")
    for key, inner, outer_key, outer in (("data.test_dir", test, "data.train_dir", train),
                                         ("data.train_dir", train, "data.test_dir", test)):
        if outer in inner.parents:
            raise SparseNetError(f"{key} = '{inner}' lies inside {outer_key} = '{outer}'; keep train and test in "
                                 "two separate folders (e.g. data/train and data/test)")


def decoding_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` processes started from a server that imported only the decoder (no torch);
    they ignore Ctrl-C (it reaches the whole process group; this process stops them)."""
    try:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["sparsenet.decode"])
    except ValueError:  # no forkserver on this platform
        context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=signal.signal,
                               initargs=(signal.SIGINT, signal.SIG_IGN))


def in_order(task: Callable, chunks: Iterable, workers: int, pool: ProcessPoolExecutor | None = None) -> Iterator:
    """``task(chunk)`` of every chunk, in the chunks' order: in this process (``workers`` 1) or
    in ``pool`` (default: a pool of ``workers`` of its own) with at most :data:`IN_FLIGHT`
    chunks per worker submitted, so memory stays bounded however far decoding runs ahead of
    writing.  A pool process that dies (the out-of-memory killer) stops this with one line
    instead of waiting for it forever."""
    if workers <= 1:
        yield from map(task, chunks)
        return
    own = pool is None
    pool = pool or decoding_pool(workers)
    window: deque = deque()
    try:
        for chunk in chunks:
            window.append(pool.submit(task, chunk))
            if len(window) >= IN_FLIGHT * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    except BrokenProcessPool:
        raise SparseNetError(f"a decoding process died (killed for lack of memory?); lower data.workers "
                             f"(now {workers}) or data.image_size") from None
    finally:
        for future in window:
            future.cancel()
        if own:
            pool.shutdown(cancel_futures=True)


def folder_source(train_dir: str | Path, test_dir: str | Path, image_size: int, workers: int = 1,
                  chunk: int | None = None) -> Source:
    """Image folders ``<dir>/<class>/<image>``; classes come from the train folder.

    Files are listed (and what is not to be read skipped) for both splits first; decoding runs
    as the writer reads the chunks.  Unreadable files are skipped and reported; a class folder
    without one readable image stops with one line.
    """
    train_dir, test_dir = Path(train_dir), Path(test_dir)
    check_separate_folders(train_dir, test_dir)
    classes = [p.name for p in _class_dirs(train_dir, "data.train_dir")]
    extra = [p.name for p in _class_dirs(test_dir, "data.test_dir") if p.name not in classes]
    if extra:
        raise SparseNetError(
            f"data.test_dir = '{test_dir}': class folder(s) {', '.join(extra)} not in data.train_dir "
            f"(train classes: {', '.join(classes)})"
        )
    skipped: list[dict[str, str]] = []
    # One pool for both splits, its processes started now, while the files are listed, and shut
    # down by the writer (Source.close) when it is done with the source.
    pool = decoding_pool(workers) if workers > 1 else None
    try:
        for _ in range(workers if pool else 0):
            pool.submit(int)
        listed = {"train": (train_dir, "data.train_dir", *_list_split(train_dir, "data.train_dir", classes, skipped)),
                  "test": (test_dir, "data.test_dir", *_list_split(test_dir, "data.test_dir", classes, skipped))}
    except BaseException:
        if pool:
            pool.shutdown(cancel_futures=True)
        raise
    step = chunk or chunk_images(3, image_size)

    def chunks(name: str) -> Iterator[Chunk]:
        root, key, class_dirs, files = listed[name]
        seen: set[int] = set()
        tasks = ([path for path, _ in files[start:start + step]] for start in range(0, len(files), step))
        try:
            for index, decoded in enumerate(in_order(partial(decode_files, image_size=image_size), tasks, workers,
                                                     pool)):
                start = index * step
                for position, reason in decoded.skipped:
                    skipped.append({"path": files[start + position][0], "reason": reason})
                kept = [files[start + p] for p in decoded.kept]
                labels = np.array([label for _, label in kept], dtype=np.int64)
                seen.update(labels.tolist())
                yield Chunk(decoded.images, labels, [path for path, _ in kept], decoded.digests, decoded.histogram)
        except MemoryError:
            raise SparseNetError(f"{key} = '{root}': out of memory while decoding images to {image_size}x{image_size}; "
                                 "lower data.image_size or data.workers") from None
        if not seen:
            raise SparseNetError(f"{key} = '{root}': no readable images (see the skipped files in the prepare report)")
        for class_dir in class_dirs:
            if classes.index(class_dir.name) not in seen:
                raise SparseNetError(f"{key} = '{root}': class folder '{class_dir.name}' has no readable images; "
                                     "add images or remove the folder")

    counts = {name: len(entry[3]) for name, entry in listed.items()}
    close = (lambda: pool.shutdown(cancel_futures=True)) if pool is not None else (lambda: None)
    return Source(classes, 3, image_size, counts, chunks, skipped, close)


def load_folder(train_dir: str | Path, test_dir: str | Path, image_size: int, workers: int = 1) -> Dataset:
    """:func:`folder_source` held in memory."""
    return collect(folder_source(train_dir, test_dir, image_size, workers))


def train_test_duplicates(dataset: Dataset, limit: int = 10) -> dict:
    """Test items whose source bytes also occur in train: their count and the first ``limit`` pairs."""
    duplicates = Duplicates(limit)
    if dataset.digests:
        duplicates.add_train(dataset.origins["train"], dataset.digests["train"])
        duplicates.add_test(dataset.origins["test"], dataset.digests["test"])
    return duplicates.report()
