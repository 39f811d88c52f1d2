"""Step ``prepare``: the configured source → ``data/prepared`` (arrays, meta, report)."""

from __future__ import annotations

from pathlib import Path

from sparsenet.config import Config
from sparsenet.data import load_source, save_prepared, train_test_duplicates
from sparsenet.errors import SparseNetError
from sparsenet.pipeline.stage import Paths

SHOWN = 10  # skipped files and duplicates printed; report.json lists every skipped file


def prepare(cfg: Config, paths: Paths = Paths()) -> dict:
    """Read the configured source, bring it to S×S, write ``data/prepared`` and its report.

    The report counts the test images whose bytes also occur in train (a warning, not an error:
    Fashion-MNIST-like sets hold a few) and lists the first of them.
    """
    data_cfg = cfg.data
    _check_outside_user_folders(paths.prepared, cfg)
    dataset = load_source(data_cfg, cfg.seed)
    duplicates = train_test_duplicates(dataset)
    report = {
        "source": data_cfg.source,
        "classes": dataset.classes,
        "train_images": len(dataset.train),
        "test_images": len(dataset.test),
        "image_shape": [3, data_cfg.image_size, data_cfg.image_size],
        "skipped_count": len(dataset.skipped),
        "skipped": dataset.skipped,
        "train_test_duplicates": duplicates,
    }
    save_prepared(dataset, paths.prepared, report)
    print(f"prepared {len(dataset.train)} train / {len(dataset.test)} test images, "
          f"{len(dataset.classes)} classes, {data_cfg.image_size}x{data_cfg.image_size}x3 -> {paths.prepared}")
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} unreadable file(s), listed in {paths.prepared / 'report.json'}:")
        for item in dataset.skipped[:SHOWN]:
            print(f"  {item['path']}: {item['reason']}")
    if duplicates["count"]:
        print(f"warning: {duplicates['count']} test image(s) are byte-identical to training images "
              f"(train/test leakage; listed in {paths.prepared / 'report.json'}), e.g.:")
        for pair in duplicates["first"][:SHOWN]:
            print(f"  {pair['test']} = {pair['train']}")
    return report


def _check_outside_user_folders(prepared: Path, cfg: Config) -> None:
    """The prepared output must never sit inside (or contain) a user's image folder."""
    if cfg.data.source != "folder":
        return
    out = prepared.resolve()
    for key, folder in (("data.train_dir", cfg.data.train_dir), ("data.test_dir", cfg.data.test_dir)):
        user = Path(folder).resolve()
        if out == user or user in out.parents or out in user.parents:
            raise SparseNetError(f"{key} = '{folder}' overlaps the prepared output {prepared}; "
                                 "keep your images in their own folder (e.g. data/train)")
