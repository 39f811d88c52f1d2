import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsenet.data import (load_fashion_mnist, load_folder, load_prepared, make_synthetic, read_idx,
                            resize_images, save_prepared)
from sparsenet.errors import SparseNetError


def write_mixed_folder(root: Path) -> dict[str, list[Path]]:
    """Images in many formats, sizes and modes, plus bad files."""
    rng = np.random.default_rng(0)
    rgb = lambda h, w: rng.integers(0, 255, (h, w, 3), dtype=np.uint8)  # noqa: E731
    files = {"good": [], "bad": []}
    cat, dog = root / "cat", root / "dog"
    cat.mkdir(parents=True)
    dog.mkdir()

    def save(img: Image.Image, path: Path, **kwargs) -> None:
        img.save(path, **kwargs)
        files["good"].append(path)

    save(Image.fromarray(rgb(64, 64)), cat / "rgb.png")
    save(Image.fromarray(rgb(100, 37)), cat / "wide.jpg", quality=90)
    save(Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L"), cat / "gray.bmp")
    save(Image.fromarray(rng.integers(0, 255, (50, 50, 4), dtype=np.uint8), "RGBA"), cat / "alpha.png")
    save(Image.fromarray(rgb(30, 30)).convert("P", palette=Image.Palette.ADAPTIVE), dog / "palette.gif")
    save(Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)), dog / "deep16.png")
    save(Image.fromarray(rgb(20, 90)).convert("CMYK"), dog / "cmyk.jpg")
    save(Image.fromarray(rgb(70, 70)), dog / "photo.webp")
    corrupt = dog / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    notes = cat / "notes.txt"
    notes.write_text("not an image")
    files["bad"] += [corrupt, notes]
    return files


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_folder_source_converts_every_format_and_reports_bad_files(tmp_path):
    train = write_mixed_folder(tmp_path / "train")
    test = write_mixed_folder(tmp_path / "test")
    before = tree_digest(tmp_path)
    dataset = load_folder(tmp_path / "train", tmp_path / "test", image_size=64)
    assert dataset.classes == ["cat", "dog"]
    assert dataset.train.images.shape == (len(train["good"]), 3, 64, 64)
    assert dataset.train.images.dtype == torch.uint8
    assert dataset.test.images.shape == (len(test["good"]), 3, 64, 64)
    assert sorted(dataset.train.labels.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    skipped = {Path(item["path"]) for item in dataset.skipped}
    assert skipped == set(train["bad"] + test["bad"])
    assert all(item["reason"] for item in dataset.skipped)
    assert tree_digest(tmp_path) == before, "user images must only ever be read"


def test_test_class_missing_from_train_is_named(tmp_path):
    write_mixed_folder(tmp_path / "train")
    write_mixed_folder(tmp_path / "test")
    (tmp_path / "test" / "horse").mkdir()
    with pytest.raises(SparseNetError, match="horse.*not in data.train_dir"):
        load_folder(tmp_path / "train", tmp_path / "test", 64)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SparseNetError, match="data.train_dir = .*folder not found"):
        load_folder(tmp_path / "nope", tmp_path / "nope_either", 64)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reader_on_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    names = {"train": (30, "train"), "test": (10, "t10k")}
    for split, (count, prefix) in names.items():
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (count, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, count))
    dataset = load_fashion_mnist(tmp_path, download=False)
    assert dataset.train.images.shape == (30, 1, 28, 28)
    assert len(dataset.test) == 10 and dataset.classes[0] == "T-shirt/top"
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz").tolist() == dataset.test.labels.tolist()
    resized = resize_images(dataset.train.images, 64)
    assert resized.shape == (30, 1, 64, 64) and resized.dtype == torch.uint8


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(SparseNetError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, download=False)


def test_prepared_round_trip_and_gray_is_fed_as_three_channels(tmp_path):
    from sparsenet.data import BatchLoader

    dataset = make_synthetic(40, 10, 3, 32, seed=1)
    dataset.train.images = dataset.train.images[:, :1].contiguous()  # a gray source
    save_prepared(dataset, tmp_path, {"skipped": []})
    again, meta = load_prepared(tmp_path)
    assert torch.equal(again.train.images, dataset.train.images)
    assert meta["classes"] == dataset.classes and meta["channels"] == 1
    images, labels = next(iter(BatchLoader(again.train, 8, meta["mean"], meta["std"], torch.device("cpu"))))
    assert images.shape == (8, 3, 32, 32) and torch.equal(images[:, 0], images[:, 2])
    assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)
    expected = (dataset.train.images[:8].float() - meta["mean"] * 255) / (meta["std"] * 255)
    assert torch.allclose(images[:, :1], expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_batches_are_the_same_whether_normalised_up_front_or_per_batch(channels):
    from sparsenet.data import BatchLoader

    data = make_synthetic(50, 10, 3, 32, seed=2)
    split = data.train
    split.images = split.images[:, :channels].contiguous()
    once = BatchLoader(split, 16, 0.3, 0.2, torch.device("cpu"), shuffle=True, seed=5)
    per_batch = BatchLoader(split, 16, 0.3, 0.2, torch.device("cpu"), shuffle=True, seed=5,
                            normalise_once_max_bytes=0)
    assert once.normalised is not None and per_batch.normalised is None
    for _ in range(2):  # two epochs: the shuffles match too
        for (x, y), (u, v) in zip(once, per_batch, strict=True):
            assert torch.equal(x, u) and torch.equal(y, v)
            assert x.shape[1] == 3 and x.is_contiguous(memory_format=torch.channels_last)
            x.zero_()  # a batch is the caller's own: changing it leaves the loader's copy alone
    assert once.normalised.abs().sum() > 0


def test_synthetic_data_is_deterministic():
    a, b = make_synthetic(20, 5, 4, 32, seed=7), make_synthetic(20, 5, 4, 32, seed=7)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
