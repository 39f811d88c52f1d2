"""Data sources → prepared uint8 arrays on disk → normalised batches in memory.

Sources:
- ``fashion-mnist``: the original IDX files (Debian ``dataset-fashion-mnist``), fetched with
  torchvision only when they are missing and the network is there;
- ``folder``: ``<dir>/<class>/<image>`` trees of any common format, size and mode;
- ``synthetic``: a small deterministic generated dataset, for tests.

Every source ends as ``images`` (uint8, N×C×S×S with C = 1 for gray sources, 3 otherwise) and
``labels`` (int64).  Gray images stay one channel on disk and are broadcast to the model's three
input channels per batch, which keeps the prepared data 3× smaller at no training cost.
User folders are only ever read.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from tqdm import tqdm

from sparsenet.config import DataConfig
from sparsenet.errors import SparseNetError
from sparsenet.io import atomic_path, read_json, write_json

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MODEL_CHANNELS = 3
SPLITS = ("train", "test")


@dataclass
class Split:
    """One split of prepared data: uint8 images N×C×S×S and int64 labels N."""

    images: torch.Tensor
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

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])


# --------------------------------------------------------------------------- sources


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


def _fetch_fashion_mnist(directory: Path) -> Path | None:
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
    """Fashion-MNIST from its four IDX files (28×28 gray, 10 classes)."""
    directory = Path(directory)
    needed = [directory / name for pair in FASHION_MNIST_FILES.values() for name in pair]
    if not all(p.is_file() for p in needed):
        fetched = _fetch_fashion_mnist(directory) if download else None
        if fetched is None:
            missing = ", ".join(p.name for p in needed if not p.is_file())
            raise SparseNetError(
                f"data.fashion_mnist_dir = '{directory}': Fashion-MNIST files missing ({missing}) and "
                "they could not be downloaded; install them with "
                "`sudo apt-get install dataset-fashion-mnist` or set data.source to folder/synthetic"
            )
        directory = fetched
    splits = {}
    for split, (images_name, labels_name) in FASHION_MNIST_FILES.items():
        images = read_idx(directory / images_name)
        labels = read_idx(directory / labels_name)
        if images.ndim != 3 or labels.shape != (images.shape[0],):
            raise SparseNetError(f"{directory}: {images_name} / {labels_name} do not match")
        splits[split] = Split(torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels.astype(np.int64)))
    return Dataset(splits["train"], splits["test"], list(FASHION_MNIST_CLASSES))


def make_synthetic(train_size: int, test_size: int, classes: int, image_size: int, seed: int) -> Dataset:
    """A learnable, deterministic RGB dataset: each class is a coloured bar at its own angle."""
    gen = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:image_size, 0:image_size] / (image_size - 1) - 0.5
    palette = gen.uniform(0.3, 1.0, size=(classes, 3))

    def draw(n: int) -> Split:
        labels = np.arange(n) % classes
        gen.shuffle(labels)
        angles = labels * np.pi / classes + gen.normal(0, 0.08, n)
        shifts = gen.normal(0, 0.08, n)
        dist = np.abs(np.cos(angles)[:, None, None] * xs + np.sin(angles)[:, None, None] * ys - shifts[:, None, None])
        bar = (dist < 0.08).astype(np.float32)
        img = bar[:, None] * palette[labels][:, :, None, None] + gen.normal(0, 0.1, (n, 3, image_size, image_size))
        images = np.clip(img * 255, 0, 255).astype(np.uint8)
        return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))

    return Dataset(draw(train_size), draw(test_size), [f"class_{i}" for i in range(classes)])


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB; transparency is composited onto black."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" or img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_image(path: Path, image_size: int) -> np.ndarray:
    """Decode one image file to uint8 3×S×S (stretched to a square); raises on bad files."""
    with Image.open(path) as img:
        img.load()
        rgb = _to_rgb(img).resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


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


def _read_split(root: Path, key: str, classes: list[str], image_size: int,
                skipped: list[dict[str, str]]) -> Split:
    files: list[tuple[Path, int]] = []
    class_dirs = _class_dirs(root, key)
    for class_dir in class_dirs:
        label = classes.index(class_dir.name)
        for path in sorted(class_dir.rglob("*")):
            if path.is_dir() and not path.is_symlink():
                continue
            reason = _skip_reason(path, class_dir, root)
            if reason is None and path.is_dir():
                reason = "symlinked folder, not followed"
            if reason is None:
                files.append((path, label))
            else:
                skipped.append({"path": str(path), "reason": reason})
    images, labels = [], []
    for path, label in tqdm(files, desc=f"prepare {root.name}", unit="img", disable=None):
        try:
            images.append(load_image(path, image_size))
            labels.append(label)
        except Exception as exc:  # PIL raises many types for bad files; each is reported, none fatal
            skipped.append({"path": str(path), "reason": f"{type(exc).__name__}: {exc}"})
    if not images:
        raise SparseNetError(f"{key} = '{root}': no readable images (see the skipped files in the prepare report)")
    for class_dir in class_dirs:
        if classes.index(class_dir.name) not in labels:
            raise SparseNetError(f"{key} = '{root}': class folder '{class_dir.name}' has no readable images; "
                                 "add images or remove the folder")
    return Split(torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64))


def load_folder(train_dir: str | Path, test_dir: str | Path, image_size: int) -> Dataset:
    """Image folders ``<dir>/<class>/<image>``; classes come from the train folder."""
    train_dir, test_dir = Path(train_dir), Path(test_dir)
    classes = [p.name for p in _class_dirs(train_dir, "data.train_dir")]
    extra = [p.name for p in _class_dirs(test_dir, "data.test_dir") if p.name not in classes]
    if extra:
        raise SparseNetError(
            f"data.test_dir = '{test_dir}': class folder(s) {', '.join(extra)} not in data.train_dir "
            f"(train classes: {', '.join(classes)})"
        )
    skipped: list[dict[str, str]] = []
    train = _read_split(train_dir, "data.train_dir", classes, image_size, skipped)
    test = _read_split(test_dir, "data.test_dir", classes, image_size, skipped)
    return Dataset(train, test, classes, skipped)


def resize_images(images: torch.Tensor, image_size: int, chunk: int = 2048) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 N×C×H×W to N×C×S×S, in chunks with a progress bar."""
    if images.shape[-1] == image_size and images.shape[-2] == image_size:
        return images
    out = torch.empty((images.shape[0], images.shape[1], image_size, image_size), dtype=torch.uint8)
    for start in tqdm(range(0, len(images), chunk), desc="resize", unit="chunk", disable=None):
        part = images[start:start + chunk].float()
        resized = F.interpolate(part, size=(image_size, image_size), mode="bilinear", antialias=True,
                                align_corners=False)
        out[start:start + chunk] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def load_source(cfg: DataConfig, seed: int) -> Dataset:
    """The configured source at ``cfg.image_size`` (Fashion-MNIST is resized here)."""
    if cfg.source == "fashion-mnist":
        dataset = load_fashion_mnist(cfg.fashion_mnist_dir)
        dataset.train.images = resize_images(dataset.train.images, cfg.image_size)
        dataset.test.images = resize_images(dataset.test.images, cfg.image_size)
        return dataset
    if cfg.source == "folder":
        return load_folder(cfg.train_dir, cfg.test_dir, cfg.image_size)
    syn = cfg.synthetic
    return make_synthetic(syn.train_size, syn.test_size, syn.classes, cfg.image_size, seed)


# --------------------------------------------------------------------------- prepared form

def save_prepared(dataset: Dataset, out_dir: str | Path, report: dict) -> None:
    """Write ``<split>_images.npy`` / ``<split>_labels.npy``, ``meta.json`` and ``report.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        split: Split = getattr(dataset, name)
        for kind, tensor in (("images", split.images), ("labels", split.labels)):
            with atomic_path(out_dir / f"{name}_{kind}.npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, tensor.numpy())
    mean = dataset.train.images.float().mean().item() / 255.0
    std = dataset.train.images.float().std().item() / 255.0
    write_json(out_dir / "meta.json", {
        "classes": dataset.classes, "image_size": dataset.image_size,
        "channels": int(dataset.train.images.shape[1]), "mean": mean, "std": max(std, 1e-6),
        "train_size": len(dataset.train), "test_size": len(dataset.test),
    })
    write_json(out_dir / "report.json", report)


def load_prepared(prepared_dir: str | Path) -> tuple[Dataset, dict]:
    """Read what :func:`save_prepared` wrote; returns the dataset and its meta."""
    prepared_dir = Path(prepared_dir)
    meta = read_json(prepared_dir / "meta.json")
    splits = {}
    for name in SPLITS:
        arrays = [np.load(prepared_dir / f"{name}_{kind}.npy") for kind in ("images", "labels")]
        splits[name] = Split(torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1]))
    return Dataset(splits["train"], splits["test"], meta["classes"]), meta


# --------------------------------------------------------------------------- batches

# On CPU the split is normalised once, up front, when its float copy stays below this size: the
# three per-batch passes it saves (to float, minus mean, over std) cost ~5% of a training step.
NORMALISE_ONCE_MAX_BYTES = 4 * 2**30


class BatchLoader:
    """Normalised float batches from uint8 tensors held in memory (no per-epoch decoding).

    Gray (1-channel) data is broadcast to 3 channels per batch; batches are channels-last,
    which is markedly faster for LeNet's convolutions on CPU.  The values are the same whether
    the split was normalised up front or per batch.
    """

    def __init__(self, split: Split, batch_size: int, mean: float, std: float,
                 device: torch.device, shuffle: bool = False, seed: int = 0,
                 normalise_once_max_bytes: int = NORMALISE_ONCE_MAX_BYTES) -> None:
        self.split, self.batch_size, self.device = split, batch_size, device
        self.mean, self.std = mean * 255.0, std * 255.0
        self.shuffle, self.generator = shuffle, torch.Generator().manual_seed(seed)
        # On a GPU normalising is nearly free and copying uint8 moves 4x fewer bytes.
        small = split.images.numel() * 4 <= normalise_once_max_bytes
        self.normalised = self.normalise(split.images.contiguous()) if device.type == "cpu" and small else None

    def __len__(self) -> int:
        return (len(self.split) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            index = slice(start, start + self.batch_size) if order is None else order[start:start + self.batch_size]
            if self.normalised is not None:
                images = self.normalised[index]
            else:
                images = self.normalise(self.split.images[index].to(self.device, non_blocking=True))
            yield to_model_layout(images), self.split.labels[index].to(self.device, non_blocking=True)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images → float ``(x − mean) / std``, still N×C×S×S as stored."""
        return images.float().sub_(self.mean).div_(self.std)


def to_model_layout(images: torch.Tensor) -> torch.Tensor:
    """N×C×S×S float → N×3×S×S channels-last (gray broadcast to the model's three channels)."""
    if images.shape[1] != MODEL_CHANNELS:
        images = images.expand(-1, MODEL_CHANNELS, -1, -1)
    return images.contiguous(memory_format=torch.channels_last)
