"""sparsenet: the pipeline's steps, checkpoint inspection and the tools.

    sparsenet prepare | train-dense | prune-train | train-control | evaluate | visualize
    sparsenet inspect models/sparse.pt       # per-layer sparsity, sizes and cost of any checkpoint
    sparsenet summary                        # the current run's results
    sparsenet bench [--quick]                # benchmark ratios (python -m sparsenet.bench)
    sparsenet frontier sweep|plot            # accuracy-sparsity frontier (python -m sparsenet.frontier)

The step sub-commands run exactly what ``dvc repro`` runs (``stages/<step>.py`` call the same
:func:`sparsenet.pipeline.run_stage`), but outside DVC: nothing is cached or recorded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sparsenet import analysis
from sparsenet.errors import SparseNetError
from sparsenet.io import load_checkpoint
from sparsenet.models import SparseNet, lenet_from_state_dict
from sparsenet.pipeline import STEPS, run_stage

TOOLS = ("summary", "bench", "frontier")


def inspect_checkpoint(path: Path) -> None:
    """Print what a checkpoint holds: model kind, widths, per-layer sparsity, params, MACs, size."""
    state = load_checkpoint(path)
    if not isinstance(state, dict):
        raise SparseNetError(f"{path}: holds a {type(state).__name__}, not a state dict")
    if "history" in state and "model" in state:  # a per-epoch resume checkpoint
        print(f"{path}: resume checkpoint after epoch {len(state['history'])}")
        state = state["model"]
    elif "init.conv1.weight" in state:  # models/dense_history.pt
        points = sorted({key.split(".", 1)[0] for key in state}, key=lambda p: (p != "init", len(p), p))
        print(f"{path}: dense weights at {', '.join(points)} (the points prune.rewind can go back to)")
        state = {key.split(".", 1)[1]: value for key, value in state.items() if key.startswith("init.")}
    compact = "state_dict" in state
    sparse = "conv1.mask" in state
    try:
        model = lenet_from_state_dict(state, sparse=sparse)
    except ValueError as exc:
        raise SparseNetError(f"{path}: {exc}") from None
    if not sparse:
        model = SparseNet.from_dense(model)  # all-ones masks: zeros are counted the same way
    cost = analysis.model_cost(model, model.image_size, model.in_channels)
    layers = analysis.layer_sparsity(model)
    kind = ("SparseNet (masked)" if sparse else
            "LeNet (compact: pruned structure removed)" if compact else "LeNet (dense)")
    print(f"{path}: {kind}, {model.num_classes} classes, input {model.in_channels}x{model.image_size}x"
          f"{model.image_size}, widths {list(model.widths)}, {path.stat().st_size:,} bytes on disk")
    analysis.interpret_sparsity(model)
    print(f"overall sparsity {analysis.overall_sparsity(layers):.4f}; params {cost.nonzero_params:,} non-zero "
          f"of {cost.params:,}; MACs per image {cost.macs:,} (over non-zero weights: {cost.nonzero_macs:,})")


def main(argv: list[str] | None = None) -> None:
    try:
        _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # e.g. `sparsenet inspect … | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _main(args: list[str]) -> None:
    if args and args[0] in TOOLS:  # their own argument parsers
        from importlib import import_module

        import_module(f"sparsenet.{args[0]}").main(args[1:])
        return
    parser = argparse.ArgumentParser(prog="sparsenet", description=__doc__.split("\n")[0],
                                     epilog=f"tools: {', '.join(TOOLS)} (sparsenet <tool> --help)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for step in STEPS:
        command = sub.add_parser(step.replace("_", "-"), help=f"run the {step} step (as dvc repro does)")
        command.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    inspect = sub.add_parser("inspect", help="per-layer sparsity, sizes and cost of a checkpoint")
    inspect.add_argument("checkpoint", type=Path, nargs="+")
    for tool in TOOLS:
        sub.add_parser(tool, help=f"see sparsenet {tool} --help", add_help=False)
    parsed = parser.parse_args(args)
    if parsed.command == "inspect":
        try:
            for path in parsed.checkpoint:
                inspect_checkpoint(path)
        except SparseNetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        return
    run_stage(parsed.command.replace("-", "_"), parsed.params)


if __name__ == "__main__":
    main()
