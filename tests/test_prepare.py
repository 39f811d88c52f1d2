"""``prepare`` beyond memory: parallel decoding, arrays written chunk by chunk, memory-mapped reads."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsenet.config import config_from_dict
from sparsenet.decode import MAX_DECODED_BYTES
from sparsenet.errors import SparseNetError
from stages.prepare import prepare
from sparsenet.stage import Paths
from tests.test_data import tree_digest, write_mixed_folder

REPO = Path(__file__).resolve().parents[1]


def folder_config(root: Path, image_size: int = 32, workers: int = 1, **data):
    return config_from_dict({"data": {"source": "folder", "train_dir": str(root / "train"),
                                      "test_dir": str(root / "test"), "image_size": image_size, "workers": workers,
                                      **data}})


def folder_bytes(prepared: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(prepared.iterdir())}


def test_the_prepared_bytes_are_the_same_for_any_workers_and_chunk_size(tmp_path):
    for split in ("train", "test"):
        write_mixed_folder(tmp_path / split)
        for i in range(12):  # more images than one chunk of 5
            Image.new("RGB", (40 + i, 30), (20 * i, 100, 7)).save(tmp_path / split / "dog" / f"{split}{i}.png")
    before = tree_digest(tmp_path)
    outputs = {}
    for workers, chunk in ((1, 5), (2, 5), (2, 64), (1, 64)):
        out = tmp_path / f"prepared-{workers}-{chunk}"
        report = prepare(folder_config(tmp_path, workers=workers), Paths(prepared=out), chunk=chunk)
        outputs[workers, chunk] = folder_bytes(out)
    first = outputs[1, 5]
    assert all(output == first for output in outputs.values())
    assert report["train_images"] == 8 + 12 and report["skipped_count"] == 4  # 2 bad files per split
    assert tree_digest(tmp_path / "train") == {k[len("train/"):]: v for k, v in before.items() if k.startswith("train/")}


# --------------------------------------------------------------------------- memory

def peak_anonymous_memory(images: int, out: Path) -> int:
    """Peak anonymous memory (RssAnon, process tree) that ``prepare`` of ``images`` synthetic
    images at 128 px added to the process that ran it."""
    from sparsenet.bench_data import run_prepare

    result = run_prepare({"source": "synthetic", "image_size": 128,
                          "synthetic": {"train_size": images, "test_size": 100, "classes": 4}}, out)
    return result["peak_anonymous_bytes"] - result["base_anonymous_bytes"]


def test_prepare_memory_does_not_grow_with_the_dataset(tmp_path):
    small = peak_anonymous_memory(1000, tmp_path / "small")   # 49 MB of arrays
    large = peak_anonymous_memory(4000, tmp_path / "large")   # 197 MB: held in memory, it would show
    assert np.load(tmp_path / "large" / "train_images.npy", mmap_mode="r").shape == (4000, 3, 128, 128)
    assert large < 1.2 * small + 8 * 2**20, f"peak anonymous memory {small / 2**20:.0f} → {large / 2**20:.0f} MiB"


def write_png_16bit(path: Path, width: int, height: int) -> None:
    """A 16-bit gray PNG of ``width`` × ``height``, mid-grey, written without holding its pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(1)
    row = b"\x00" + b"\x80\x00" * width  # filter byte, then big-endian 0x8000 per pixel
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


DECODE_PEAK = """
import resource, sys
from pathlib import Path
from sparsenet.decode import decode_image
data = Path(sys.argv[1]).read_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
image = decode_image(data, 64)
print(int(image.mean()), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
"""


@pytest.mark.parametrize("kind", ["16-bit", "float"])
def test_a_deep_image_of_many_megapixels_is_converted_without_whole_image_copies(tmp_path, kind):
    path = tmp_path / "deep.png"
    if kind == "16-bit":
        write_png_16bit(path, 6000, 5000)  # 30 M pixels: 57 MiB decoded, a float64 copy 229 MiB
        decoded = 6000 * 5000 * 2
    else:
        path = tmp_path / "deep.tif"
        Image.fromarray(np.full((3000, 2500), 0.5, dtype=np.float32), "F").save(path)  # 29 MiB, float64 57
        decoded = 3000 * 2500 * 4
    result = subprocess.run([sys.executable, "-c", DECODE_PEAK, str(path)], capture_output=True, text=True,
                            check=True, cwd=REPO)
    mean, grown = map(int, result.stdout.split())
    assert mean in (127, 128)  # mid-grey by the type's full scale
    assert grown < 1.6 * decoded, f"decoding took {grown / 2**20:.0f} MiB for a {decoded / 2**20:.0f} MiB image"


def test_a_folder_of_huge_images_is_prepared_with_them_skipped_and_the_limit_named(tmp_path):
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (20, 20), (9, 99, 199)).save(tmp_path / split / name / "small.png")
        write_png_16bit(tmp_path / split / "cat" / "huge.png", 12000, 12000)  # 275 MiB decoded
    report = prepare(folder_config(tmp_path), Paths(prepared=tmp_path / "prepared"))
    assert report["train_images"] == 2 and report["skipped_count"] == 2
    reasons = {item["path"]: item["reason"] for item in report["skipped"]}
    limit = f"over the per-image limit of {MAX_DECODED_BYTES // 2**20} MiB (sparsenet.decode.MAX_DECODED_BYTES)"
    assert reasons[str(tmp_path / "train" / "cat" / "huge.png")].endswith("12000x12000 I;16 needs 275 MiB decoded, "
                                                                           + limit)


# --------------------------------------------------------------------------- disk and kills

def test_not_enough_disk_is_one_line_and_nothing_is_written(tmp_path):
    out = tmp_path / "prepared"
    cfg = config_from_dict({"data": {"source": "synthetic", "image_size": 512,
                                     "synthetic": {"train_size": 1_000_000, "test_size": 1_000_000, "classes": 4}}})
    with pytest.raises(SparseNetError) as err:
        prepare(cfg, Paths(prepared=out))
    message = str(err.value)
    assert re.fullmatch(f"{re.escape(str(out))}: the prepared arrays need 1,464.9 GiB \\(2,000,000 images of "
                        "3x512x512\\), its file system has [0-9,.]+ GiB free; free some space or lower "
                        "data.image_size", message), message
    assert list(tmp_path.iterdir()) == []


KILLED = """
import sys
from pathlib import Path
from sparsenet.config import config_from_dict
from stages.prepare import prepare
from sparsenet.stage import Paths
cfg = config_from_dict({"data": {"source": "synthetic", "image_size": 256,
                                 "synthetic": {"train_size": 20000, "test_size": 10, "classes": 4}}})
prepare(cfg, Paths(prepared=Path(sys.argv[1])))
"""


def test_a_kill_mid_write_leaves_the_previous_prepared_data_and_the_next_run_no_stray_folder(tmp_path):
    out = tmp_path / "prepared"
    small = config_from_dict({"data": {"source": "synthetic", "image_size": 16,
                                       "synthetic": {"train_size": 30, "test_size": 10, "classes": 4}}})
    prepare(small, Paths(prepared=out))
    before = folder_bytes(out)
    writer = subprocess.Popen([sys.executable, "-c", KILLED, str(out)], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120

    def written() -> int:  # bytes the writer's own side folder holds so far
        return sum(os.stat(p).st_blocks * 512 for p in tmp_path.glob(".prepared.*.partial/train_images.npy"))

    while written() <= 50 * 2**20:  # 50 MB of 3.9 GB written
        assert writer.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert folder_bytes(out) == before
    prepare(small, Paths(prepared=out))
    assert folder_bytes(out) == before  # same params, same bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


# --------------------------------------------------------------------------- reading

def test_a_training_stage_streaming_from_the_map_gives_the_models_bytes_of_the_in_memory_path(tmp_path, monkeypatch):
    """The same dense model, byte for byte, whether the split is read into memory and
    normalised once or gathered batch by batch from the memory map."""
    import sparsenet.data
    from stages.train_dense import train_dense

    cfg = config_from_dict({"data": {"source": "synthetic", "image_size": 32,
                                     "synthetic": {"train_size": 300, "test_size": 60, "classes": 4}},
                            "train": {"epochs": 1, "batch_size": 32}})
    models = {}
    monkeypatch.chdir(tmp_path)
    original = sparsenet.data.BatchLoader.__init__
    for path, limit in (("in-memory", sparsenet.data.NORMALISE_ONCE_MAX_BYTES), ("streamed", 0)):
        paths = Paths(prepared=tmp_path / "prepared", dense_model=tmp_path / f"{path}.pt",
                      dense_history=tmp_path / f"{path}-history.pt", dense_log=tmp_path / f"log-{path}")
        if not paths.prepared.exists():
            prepare(cfg, paths)
        loaders = []

        def spy(self, *args, limit=limit, loaders=loaders, **kwargs):
            original(self, *args, **kwargs, normalise_once_max_bytes=limit)
            loaders.append(self)

        monkeypatch.setattr(sparsenet.data.BatchLoader, "__init__", spy)
        train_dense(cfg, paths)
        monkeypatch.setattr(sparsenet.data.BatchLoader, "__init__", original)
        assert loaders and all((loader.normalised is None) == (path == "streamed") for loader in loaders)
        assert isinstance(loaders[0].split.images, np.memmap)
        models[path] = paths.dense_model.read_bytes()
    assert models["in-memory"] == models["streamed"]


def test_a_memory_mapped_split_is_read_only_and_batches_are_copies(tmp_path):
    from sparsenet.data import BatchLoader
    from sparsenet.prepared import load_split

    cfg = config_from_dict({"data": {"source": "synthetic", "image_size": 16,
                                     "synthetic": {"train_size": 40, "test_size": 10, "classes": 4}}})
    prepare(cfg, Paths(prepared=tmp_path))
    split = load_split(tmp_path, "train")
    assert isinstance(split.images, np.memmap) and not split.images.flags.writeable
    meta = json.loads((tmp_path / "meta.json").read_text())
    streamed = BatchLoader(split, 8, meta["mean"], meta["std"], torch.device("cpu"), shuffle=True,
                           normalise_once_max_bytes=0)
    held = BatchLoader(split, 8, meta["mean"], meta["std"], torch.device("cpu"), shuffle=True)
    assert streamed.normalised is None and held.normalised is not None
    batches = list(zip(streamed, held))
    assert len(batches) == 5
    for (a, la), (b, lb) in batches:
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_a_decoding_process_that_dies_stops_prepare_in_one_line():
    """A pool process killed mid-chunk (as the out-of-memory killer would) is an error, not a wait forever."""
    from sparsenet.sources import in_order

    with pytest.raises(SparseNetError, match=r"a decoding process died \(killed for lack of memory\?\); lower "
                                             r"data.workers \(now 2\) or data.image_size"):
        list(in_order(os._exit, [3, 3, 3, 3, 3], 2))  # each task ends its process at once


SKIP_PEAK = """
import resource, sys
from sparsenet.decode import decode_files
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
decoded = decode_files([sys.argv[1]], 64)
print(len(decoded.skipped), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
"""


def test_an_image_over_the_limit_is_skipped_before_its_pixels_are_decoded(tmp_path):
    path = tmp_path / "huge.png"
    write_png_16bit(path, 12000, 12000)  # 275 MiB decoded; the file is a few hundred KB
    result = subprocess.run([sys.executable, "-c", SKIP_PEAK, str(path)], capture_output=True, text=True,
                            check=True, cwd=REPO)
    skipped, grown = map(int, result.stdout.split())
    assert skipped == 1 and grown < 16 * 2**20, f"skipping it took {grown / 2**20:.0f} MiB"


def test_the_exif_orientation_is_applied(tmp_path):
    """A photo stored sideways with EXIF orientation 6 comes out as the upright image does."""
    from sparsenet.decode import EXIF_ORIENTATION, decode_image

    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:10, :, 0] = 255   # a red band along the top of the upright image
    pixels[:, :15, 2] = 255   # a blue band down its left side
    upright = Image.fromarray(pixels)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote; orientation 6 turns it back
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    stored.save(tmp_path / "sideways.png", exif=exif)
    upright.save(tmp_path / "upright.png")
    turned = decode_image((tmp_path / "sideways.png").read_bytes(), 32).astype(int)
    expected = decode_image((tmp_path / "upright.png").read_bytes(), 32).astype(int)
    assert np.abs(turned - expected).max() <= 1
    assert turned[0, 0, 16] > 200 and turned[2, 16, 0] > 200  # red on top, blue on the left
