"""Per-layer sensitivity of a trained model: each layer pruned alone, test accuracy → figure and CSV.

    sparsenet sensitivity [--model models/dense.pt] [--sparsities 0.5 0.7 0.9]
                          [--method structured --structure filters --criterion l2]

Uses ``params.yaml``'s ``prune.method`` / ``structure`` / ``criterion`` (unless given as options),
``exclude`` and ``score_batches`` (for Taylor scores) on the prepared data (run ``dvc repro``
first); writes ``plots/sensitivity.png`` (accuracy vs share, one line per layer) and ``plots/sensitivity.csv``.
Nothing is retrained (see :mod:`sparsenet.sensitivity`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from sparsenet.checkpoints import load_model
from sparsenet.config import config_from_dict, load_config
from sparsenet.data import BatchLoader
from sparsenet.prepared import load_meta, load_split
from sparsenet.draws import draw_seed
from sparsenet.errors import SparseNetError, one_line_errors
from sparsenet.importance import taylor_scores, uses_taylor
from sparsenet.io import write_csv
from sparsenet.models import SparseNet, default_device
from sparsenet.options import PRUNE_CRITERIA, PRUNE_METHODS, PRUNE_STRUCTURES
from sparsenet.sensitivity import measure
from sparsenet.training import EVAL_BATCH_SIZE

DEFAULT_SHARES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
COLUMNS = ("layer", "weights", "share", "sparsity", "accuracy", "drop")


def probe(model_path: Path, params: str, shares: tuple[float, ...], prepared: Path = Path("data/prepared"),
          **prune: str) -> list[dict]:
    """Test accuracy of ``model_path`` with each covered layer pruned alone to each of ``shares``;
    ``prune`` (method, structure, criterion) overrides the params file's."""
    cfg = load_config(params)
    if prune:  # validated as if the params file said so
        chosen = " ".join(f"--{key} {value}" for key, value in prune.items())
        cfg = config_from_dict({**dataclasses.asdict(cfg), "prune": {**dataclasses.asdict(cfg.prune), **prune}},
                               source=f"{params} with {chosen}")
    meta = load_meta(prepared)
    test_split = load_split(prepared, "test")
    size, classes = int(test_split.images.shape[-1]), len(meta["classes"])
    device = default_device()
    model = SparseNet.from_dense(load_model(model_path, False, size, classes)).to(device)
    test = BatchLoader(test_split, EVAL_BATCH_SIZE, meta["mean"], meta["std"], device)
    p = cfg.prune
    taylor = None
    if uses_taylor(p.method, p.criterion):
        train = BatchLoader(load_split(prepared, "train"), cfg.train.batch_size, meta["mean"], meta["std"], device)
        taylor = taylor_scores(model, train.sample(p.score_batches, draw_seed(cfg.seed, "taylor", 0)),
                               cfg.train.compiled_conv)
    how = f"{p.structure} by {p.criterion}" if p.method == "structured" else p.method
    print(f"{model_path}: each layer pruned alone ({how}), test accuracy")
    rows = measure(model, test, p.method, p.structure, p.criterion, tuple(p.exclude), (0.0, *shares), taylor,
                   cfg.seed)
    for row in rows:
        if row["share"] > 0:
            print(f"  {row['layer']:>5} at {row['share']:.2f}: {row['accuracy']:.4f} "
                  f"({-row['drop'] * 100:+.2f} points)")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sparsenet sensitivity", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/dense.pt"),
                        help="a dense LeNet checkpoint (default %(default)s)")
    parser.add_argument("--params", default="params.yaml", help="params file (default %(default)s)")
    parser.add_argument("--sparsities", nargs="+", type=float, default=list(DEFAULT_SHARES),
                        help="shares each layer is pruned to (default %(default)s)")
    parser.add_argument("--method", choices=PRUNE_METHODS, help="default: the params file's prune.method")
    parser.add_argument("--structure", choices=PRUNE_STRUCTURES, help="default: the params file's prune.structure")
    parser.add_argument("--criterion", choices=PRUNE_CRITERIA, help="default: the params file's prune.criterion")
    parser.add_argument("--png", type=Path, default=Path("plots/sensitivity.png"))
    parser.add_argument("--csv", type=Path, default=Path("plots/sensitivity.csv"))
    args = parser.parse_args(argv)
    with one_line_errors():
        bad = [s for s in args.sparsities if not 0 < s < 1]
        if bad:
            raise SparseNetError(f"--sparsities {bad} not allowed; expected fractions in (0, 1)")
        chosen = {key: getattr(args, key) for key in ("method", "structure", "criterion") if getattr(args, key)}
        rows = probe(args.model, args.params, tuple(sorted(set(args.sparsities))), **chosen)
        write_csv(args.csv, rows, COLUMNS)
        from sparsenet.plots import sensitivity_figure

        sensitivity_figure(rows, args.png)
    print(f"{len(rows)} points -> {args.png}, {args.csv}")


if __name__ == "__main__":
    main()
