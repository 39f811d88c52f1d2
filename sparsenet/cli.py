"""sparsenet: the pipeline's steps, checkpoint inspection and the tools.

    sparsenet prepare | train-dense | prune-train | train-control | train-small | compress | evaluate | speed | visualize
    sparsenet inspect models/sparse.pt       # per-layer sparsity, sizes and cost of any checkpoint
    sparsenet export models/sparse.pt [-o models/sparse.onnx] [--batch N]  # ONNX of a model (sparsenet.export)
    sparsenet summary                        # the current run's results
    sparsenet bench [--quick]                # benchmark ratios (python -m sparsenet.bench)
    sparsenet frontier sweep|plot            # accuracy-sparsity frontier, points as Ray tasks (python -m sparsenet.frontier)
    sparsenet bench-sweep threads|throughput # a sweep's threads per point; points per hour against DVC's queue
    sparsenet bench-data decode|memory|epoch # prepare's images/s and peak memory; epochs from the memory map
    sparsenet sensitivity                    # each layer pruned alone: accuracy curves (plots/sensitivity.*)
    sparsenet readme [--check]               # README.md's and docs/' result tables rendered from the committed files

The step sub-commands run exactly what ``dvc repro`` runs (the step of ``stages/<step>.py`` in the
working directory, through the same :func:`sparsenet.stage.run_stage`), but outside DVC: nothing is
cached or recorded.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module
from pathlib import Path

from sparsenet import analysis
from sparsenet.checkpoints import is_sparse, lenet_from_state_dict, load_checkpoint, model_kind, unwrap
from sparsenet.errors import FOREIGN_FILE_ERRORS, SparseNetError, one_line_errors

STEPS = ("prepare", "train_dense", "prune_train", "train_control", "train_small", "compress", "evaluate", "speed",
         "visualize")
TOOLS = {"summary": "sparsenet.summary", "bench": "sparsenet.bench", "bench-sweep": "sparsenet.bench_sweep",
         "bench-data": "sparsenet.bench_data",
         "frontier": "sparsenet.frontier", "sensitivity": "sparsenet.sensitivity_tool",
         "readme": "sparsenet.readme"}  # sub-command → module with its own main()


def inspect_checkpoint(path: Path) -> None:
    """Print what a checkpoint holds: model kind, widths, per-layer sparsity, params, MACs, size."""
    try:
        holder, state = unwrap(load_checkpoint(path))
        if not isinstance(state, dict):
            raise ValueError(f"holds a {type(state).__name__} where a model's state dict belongs")
        model = lenet_from_state_dict(state, sparse=is_sparse(state))
    except FOREIGN_FILE_ERRORS as exc:
        raise SparseNetError(f"{path}: {exc}") from None
    if holder is not None:
        print(f"{path}: {holder}")
    kind = model_kind(state)
    cost = analysis.model_cost(model, model.image_size, model.in_channels)
    layers = analysis.layer_sparsity(model)
    print(f"{path}: {kind}, {model.num_classes} classes, input {model.in_channels}x{model.image_size}x"
          f"{model.image_size}, widths {list(model.widths)}, {path.stat().st_size:,} bytes on disk")
    analysis.interpret_sparsity(model)
    print(f"overall sparsity {analysis.overall_sparsity(layers):.4f}; params {cost.nonzero_params:,} non-zero "
          f"of {cost.params:,}; MACs per image {cost.macs:,} (over non-zero weights: {cost.nonzero_macs:,})")


def export_checkpoint(checkpoint: Path, out: Path | None, batch: int | None, prepared: Path | None) -> None:
    """Export a model checkpoint to ONNX (:func:`sparsenet.export.export_onnx`) and say what was written.

    ``prepared`` None: ``data/prepared`` where it exists and fits the model (its normalisation goes
    into the file; where it does not fit, a notice)."""
    from sparsenet.export import describe_onnx, export_onnx  # torch.onnx is imported for this command only

    default = prepared is None and (Path("data/prepared") / "meta.json").is_file()
    out = export_onnx(checkpoint, out, batch, Path("data/prepared") if default else prepared, strict=not default)
    print(f"{checkpoint} -> {out}: {describe_onnx(out)}")


def main(argv: list[str] | None = None) -> None:
    try:
        _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # e.g. `sparsenet inspect … | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _main(args: list[str]) -> None:
    if args and args[0] in TOOLS:  # their own argument parsers
        import_module(TOOLS[args[0]]).main(args[1:])
        return
    parser = argparse.ArgumentParser(prog="sparsenet", description=__doc__.split("\n")[0],
                                     epilog=f"tools: {', '.join(TOOLS)} (sparsenet <tool> --help)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for step in STEPS:
        command = sub.add_parser(step.replace("_", "-"), help=f"run the {step} step (as dvc repro does)")
        command.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    inspect = sub.add_parser("inspect", help="per-layer sparsity, sizes and cost of a checkpoint")
    inspect.add_argument("checkpoint", type=Path, nargs="+")
    export = sub.add_parser("export", help="ONNX of a model checkpoint (dense, sparse, compact, packed, compressed)")
    export.add_argument("checkpoint", type=Path)
    export.add_argument("-o", "--output", type=Path, help="the .onnx file (default: the checkpoint's path with .onnx)")
    export.add_argument("--batch", type=int, help="a fixed batch size (default: a dynamic batch dimension)")
    export.add_argument("--prepared", type=Path, help="the prepared data the model was trained from: its mean, std "
                        "and class names go into the file's metadata (default: data/prepared where it exists)")
    for tool in TOOLS:
        sub.add_parser(tool, help=f"see sparsenet {tool} --help", add_help=False)
    parsed = parser.parse_args(args)
    if parsed.command == "inspect":
        with one_line_errors():
            for path in parsed.checkpoint:
                inspect_checkpoint(path)
        return
    if parsed.command == "export":
        with one_line_errors():
            export_checkpoint(parsed.checkpoint, parsed.output, parsed.batch, parsed.prepared)
        return
    step = parsed.command.replace("-", "_")
    run_step(step, parsed.params)


def run_step(step: str, params: str) -> None:
    """Run ``stages/<step>.py`` of the project in the working directory, as ``dvc repro`` would."""
    if not (Path.cwd() / "stages" / f"{step}.py").is_file():
        raise SystemExit(f"error: no stages/{step}.py here; run sparsenet {step.replace('_', '-')} in the "
                         "project's folder (the one holding dvc.yaml)")
    sys.path.insert(0, str(Path.cwd()))  # the project's own stages, as `python -m stages.<step>` finds them
    from sparsenet.stage import run_stage

    run_stage(getattr(import_module(f"stages.{step}"), step), params)


if __name__ == "__main__":
    main()
