"""Messy image folders: every bad file is converted or skipped and reported, never a crash.

Each case builds its files in a temp dir: a ``train`` and a ``test`` folder with two classes of
good images, plus the case's file in ``train/cat``.
"""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparsenet.config import config_from_dict
from sparsenet.sources import load_folder
from sparsenet.errors import SparseNetError
from stages.prepare import prepare
from sparsenet.stage import Paths

SIZE = 32
rng = np.random.default_rng(0)


def _good_tree(root: Path) -> None:
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _load(root: Path):
    return load_folder(root / "train", root / "test", SIZE)


def _added_image(dataset, count_before: int = 2) -> np.ndarray:
    """The decoded case image: train/cat holds 0.png, 1.png and the case file (sorted by name)."""
    cats = dataset.train.images[dataset.train.labels == 0]
    assert len(cats) == count_before + 1
    return cats[-1].numpy()


# --------------------------------------------------------------------------- skipped and reported

SKIPPED = {
    "corrupt": ("z_corrupt.png", lambda: b"\x89PNG\r\n\x1a\n" + b"garbage" * 30, "OSError"),
    "truncated": ("z_truncated.png",
                  lambda: _png_bytes(Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)))[:600],
                  "truncated"),
    "zero-byte": ("z_empty.jpg", lambda: b"", "empty file (0 bytes)"),
    "not an image": ("z_notes.txt", lambda: b"shopping list", "UnidentifiedImageError"),
    "hidden": (".DS_Store", lambda: b"\x00\x00\x00\x01Bud1", "hidden file"),
}


@pytest.mark.parametrize("case", SKIPPED)
def test_bad_file_is_skipped_with_path_and_reason(tmp_path, case):
    _good_tree(tmp_path)
    name, content, reason = SKIPPED[case]
    bad = tmp_path / "train" / "cat" / name
    bad.write_bytes(content())
    dataset = _load(tmp_path)
    assert len(dataset.train) == 4
    assert [item["path"] for item in dataset.skipped] == [str(bad)]
    assert reason in dataset.skipped[0]["reason"]


def test_decompression_bomb_is_skipped(tmp_path, monkeypatch):
    _good_tree(tmp_path)
    Image.new("RGB", (300, 300), (10, 20, 30)).save(tmp_path / "train" / "cat" / "z_huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 90k pixels > 2x the limit: PIL refuses
    dataset = _load(tmp_path)
    assert len(dataset.train) == 4
    assert "DecompressionBombError" in dataset.skipped[0]["reason"]


def test_symlink_leaving_the_folder_is_skipped_inside_is_read(tmp_path):
    _good_tree(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(outside / "secret.png")
    os.symlink(outside / "secret.png", tmp_path / "train" / "cat" / "z_out.png")
    os.symlink(outside, tmp_path / "train" / "dog" / "linked_dir")
    os.symlink(tmp_path / "train" / "cat" / "0.png", tmp_path / "train" / "cat" / "z_in.png")
    dataset = _load(tmp_path)
    reasons = {Path(item["path"]).name: item["reason"] for item in dataset.skipped}
    assert set(reasons) == {"z_out.png", "linked_dir"}
    assert all("outside" in reason for reason in reasons.values())
    assert np.array_equal(_added_image(dataset), dataset.train.images[0].numpy())  # z_in.png == 0.png


# --------------------------------------------------------------------------- converted

def test_rgba_is_composited_on_black(tmp_path):
    _good_tree(tmp_path)
    pixels = np.zeros((10, 10, 4), dtype=np.uint8)
    pixels[..., 0] = 200
    pixels[:5, ..., 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(pixels, "RGBA").save(tmp_path / "train" / "cat" / "z_alpha.png")
    image = _added_image(_load(tmp_path))
    assert image.shape == (3, SIZE, SIZE)
    assert abs(int(image[0, 2, 5]) - 200) <= 2 and image[:, -2, 5].max() <= 2


def test_palette_image_keeps_its_colours(tmp_path):
    _good_tree(tmp_path)
    img = Image.new("RGB", (12, 12), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    img.save(tmp_path / "train" / "cat" / "z_palette.gif")
    image = _added_image(_load(tmp_path))
    assert np.abs(image[:, 5, 5].astype(int) - [0, 128, 255]).max() <= 3


@pytest.mark.parametrize("pixels,file_name,expected", [
    (np.full((20, 20), 32768, dtype=np.uint16), "z_16.png", 128),      # 16-bit mid-grey stays mid-grey
    (np.full((20, 20), 65535, dtype=np.uint16), "z_16.png", 255),      # 16-bit white
    (np.full((20, 20), 200, dtype=np.uint16), "z_16.png", 1),          # max 200 of 65535: nearly black
    (np.full((20, 20), 2**30, dtype=np.int32), "z_32.tif", 128),       # signed 32-bit TIFF: half of 2**31 - 1
    (np.full((20, 20), 2**31 - 1, dtype=np.int32), "z_32.tif", 255),
    (np.full((20, 20), 0.5, dtype=np.float32), "z_f.tif", 128),        # float images are 0..1
    (np.full((20, 20), 1.0, dtype=np.float32), "z_f.tif", 255),
    (np.full((20, 20), 7.5, dtype=np.float32), "z_f.tif", 255),        # beyond the scale: clipped
])
def test_deep_images_are_scaled_by_their_types_full_range(tmp_path, pixels, file_name, expected):
    _good_tree(tmp_path)
    Image.fromarray(pixels).save(tmp_path / "train" / "cat" / file_name)
    image = _added_image(_load(tmp_path))
    assert image.min() == image.max() == expected


@pytest.mark.parametrize("maxval,value,expected", [(65535, 32768, 128), (65535, 65535, 255), (1023, 512, 128)])
def test_deep_pgm_images_are_scaled_by_their_declared_maxval(tmp_path, maxval, value, expected):
    _good_tree(tmp_path)  # PGM of more than 8 bits opens in mode I, like 32-bit TIFF: the header decides
    pixels = np.full((6, 6), value, dtype=">u2").tobytes()
    (tmp_path / "train" / "cat" / "z_deep.pgm").write_bytes(f"P5 6 6 {maxval}\n".encode() + pixels)
    image = _added_image(_load(tmp_path))
    assert image.min() == image.max() == expected


def test_sixteen_bit_ramp_keeps_its_contrast(tmp_path):
    _good_tree(tmp_path)
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "train" / "cat" / "z_ramp.png")
    image = _added_image(_load(tmp_path))[0]
    assert image[:, 0].max() < 10 and image[:, -1].min() > 245
    assert np.all(np.diff(image[0].astype(int)) >= 0), "brightness rises along the ramp"


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    _good_tree(tmp_path)
    Image.new("RGB", (24, 24), (255, 0, 0)).convert("CMYK").save(tmp_path / "train" / "cat" / "z_cmyk.jpg")
    image = _added_image(_load(tmp_path))
    red, green, blue = (int(c) for c in image[:, 10, 10])
    assert red > 200 and green < 60 and blue < 60


def test_one_by_one_pixel_image(tmp_path):
    _good_tree(tmp_path)
    Image.new("RGB", (1, 1), (7, 77, 177)).save(tmp_path / "train" / "cat" / "z_dot.png")
    image = _added_image(_load(tmp_path))
    assert (image[:, 0, 0] == [7, 77, 177]).all() and (image == image[:, :1, :1]).all()


def test_very_large_image_is_downsized(tmp_path):
    _good_tree(tmp_path)
    Image.new("RGB", (6000, 4000), (50, 100, 150)).save(tmp_path / "train" / "cat" / "z_large.png")
    image = _added_image(_load(tmp_path))
    assert image.shape == (3, SIZE, SIZE) and (image[:, 3, 3] == [50, 100, 150]).all()


def test_non_ascii_file_and_class_names(tmp_path):
    _good_tree(tmp_path)
    Image.new("RGB", (9, 9), (1, 2, 3)).save(tmp_path / "train" / "cat" / "z_ünïcödé 画像.png")
    for split in ("train", "test"):
        (tmp_path / split / "dog").rename(tmp_path / split / "chien_été")
    (tmp_path / "train" / "cat" / "zz_bad_é.png").write_bytes(b"")
    cfg = config_from_dict({"data": {"source": "folder", "train_dir": str(tmp_path / "train"),
                                     "test_dir": str(tmp_path / "test"), "image_size": SIZE}})
    paths = Paths(prepared=tmp_path / "prepared")
    report = prepare(cfg, paths)
    assert report["classes"] == ["cat", "chien_été"] and report["train_images"] == 5
    written = json.loads((paths.prepared / "report.json").read_text(encoding="utf-8"))
    assert written["skipped"] == [{"path": str(tmp_path / "train" / "cat" / "zz_bad_é.png"),
                                   "reason": "empty file (0 bytes)"}]


# --------------------------------------------------------------------------- one clear error

@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_class_folder_is_one_clear_error(tmp_path, split):
    _good_tree(tmp_path)
    (tmp_path / split / "bird").mkdir()
    if split == "test":
        (tmp_path / "train" / "bird").mkdir()
        Image.new("RGB", (9, 9)).save(tmp_path / "train" / "bird" / "b.png")
    with pytest.raises(SparseNetError, match=f"data.{split}_dir = .*class folder 'bird' has no readable images"):
        _load(tmp_path)


def test_class_only_in_test_is_one_clear_error(tmp_path):
    _good_tree(tmp_path)
    (tmp_path / "test" / "horse").mkdir()
    Image.new("RGB", (9, 9)).save(tmp_path / "test" / "horse" / "h.png")
    with pytest.raises(SparseNetError, match="data.test_dir = .*horse not in data.train_dir"):
        _load(tmp_path)


def test_zero_usable_images_is_one_clear_error(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
        (tmp_path / split / "cat" / "a.png").write_bytes(b"nope")
    with pytest.raises(SparseNetError, match="data.train_dir = .*no readable images"):
        _load(tmp_path)


def test_missing_folder_is_one_clear_error(tmp_path):
    _good_tree(tmp_path)
    with pytest.raises(SparseNetError, match="data.test_dir = .*folder not found"):
        load_folder(tmp_path / "train", tmp_path / "missing", SIZE)
