"""Step ``prepare``: the configured source → ``data/prepared`` (arrays, meta, report)."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from sparsenet.config import Config
from sparsenet.errors import SparseNetError
from sparsenet.stage import Paths
from sparsenet.prepared import write_prepared
from sparsenet.sources import open_source

SHOWN = 10  # skipped files and duplicates printed; report.json lists every skipped file


def prepare(cfg: Config, paths: Paths = Paths(), chunk: int | None = None) -> dict:
    """Read the configured source, bring it to S×S, write ``data/prepared`` and its report.

    Images are decoded (folders: by ``data.workers`` processes) and written to the arrays
    ``chunk`` at a time (default: ~4 MB of them); the bytes written are the same for any
    number of workers and any chunk size.  The report counts the test images whose bytes also
    occur in train (a warning, not an error: Fashion-MNIST-like sets hold a few) and lists the
    first of them.
    """
    data_cfg = cfg.data
    _check_outside_user_folders(paths.prepared, cfg)
    source = open_source(data_cfg, cfg.seed, chunk)
    with tqdm(total=sum(source.counts.values()), desc=f"prepare {data_cfg.source}", unit="img", disable=None,
              dynamic_ncols=True) as bar:
        report = write_prepared(source, paths.prepared, {
            "source": data_cfg.source, "image_shape": [3, data_cfg.image_size, data_cfg.image_size]}, bar.update)
    train_images, test_images, classes = report["train_images"], report["test_images"], report["classes"]
    skipped, duplicates = report["skipped"], report["train_test_duplicates"]
    print(f"prepared {train_images} train / {test_images} test images, "
          f"{len(classes)} classes, {data_cfg.image_size}x{data_cfg.image_size}x3 -> {paths.prepared}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s), listed in {paths.prepared / 'report.json'}:")
        for item in skipped[:SHOWN]:
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


if __name__ == "__main__":
    from sparsenet.stage import run_stage

    run_stage(prepare)
