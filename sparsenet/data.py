"""Data sources → prepared uint8 arrays on disk → normalised batches in memory.

Sources:
- ``fashion-mnist``: the original IDX files (Debian ``dataset-fashion-mnist``), fetched with
  torchvision only when they are missing and the network is there;
- ``folder``: ``<dir>/<class>/<image>`` trees of any common format, size and mode;
- ``synthetic``: a small deterministic generated dataset, for tests.

Every source ends as ``images`` (uint8, N×C×S×S with C = 1 for gray sources, 3 otherwise) and
``labels`` (int64).  Gray images stay one channel on disk and are broadcast to the model's three
input channels per batch, which keeps the prepared data 3× smaller at no training cost.
User folders are only ever read.  Each item also keeps a digest of its source bytes (the file, or
the raw image), so images present in both train and test are found and reported.
"""

from __future__ import annotations

import gzip
import hashlib
import io
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
from sparsenet.io import atomic_dir, read_json, write_json

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
DUPLICATE_EXAMPLES = 10  # pairs listed in the prepare report


def available_memory() -> int | None:
    """Bytes this process can still allocate (None if unknown): the least of the machine's free
    memory, the process's data and address-space limits (``ulimit``) and its cgroup's limit."""
    meminfo = _kib_fields("/proc/meminfo")
    status = _kib_fields("/proc/self/status")
    candidates = []
    if "MemAvailable" in meminfo:
        candidates.append(meminfo["MemAvailable"])
    try:
        import resource

        for limit, used in ((resource.RLIMIT_DATA, "VmData"), (resource.RLIMIT_AS, "VmSize")):
            soft = resource.getrlimit(limit)[0]
            if soft != resource.RLIM_INFINITY and used in status:
                candidates.append(max(soft - status[used], 0))
    except (ImportError, OSError, ValueError):
        pass
    candidates.extend(_cgroup_room())
    return min(candidates) if candidates else None


def _kib_fields(path: str) -> dict[str, int]:
    """``Name: <n> kB`` lines of a /proc file, in bytes."""
    fields_ = {}
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
                    fields_[name] = int(parts[0]) * 1024
    except OSError:
        pass
    return fields_


def _cgroup_room() -> list[int]:
    """Memory left under this process's cgroup (v2) limit, if it has one."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as fh:
            path = next((line.strip()[3:] for line in fh if line.startswith("0::")), None)
        if path is None:
            return []
        folder = Path("/sys/fs/cgroup") / path.lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return []
        return [max(int(limit) - int((folder / "memory.current").read_text()), 0)]
    except (OSError, ValueError):
        return []


def check_memory(images: int, channels: int, image_size: int) -> None:
    """Stop with one line before allocating ``images`` uint8 arrays of C×S×S that cannot fit in memory."""
    needed = images * channels * image_size * image_size
    available = available_memory()
    if available is not None and needed > available:
        raise SparseNetError(
            f"data.image_size = {image_size}: the prepared arrays would take {needed / 2**30:,.1f} GiB "
            f"({images:,} images of {channels}x{image_size}x{image_size}), more than the "
            f"{available / 2**30:,.1f} GiB of memory available; lower data.image_size or use fewer images")


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _indexed_items(name: str, images: np.ndarray) -> tuple[list[str], list[bytes]]:
    """Origins ``<name>[i]`` and digests of the raw images of an array source (IDX, generated)."""
    return [f"{name}[{i}]" for i in range(len(images))], [_digest(image.tobytes()) for image in images]


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
    # Per split: where each item came from (a path, or ``train[i]``) and a digest of its bytes.
    origins: dict[str, list[str]] = field(default_factory=dict)
    digests: dict[str, list[bytes]] = field(default_factory=dict)

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
    splits, origins, digests = {}, {}, {}
    for split, (images_name, labels_name) in FASHION_MNIST_FILES.items():
        images = read_idx(directory / images_name)
        labels = read_idx(directory / labels_name)
        if images.ndim != 3 or labels.shape != (images.shape[0],):
            raise SparseNetError(f"{directory}: {images_name} / {labels_name} do not match")
        splits[split] = Split(torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels.astype(np.int64)))
        origins[split], digests[split] = _indexed_items(images_name, images)
    return Dataset(splits["train"], splits["test"], list(FASHION_MNIST_CLASSES), origins=origins, digests=digests)


def make_synthetic(train_size: int, test_size: int, classes: int, image_size: int, seed: int) -> Dataset:
    """A learnable, deterministic RGB dataset: each class is a coloured bar at its own angle."""
    gen = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:image_size, 0:image_size] / (image_size - 1) - 0.5
    palette = gen.uniform(0.3, 1.0, size=(classes, 3))

    check_memory(train_size + test_size, 3, image_size)
    chunk = max(1, 2**22 // (3 * image_size * image_size))  # ~100 MB of float64 work at a time

    def draw(n: int) -> Split:
        labels = np.arange(n) % classes
        gen.shuffle(labels)
        angles = labels * np.pi / classes + gen.normal(0, 0.08, n)
        shifts = gen.normal(0, 0.08, n)
        images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
        for start in range(0, n, chunk):  # the same random stream as one draw of all n
            part = slice(start, start + chunk)
            dist = np.abs(np.cos(angles[part])[:, None, None] * xs + np.sin(angles[part])[:, None, None] * ys
                          - shifts[part, None, None])
            bar = (dist < 0.08).astype(np.float32)
            noise = gen.normal(0, 0.1, (len(labels[part]), 3, image_size, image_size))
            img = bar[:, None] * palette[labels[part]][:, :, None, None] + noise
            images[part] = np.clip(img * 255, 0, 255).astype(np.uint8)
        return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))

    splits = {"train": draw(train_size), "test": draw(test_size)}
    items = {name: _indexed_items(name, split.images.numpy()) for name, split in splits.items()}
    return Dataset(splits["train"], splits["test"], [f"class_{i}" for i in range(classes)],
                   origins={name: origins for name, (origins, _) in items.items()},
                   digests={name: digests for name, (_, digests) in items.items()})


def full_scale(img: Image.Image) -> float | None:
    """The value that means white for a deep (16-bit, 32-bit or float) image; None for 8-bit modes.

    ``I;16*``: 65535.  ``F`` (float): 1.0, i.e. floats are taken as 0..1.  ``I`` (32-bit integer)
    is what 16-bit PGM and 32-bit TIFF both open as, so the file's own declaration decides: a
    PGM's maxval, a TIFF's bits per sample (and sign); otherwise 16-bit.  The scale is the type's
    range, never the image's own maximum, so a mid-grey image stays mid-grey.
    """
    if img.mode == "F":
        return 1.0
    if img.mode.startswith("I;16"):
        return 65535.0
    if img.mode != "I":
        return None
    maxval = getattr(img, "_maxval", None)  # PGM / PPM header
    if isinstance(maxval, int) and maxval > 0:
        return float(maxval)
    tags = getattr(img, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # TIFF BitsPerSample
    if bits:
        depth = int(bits[0] if isinstance(bits, (tuple, list)) else bits)
        signed = tags.get(339) in (2, (2,))  # TIFF SampleFormat: 2 = signed integer
        return float(2 ** (depth - 1) - 1 if signed else 2 ** depth - 1)
    return 65535.0


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB by the type's full scale; transparency is composited onto black."""
    scale = full_scale(img)  # before exif_transpose, which returns a copy without the file's tags
    img = ImageOps.exif_transpose(img)
    if scale is not None:
        arr = np.asarray(img, dtype=np.float64)
        scaled = np.nan_to_num(arr / scale * 255.0, nan=0.0)
        img = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" or img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def decode_image(data: bytes, image_size: int) -> np.ndarray:
    """Decode an image file's bytes to uint8 3×S×S (stretched to a square); raises on bad data."""
    with Image.open(io.BytesIO(data)) as img:
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


def _list_split(root: Path, key: str, classes: list[str],
                skipped: list[dict[str, str]]) -> tuple[list[Path], list[tuple[Path, int]]]:
    """(class folders, (file, label) of every file to try), skipping what is not to be read."""
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
    return class_dirs, files


def _read_split(root: Path, key: str, classes: list[str], class_dirs: list[Path], files: list[tuple[Path, int]],
                image_size: int, skipped: list[dict[str, str]]) -> tuple[Split, list[str], list[bytes]]:
    """Decode ``files`` into one preallocated array; unreadable files are skipped and reported."""
    images = np.empty((len(files), 3, image_size, image_size), dtype=np.uint8)
    labels, origins, digests = [], [], []
    for path, label in tqdm(files, desc=f"prepare {root.name}", unit="img", disable=None):
        try:
            data = path.read_bytes()
            images[len(labels)] = decode_image(data, image_size)
        except MemoryError:
            raise SparseNetError(f"{path}: out of memory while decoding it to {image_size}x{image_size}; "
                                 "lower data.image_size") from None
        except Exception as exc:  # PIL raises many types for bad files; each is reported, none fatal
            skipped.append({"path": str(path), "reason": f"{type(exc).__name__}: {exc}"})
            continue
        labels.append(label)
        origins.append(str(path))
        digests.append(_digest(data))
    if not labels:
        raise SparseNetError(f"{key} = '{root}': no readable images (see the skipped files in the prepare report)")
    for class_dir in class_dirs:
        if classes.index(class_dir.name) not in labels:
            raise SparseNetError(f"{key} = '{root}': class folder '{class_dir.name}' has no readable images; "
                                 "add images or remove the folder")
    split = Split(torch.from_numpy(images[:len(labels)]), torch.tensor(labels, dtype=torch.int64))
    return split, origins, digests


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


def load_folder(train_dir: str | Path, test_dir: str | Path, image_size: int) -> Dataset:
    """Image folders ``<dir>/<class>/<image>``; classes come from the train folder."""
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
    train_dirs, train_files = _list_split(train_dir, "data.train_dir", classes, skipped)
    test_dirs, test_files = _list_split(test_dir, "data.test_dir", classes, skipped)
    check_memory(len(train_files) + len(test_files), 3, image_size)
    train, train_origins, train_digests = _read_split(train_dir, "data.train_dir", classes, train_dirs, train_files,
                                                      image_size, skipped)
    test, test_origins, test_digests = _read_split(test_dir, "data.test_dir", classes, test_dirs, test_files,
                                                   image_size, skipped)
    return Dataset(train, test, classes, skipped, origins={"train": train_origins, "test": test_origins},
                   digests={"train": train_digests, "test": test_digests})


def train_test_duplicates(dataset: Dataset, limit: int = DUPLICATE_EXAMPLES) -> dict:
    """Test items whose source bytes also occur in train: their count and the first ``limit`` pairs."""
    if not dataset.digests:
        return {"count": 0, "first": []}
    train = {}
    for origin, digest in zip(dataset.origins["train"], dataset.digests["train"]):
        train.setdefault(digest, origin)
    pairs = [{"test": origin, "train": train[digest]}
             for origin, digest in zip(dataset.origins["test"], dataset.digests["test"]) if digest in train]
    return {"count": len(pairs), "first": pairs[:limit]}


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
        check_memory(len(dataset.train) + len(dataset.test), 1, cfg.image_size)
        dataset.train.images = resize_images(dataset.train.images, cfg.image_size)
        dataset.test.images = resize_images(dataset.test.images, cfg.image_size)
        return dataset
    if cfg.source == "folder":
        return load_folder(cfg.train_dir, cfg.test_dir, cfg.image_size)
    syn = cfg.synthetic
    return make_synthetic(syn.train_size, syn.test_size, syn.classes, cfg.image_size, seed)


# --------------------------------------------------------------------------- prepared form

def pixel_statistics(images: torch.Tensor) -> tuple[float, float]:
    """Mean and (unbiased) standard deviation of uint8 images' values, scaled to [0, 1].

    From a histogram of the 256 possible values: exact (integer sums, one rounding at the end)
    and without any copy of the split (a float copy of 60,000 64×64 images is 1 GB).
    """
    counts = torch.bincount(images.reshape(-1), minlength=256).tolist()
    count = sum(counts)
    total = sum(value * n for value, n in enumerate(counts))
    squares = sum(value * value * n for value, n in enumerate(counts))
    variance = (squares * count - total * total) / (count * max(count - 1, 1))
    return total / count / 255.0, variance ** 0.5 / 255.0


def save_prepared(dataset: Dataset, out_dir: str | Path, report: dict) -> None:
    """Write ``<split>_images.npy`` / ``<split>_labels.npy``, ``meta.json`` and ``report.json``.

    The folder is written whole to a side folder and swapped in: a kill leaves the old prepared
    data or the new, never a mix of the two.
    """
    mean, std = pixel_statistics(dataset.train.images)
    with atomic_dir(out_dir) as partial:
        for name in SPLITS:
            split: Split = getattr(dataset, name)
            for kind, tensor in (("images", split.images), ("labels", split.labels)):
                with open(partial / f"{name}_{kind}.npy", "wb") as fh:
                    np.save(fh, tensor.numpy())
        write_json(partial / "meta.json", {
            "classes": dataset.classes, "image_size": dataset.image_size,
            "channels": int(dataset.train.images.shape[1]), "mean": mean, "std": max(std, 1e-6),
            "train_size": len(dataset.train), "test_size": len(dataset.test),
        })
        write_json(partial / "report.json", report)


PREPARED_META_KEYS = ("classes", "image_size", "mean", "std")
_PREPARE_AGAIN = "re-run the prepare stage (dvc repro)"


def load_prepared(prepared_dir: str | Path) -> tuple[Dataset, dict]:
    """Read what :func:`save_prepared` wrote; returns the dataset and its meta.

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
    """One prepared split (``train`` or ``test``) without reading the other."""
    arrays = []
    for kind in ("images", "labels"):
        path = Path(prepared_dir) / f"{name}_{kind}.npy"
        try:
            arrays.append(np.load(path))
        except FileNotFoundError:
            raise SparseNetError(f"{path}: not found; {_PREPARE_AGAIN}") from None
        except (ValueError, OSError, EOFError) as exc:
            raise SparseNetError(f"{path}: not a readable NumPy array ({exc}); {_PREPARE_AGAIN}") from None
    images, labels = arrays
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (len(images),):
        raise SparseNetError(f"{prepared_dir}: {name} images {images.dtype} {images.shape} and labels "
                             f"{labels.shape} do not fit together; {_PREPARE_AGAIN}")
    return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64, copy=False)))


# --------------------------------------------------------------------------- batches

# On CPU the split is normalised once, up front, when its float copy stays below this size (and
# below half the memory available): the three per-batch passes it saves (to float, minus mean,
# over std) cost ~5% of a training step.
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
        # On a GPU normalising is nearly free and copying uint8 moves 4x fewer bytes.  On CPU the
        # float copy must also leave room: at most half of the memory still available.
        available = available_memory()
        limit = normalise_once_max_bytes if available is None else min(normalise_once_max_bytes, available // 2)
        small = split.images.numel() * 4 <= limit
        self.normalised = self.normalise(split.images.contiguous()) if device.type == "cpu" and small else None

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
                images = self.normalise(self.split.images[index].to(self.device, non_blocking=True))
            yield to_model_layout(images), self.split.labels[index].to(self.device, non_blocking=True)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images → float ``(x − mean) / std``, still N×C×S×S as stored."""
        return images.float().sub_(self.mean).div_(self.std)


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
