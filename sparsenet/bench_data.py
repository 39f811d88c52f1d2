"""Data benchmarks: decoding a folder in parallel, prepare's memory, epochs from the memory map.

    sparsenet bench-data decode   # images/s of prepare, 1 worker vs 2, vs ImageFolder + DataLoader(num_workers=2)
    sparsenet bench-data memory   # peak anonymous memory of prepare at two folder sizes (arrays ≥ 4× that peak)
    sparsenet bench-data epoch    # one training epoch: batches gathered from the memory map vs held in memory

Each makes (once, in ``--work``, default ``/tmp/sparsenet-bench-data``) a folder of ``--images``
synthetic photos, half PNG half JPEG, of 96 to 160 pixels a side, and writes its result with
the machine it ran on into ``--out`` (default ``metrics/bench_data.json``), keeping the others'.
Contenders take turns ``--repeats`` times (this machine's speed drifts) and the median is kept.
Peak memory counts ``RssAnon`` of the process tree (the pool's processes included): the arrays'
pages belong to the page cache, not to the program.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sparsenet.errors import SparseNetError, one_line_errors
from sparsenet.io import write_json

CLASSES = 10


def make_folder(root: Path, images: int, seed: int = 0) -> Path:
    """``root/{train,test}/<class>/<i>.{png,jpg}``: ``images`` in all (a tenth of them test),
    smooth colour fields with noise, like small photos; kept when already there."""
    from PIL import Image

    done = root / ".complete"
    if done.is_file() and done.read_text() == str(images):
        return root
    rng = np.random.default_rng(seed)
    for index in range(images):
        split = "test" if (index // CLASSES) % 10 == 9 else "train"
        label = index % CLASSES
        folder = root / split / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        height, width = rng.integers(96, 161, size=2)
        ys, xs = np.mgrid[0:height, 0:width]
        base = rng.uniform(0, 255, 3)
        field_ = base + 60 * np.sin(xs[..., None] / (8 + label) + ys[..., None] / 13 + rng.uniform(0, 6, 3))
        pixels = np.clip(field_ + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        if index % 2:
            image.save(folder / f"{index}.jpg", quality=90)
        else:
            image.save(folder / f"{index}.png")
    done.write_text(str(images))
    return root


PREPARE = """
import sys, threading, time, json
from pathlib import Path
import psutil
from sparsenet.config import config_from_dict
from stages.prepare import prepare
from sparsenet.stage import Paths
peak = 0
def anonymous():
    total = 0
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            with open(f"/proc/{process.pid}/status") as fh:
                total += next(int(line.split()[1]) * 1024 for line in fh if line.startswith("RssAnon:"))
        except (OSError, StopIteration):
            pass
    return total
def watch(interval):
    global peak
    while True:
        peak = max(peak, anonymous())
        time.sleep(interval)
cfg = config_from_dict({"data": json.loads(sys.argv[1])})
out, interval = Path(sys.argv[2]), float(sys.argv[3])
base = anonymous()
if interval > 0:
    threading.Thread(target=watch, args=(interval,), daemon=True).start()
start = time.perf_counter()
report = prepare(cfg, Paths(prepared=out))
seconds = time.perf_counter() - start
time.sleep(0.1)
print(json.dumps({"seconds": seconds, "images": report["train_images"] + report["test_images"],
                  "base_anonymous_bytes": base, "peak_anonymous_bytes": peak,
                  "array_bytes": sum(f.stat().st_size for f in out.glob("*_images.npy"))}))
"""


def run_prepare(data: dict, out: Path, sample_seconds: float = 0.01) -> dict:
    """``prepare`` of the ``data`` params in a fresh process: its seconds, its images, and the
    anonymous memory (``RssAnon`` of the process tree, sampled every ``sample_seconds``; 0: not
    sampled, so a timing does not share the cores with the sampler) before and at peak."""
    import sparsenet

    result = subprocess.run([sys.executable, "-c", PREPARE, json.dumps(data), str(out), str(sample_seconds)],
                            capture_output=True,
                            text=True, env=dict(os.environ, TQDM_DISABLE="1"),
                            cwd=Path(sparsenet.__file__).resolve().parents[1])
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.startswith(("error:", "Traceback")) or "Error" in line]
        raise SparseNetError(f"prepare of {data} failed: {(lines or result.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _folder(folder: Path, image_size: int, workers: int) -> dict:
    return {"source": "folder", "train_dir": str(folder / "train"), "test_dir": str(folder / "test"),
            "image_size": image_size, "workers": workers}


IMAGEFOLDER = """
import sys, time, json
import torch
from torchvision import datasets, transforms
folder, size = sys.argv[1], int(sys.argv[2])
transform = transforms.Compose([transforms.Resize((size, size)), transforms.PILToTensor()])
images = 0
start = time.perf_counter()
for split in ("train", "test"):
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(f"{folder}/{split}", transform=transform),
                                         batch_size=256, num_workers=2)
    for batch, _ in loader:
        images += len(batch)
print(json.dumps({"seconds": time.perf_counter() - start, "images": images}))
"""


def run_imagefolder(folder: Path, image_size: int) -> dict:
    """One pass of ``torchvision.datasets.ImageFolder`` + ``DataLoader(num_workers=2)`` over ``folder``."""
    result = subprocess.run([sys.executable, "-c", IMAGEFOLDER, str(folder), str(image_size)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise SparseNetError(f"ImageFolder pass failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def decode(work: Path, images: int, image_size: int, repeats: int) -> dict:
    """prepare's images/s with 1 and 2 workers and an ImageFolder pass, taking turns."""
    folder = make_folder(work / f"folder-{images}", images)
    rates: dict[str, list[float]] = {"prepare_1_worker": [], "prepare_2_workers": [], "imagefolder_2_workers": []}
    for _ in range(repeats):
        for workers in (1, 2):
            result = run_prepare(_folder(folder, image_size, workers), work / "prepared", sample_seconds=0)
            rates[f"prepare_{workers}_worker{'s' if workers > 1 else ''}"].append(result["images"] / result["seconds"])
        result = run_imagefolder(folder, image_size)
        rates["imagefolder_2_workers"].append(result["images"] / result["seconds"])
    median = {name: statistics.median(values) for name, values in rates.items()}
    return {"images": images, "image_size": image_size, "repeats": repeats, "images_per_second": median,
            "runs": rates,
            "ratio_2_workers_vs_1": median["prepare_2_workers"] / median["prepare_1_worker"],
            "ratio_prepare_2_workers_vs_imagefolder": median["prepare_2_workers"] / median["imagefolder_2_workers"]}


def memory(work: Path, images: int, image_size: int) -> dict:
    """Peak anonymous memory of prepare (2 workers) on ``images`` files and on a quarter of them."""
    results = {}
    for count in (images // 4, images):
        folder = make_folder(work / f"folder-{count}", count)
        results[str(count)] = run_prepare(_folder(folder, image_size, 2), work / "prepared")
    small, large = results[str(images // 4)], results[str(images)]
    return {"image_size": image_size, "workers": 2, "runs": results,
            # what prepare added to the process it ran in (torch and the rest of the imports are the base)
            "peak_growth_4x_images": ((large["peak_anonymous_bytes"] - large["base_anonymous_bytes"])
                                      / (small["peak_anonymous_bytes"] - small["base_anonymous_bytes"])),
            "arrays_vs_peak": large["array_bytes"] / large["peak_anonymous_bytes"]}


def epoch(work: Path, images: int, image_size: int, repeats: int) -> dict:
    """One LeNet training epoch with batches gathered from the memory map vs held in memory (normalised once)."""
    import torch

    from sparsenet.bench import _trainer
    from sparsenet.data import NORMALISE_ONCE_MAX_BYTES, BatchLoader
    from sparsenet.models import LeNet, default_device
    from sparsenet.prepared import load_prepared

    folder = make_folder(work / f"folder-{images}", images)
    prepared = work / f"prepared-{image_size}"
    if not (prepared / "meta.json").is_file():
        run_prepare(_folder(folder, image_size, 2), prepared)
    dataset, meta = load_prepared(prepared)
    device = default_device()
    torch.manual_seed(0)
    model = LeNet(len(dataset.classes), image_size).to(device, memory_format=torch.channels_last)
    step = _trainer(model)
    rates: dict[str, list[float]] = {"memory_map": [], "in_memory": []}
    loaders = {"memory_map": BatchLoader(dataset.train, 128, meta["mean"], meta["std"], device, shuffle=True,
                                         normalise_once_max_bytes=0),
               "in_memory": BatchLoader(dataset.train, 128, meta["mean"], meta["std"], device, shuffle=True,
                                        normalise_once_max_bytes=NORMALISE_ONCE_MAX_BYTES)}
    for loader in loaders.values():  # warm-up: the first steps build kernels and fill the page cache
        for batch, labels in loader:
            step(batch, labels)
    for _ in range(repeats):
        for name, loader in loaders.items():
            start = time.perf_counter()
            for batch, labels in loader:
                step(batch, labels)
            rates[name].append(len(dataset.train) / (time.perf_counter() - start))
    median = {name: statistics.median(values) for name, values in rates.items()}
    return {"images": len(dataset.train), "image_size": image_size, "repeats": repeats,
            "images_per_second": median, "runs": rates,
            "ratio_memory_map_vs_in_memory": median["memory_map"] / median["in_memory"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sparsenet bench-data", description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("decode", "memory", "epoch"))
    parser.add_argument("--images", type=int, default=20_000, help="images in the folder (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="data.image_size (default: 64; memory: 256, so the arrays are 3.9 GB at 20,000)")
    parser.add_argument("--repeats", type=int, default=3, help="turns each contender takes (default %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sparsenet-bench-data"))
    parser.add_argument("--out", type=Path, default=Path("metrics/bench_data.json"))
    args = parser.parse_args(argv)
    with one_line_errors():
        if args.images < 40 or args.repeats < 1:
            raise SparseNetError("--images: expected at least 40; --repeats: at least 1")
        from sparsenet.machine import code_commit, machine

        args.work.mkdir(parents=True, exist_ok=True)
        if args.what == "decode":
            result = decode(args.work, args.images, args.image_size or 64, args.repeats)
        elif args.what == "memory":
            result = memory(args.work, args.images, args.image_size or 256)
        else:
            result = epoch(args.work, args.images, args.image_size or 64, args.repeats)
        result["machine"], result["commit"] = machine(), code_commit()
        results = json.loads(args.out.read_text()) if args.out.is_file() else {}
        results[args.what] = result
        write_json(args.out, results)
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
