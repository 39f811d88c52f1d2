import gzip
import hashlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsenet.prepared import load_prepared, save_prepared
from sparsenet.sources import load_fashion_mnist, load_folder, make_synthetic, read_idx, resize_images
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
    for split in (dataset.train, dataset.test):  # a gray source
        split.images = split.images[:, :1].contiguous()
    save_prepared(dataset, tmp_path, {"skipped": []})
    again, meta = load_prepared(tmp_path)
    assert np.array_equal(again.train.images, dataset.train.images.numpy())
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


# --------------------------------------------------------------------------- train/test leakage

@pytest.mark.parametrize("test_dir", [".", "train", "train/cat"])
def test_identical_or_nested_train_and_test_folders_are_refused(tmp_path, test_dir):
    write_mixed_folder(tmp_path / "train")
    train = tmp_path / "train" if test_dir != "." else tmp_path / "train"
    test = tmp_path / "train" if test_dir == "." else tmp_path / test_dir
    if test_dir == "train":
        train = tmp_path / "train" / "cat"  # train inside test
    with pytest.raises(SparseNetError) as err:
        load_folder(train, test, 32)
    message = str(err.value)
    assert "\n" not in message and "data.train_dir" in message and "data.test_dir" in message
    assert "same folder" in message or "lies inside" in message


def test_images_in_both_train_and_test_are_counted_and_listed(tmp_path):
    from sparsenet.sources import train_test_duplicates

    write_mixed_folder(tmp_path / "train")
    write_mixed_folder(tmp_path / "test")  # the same generator: byte-identical files in both
    (tmp_path / "test" / "cat" / "rgb.png").write_bytes(b"")  # now empty: skipped, not a duplicate
    dataset = load_folder(tmp_path / "train", tmp_path / "test", 32)
    duplicates = train_test_duplicates(dataset, limit=3)
    assert duplicates["count"] == len(dataset.test) == 7
    assert len(duplicates["first"]) == 3
    first = duplicates["first"][0]
    assert Path(first["test"]).relative_to(tmp_path / "test") == Path(first["train"]).relative_to(tmp_path / "train")


def test_synthetic_and_idx_sources_are_checked_for_duplicates_too(tmp_path):
    from sparsenet.sources import train_test_duplicates

    data = make_synthetic(30, 10, 3, 16, seed=0)
    assert train_test_duplicates(data) == {"count": 0, "first": []}
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    images[2, 0, 0] = 9
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(5))
    duplicates = train_test_duplicates(load_fashion_mnist(tmp_path, download=False))
    assert duplicates["count"] == 5  # four blank images match the first blank one; one marked image
    assert {"test": "t10k-images-idx3-ubyte.gz[2]", "train": "train-images-idx3-ubyte.gz[2]"} in duplicates["first"]


# --------------------------------------------------------------------------- memory and statistics

def test_arrays_that_cannot_fit_in_memory_are_refused_before_allocating():
    from sparsenet.memory import available_memory

    assert available_memory() and available_memory() > 0
    with pytest.raises(SparseNetError) as err:  # 2M images of 3x512x512: 1.5 TiB
        make_synthetic(1_000_000, 1_000_000, 4, 512, seed=0)
    message = str(err.value)
    assert "data.image_size = 512" in message and "1,464.8 GiB" in message and "memory available" in message


@contextmanager
def memory_limit(headroom: int = 64 * 2**20):
    """Lower this process's soft data limit to what it uses now plus ``headroom`` bytes."""
    import resource

    import psutil

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    used = psutil.Process().memory_info().data
    resource.setrlimit(resource.RLIMIT_DATA, (used + headroom, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


@pytest.fixture
def little_memory():
    with memory_limit():
        yield


def test_the_training_split_is_normalised_per_batch_when_a_float_copy_would_not_fit():
    from sparsenet.data import BatchLoader, Split

    images = torch.randint(0, 256, (640, 1, 128, 128), dtype=torch.uint8)  # 10 MiB; as floats 40 MiB
    split = Split(images, torch.zeros(640, dtype=torch.int64))
    assert BatchLoader(split, 64, 0.3, 0.2, torch.device("cpu")).normalised is not None
    with memory_limit(64 * 2**20):  # 40 MiB would be more than half of what is left
        loader = BatchLoader(split, 64, 0.3, 0.2, torch.device("cpu"))
        assert loader.normalised is None
        batch, _ = next(iter(loader))
    assert batch.shape == (64, 3, 128, 128)


def test_a_folder_too_large_for_memory_is_not_collected_in_memory(tmp_path, little_memory):
    for split in ("train", "test"):  # 100 files at 512x512x3: 75 MiB of arrays
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(25):
                (tmp_path / split / name / f"{i}.png").write_bytes(b"\x89PNG not decoded")
    with pytest.raises(SparseNetError) as err:
        load_folder(tmp_path / "train", tmp_path / "test", 512)
    assert "data.image_size = 512: the prepared arrays would take 0.1 GiB (100 images of 3x512x512)" in str(err.value)


def test_pixel_statistics_are_exact():
    from sparsenet.prepared import pixel_statistics

    images = torch.tensor([0, 255, 255, 0, 51, 204], dtype=torch.uint8).reshape(3, 1, 1, 2)
    mean, std = pixel_statistics(images)
    assert mean == 0.5
    # by hand: values/255 = 0, 1, 1, 0, 0.2, 0.8; deviations ±0.5, ±0.5, ±0.3; sum of squares
    # 4 * 0.25 + 2 * 0.09 = 1.18; unbiased variance 1.18 / 5 = 0.236
    assert std == pytest.approx(0.236 ** 0.5, abs=1e-15)


STATISTICS_MEMORY = """
import resource, torch
from sparsenet.prepared import pixel_statistics
images = torch.randint(0, 256, (200, 3, 512, 512), dtype=torch.uint8)  # 150 MiB
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pixel_statistics(images)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_pixel_statistics_need_no_copy_of_the_split():
    """A float copy would add 600 MiB here, an int64 one 1.2 GiB: the statistics add (almost) nothing."""
    import subprocess
    import sys

    grown = subprocess.run([sys.executable, "-c", STATISTICS_MEMORY], capture_output=True, text=True, check=True)
    assert int(grown.stdout) < 32, f"peak memory grew by {grown.stdout.strip()} MiB"


def test_prepared_folder_is_replaced_whole_or_not_at_all(tmp_path):
    out = tmp_path / "prepared"
    old = make_synthetic(20, 10, 3, 16, seed=1)
    save_prepared(old, out, {"skipped": []})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    new = make_synthetic(40, 10, 3, 16, seed=2)
    with pytest.raises(TypeError):  # fails after the arrays are written: the report is not JSON
        save_prepared(new, out, {"skipped": [], "bad": object()})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"], "no side folder left behind"
    save_prepared(new, out, {"skipped": []})
    again, _ = load_prepared(out)
    assert np.array_equal(again.train.images, new.train.images.numpy())


@pytest.mark.parametrize("damage,words", [
    (lambda d: (d / "test_labels.npy").unlink(), "test_labels.npy: not found"),
    (lambda d: (d / "train_images.npy").write_bytes(b"\x93NUMPY garbage"), "train_images.npy: not a readable"),
    (lambda d: (d / "meta.json").write_text("{}"), "meta.json: lacks classes, image_size, mean, std"),
    (lambda d: (d / "meta.json").write_text("{"), "meta.json: not valid JSON"),
    (lambda d: np.save(d / "test_labels.npy", np.zeros(3, dtype=np.int64)), "do not fit together"),
])
def test_damaged_prepared_data_is_one_clear_error(tmp_path, damage, words):
    save_prepared(make_synthetic(20, 10, 3, 16, seed=1), tmp_path, {"skipped": []})
    damage(tmp_path)
    with pytest.raises(SparseNetError) as err:
        load_prepared(tmp_path)
    assert words in str(err.value) and "\n" not in str(err.value)
