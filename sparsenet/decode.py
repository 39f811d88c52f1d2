"""One image file's bytes → uint8 3×S×S, within a bounded amount of memory per image.

The image's size and mode are read from its header before any pixel is decoded: an image whose
decoded working set would exceed :data:`MAX_DECODED_BYTES` is skipped with the reason (an
:class:`ImageSkipped`), never decoded into an out-of-memory kill.  JPEGs are decoded at a
reduced scale when they are much larger than S (Pillow's ``draft``: the DCT does the shrinking).
Everything else is resized to S×S in its own mode first (Pillow resamples 16-bit, 32-bit and
float images natively, in two passes whose buffers are S wide), so the conversions to 8 bits,
the exif rotation and the alpha composite work on S×S pixels, not on the whole image.

No PyTorch here: the process pool of ``prepare`` imports only this, NumPy and Pillow.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

# The most one image may take while decoded (its full-size pixels plus a full-size mode
# conversion where one is needed): 12,000 × 12,000 16-bit gray is 275 MiB and is skipped;
# 8-bit RGB up to about 8,000 × 8,000 is read.  Per decoding process: `prepare` holds at most
# `data.workers` such images at once.
MAX_DECODED_BYTES = 256 * 2**20
# Pillow names the buffer it read in some messages ("cannot identify image file <_io.BytesIO
# object at 0x7f…>"): an address that differs from run to run has no place in report.json.
_BUFFER = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>")
EXIF_ORIENTATION = 0x0112
# EXIF orientation → the transpose that shows the image upright (as PIL.ImageOps.exif_transpose).
ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
ALPHA_MODES = ("RGBA", "LA", "La", "RGBa")
# Modes Pillow cannot resample, converted at full size first (to RGBA: the palette's transparency
# survives; to RGB / L otherwise).
CONVERT_FIRST = {"P": "RGBA", "PA": "RGBA", "1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


class ImageSkipped(ValueError):
    """An image not decoded, with the reason (e.g. over the per-image memory limit)."""


def digest(data: bytes) -> bytes:
    """The 16-byte digest by which images present in both train and test are found."""
    return hashlib.blake2b(data, digest_size=16).digest()


def bytes_per_pixel(mode: str) -> int:
    """What Pillow stores per pixel of ``mode``: 1 for 1/L/P, 2 for 16-bit, else 4 (RGB is stored as RGBX)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def working_set(size: tuple[int, int], mode: str) -> int:
    """Bytes of an image of ``size`` and ``mode`` while it is decoded and, where needed, converted
    at full size: to a mode Pillow resamples, and, for transparency, to premultiplied alpha (the
    copy Pillow's resize makes of an RGBA or LA image)."""
    pixels = size[0] * size[1]
    converted = CONVERT_FIRST.get(mode, mode)
    extra = bytes_per_pixel(converted) if converted != mode else 0
    premultiplied = 4 if converted in ("RGBA", "LA") else 0
    return pixels * (bytes_per_pixel(mode) + extra + premultiplied)


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


def decode_image(data: bytes, image_size: int, max_bytes: int = MAX_DECODED_BYTES) -> np.ndarray:
    """Decode an image file's bytes to uint8 3×S×S (stretched to a square).

    Raises :class:`ImageSkipped` for an image over ``max_bytes`` decoded, and Pillow's own
    errors for bad data.
    """
    with Image.open(io.BytesIO(data)) as img:
        scale = full_scale(img)  # from the file's header and tags, before any copy drops them
        if isinstance(img, JpegImageFile):  # JPEG and MPO (phone cameras)
            img.draft(img.mode, (image_size, image_size))  # decode at 1/2, 1/4 or 1/8 scale if still ≥ S
        need = working_set(img.size, img.mode)
        if need > max_bytes:
            width, height = img.size
            raise ImageSkipped(f"{width}x{height} {img.mode} needs {need / 2**20:,.0f} MiB decoded, over the "
                               f"per-image limit of {max_bytes / 2**20:,.0f} MiB (sparsenet.decode.MAX_DECODED_BYTES)")
        img.load()
        orientation = img.getexif().get(EXIF_ORIENTATION)  # after the check: for a PNG it decodes the pixels
        if img.mode in CONVERT_FIRST:
            img = img.convert(CONVERT_FIRST[img.mode])
        small = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    if orientation in ORIENTATIONS:
        small = small.transpose(ORIENTATIONS[orientation])
    if scale is not None:  # deep → 8-bit by the type's full scale, on S×S pixels only
        scaled = np.nan_to_num(np.asarray(small, dtype=np.float64) / scale * 255.0, nan=0.0)
        small = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")
    if small.mode in ALPHA_MODES:  # transparency composited onto black
        small = small.convert("RGBA")
        small = Image.alpha_composite(Image.new("RGBA", small.size, (0, 0, 0, 255)), small)
    return np.asarray(small.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)


@dataclass
class Decoded:
    """A chunk of files decoded in order: the images that could be read, and why the others were not."""

    images: np.ndarray            # k×3×S×S uint8, the readable files in order
    kept: list[int]               # their positions in the chunk
    digests: list[bytes]          # of their file bytes
    skipped: list[tuple[int, str]]  # (position in the chunk, reason)
    histogram: np.ndarray         # 256 counts of the images' pixel values (counted here, in the pool)


def decode_files(paths: list[str], image_size: int, max_bytes: int = MAX_DECODED_BYTES) -> Decoded:
    """Read and decode ``paths`` in order (the body of one task of ``prepare``'s process pool).

    Any failure of one file (unreadable, not an image, over the limit) skips that file with its
    reason; ``MemoryError`` is not caught (a too-small machine is not a bad file).
    """
    images = np.empty((len(paths), 3, image_size, image_size), dtype=np.uint8)
    kept, digests, skipped = [], [], []
    for position, path in enumerate(paths):
        try:
            size = os.stat(path).st_size
            if size > max_bytes:  # no image file is larger than its decoded pixels
                raise ImageSkipped(f"a file of {size / 2**20:,.0f} MiB, over the per-image limit of "
                                   f"{max_bytes / 2**20:,.0f} MiB (sparsenet.decode.MAX_DECODED_BYTES)")
            data = Path(path).read_bytes()
            images[len(kept)] = decode_image(data, image_size, max_bytes)
        except MemoryError:
            raise
        except Exception as exc:  # PIL raises many types for bad files; each is reported, none fatal
            skipped.append((position, f"{type(exc).__name__}: {_BUFFER.sub('', str(exc))}"))
            continue
        kept.append(position)
        digests.append(digest(data))
    images = images[:len(kept)].copy() if len(kept) < len(paths) else images
    return Decoded(images, kept, digests, skipped, np.bincount(images.reshape(-1), minlength=256))
