"""Print the current run's results: accuracies, per-layer sparsity, cost and speed; the report's path.

    python -m sparsenet.summary [models/sparse.pt]

Reads what the pipeline wrote (``metrics/*.json`` and the sparse checkpoint); trains nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sparsenet.analysis import interpret_sparsity
from sparsenet.checkpoints import lenet_from_state_dict, load_checkpoint
from sparsenet.errors import SparseNetError, one_line_errors
from sparsenet.io import read_json


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    checkpoint = Path(args[0]) if args else Path("models/sparse.pt")
    with one_line_errors():
        metrics = read_json("metrics/evaluate.json")
        try:
            model = lenet_from_state_dict(load_checkpoint(checkpoint), sparse=True)
        except ValueError as exc:
            raise SparseNetError(f"{checkpoint}: {exc}") from None
        interpret_sparsity(model)
        dense, sparse, compact = metrics["dense"], metrics["sparse"], metrics["compact"]
        control = metrics.get("control", {}).get("accuracy")
        same_epochs = f", dense trained for as many epochs (control) {control:.2%}" if control is not None else ""
        over = sparse.get("pruned_layers")
        all_layers = sparse.get("sparsity_all_layers")
        print(f"test accuracy: dense {dense['accuracy']:.2%}{same_epochs}, sparse {sparse['accuracy']:.2%} "
              f"at {sparse['sparsity']:.2%} sparsity" + (f" over {', '.join(over)}" if over else "")
              + (f" ({all_layers:.2%} over all layers)" if all_layers is not None else ""))
        print(f"non-zero MACs per image: {sparse['nonzero_macs']:,} of {dense['macs']:,}; compact model "
              f"widths {compact['widths']}, {compact['macs']:,} MACs")
        if "small" in metrics:
            small = metrics["small"]
            print(f"small dense LeNet from scratch (widths {small['widths']}, {small['params']:,} parameters, "
                  f"as many epochs): {small['accuracy']:.2%}, {-sparse['accuracy_drop_vs_small'] * 100:+.2f} points "
                  "for the pruned model")
        if "packed" in metrics and "compressed" in metrics:
            packed, compressed = metrics["packed"], metrics["compressed"]
            exact = "lossless" if packed.get("restores_sparse") else "DOES NOT restore the sparse model"
            print(f"checkpoint bytes: dense {dense['checkpoint_bytes']:,}; packed {packed['checkpoint_bytes']:,} "
                  f"({packed['times_smaller_than_dense']:.1f}x smaller, {exact}); compressed "
                  f"{compressed['checkpoint_bytes']:,} ({compressed['times_smaller_than_dense']:.1f}x smaller, "
                  f"accuracy {compressed['accuracy']:.2%})")
        speed_path = Path("metrics/speed.json")
        if speed_path.is_file():
            speed = read_json(speed_path)
            up = speed.get("speedup")
            if not isinstance(up, dict) or "engine" not in speed or "machine" not in speed:
                print(f"{speed_path} is from an older release: re-run dvc repro for the speed figures")
            else:
                on = "on the engine" if speed["engine"] != "pytorch" else "on the engine's PyTorch fallback"
                where = speed["machine"]
                print(f"inference speed ({where['device']}, {where['processor']}, {where['threads']} threads, batch "
                      f"{speed['batch_size']}, engine: {speed['engine']}): "
                      f"sparse {on} {up['sparse_engine_vs_dense_eager']:.2f}x dense PyTorch, "
                      f"{up['sparse_engine_vs_dense_engine']:.2f}x dense {on}; compact {on} "
                      f"{up['compact_engine_vs_dense_engine']:.2f}x dense {on}")
        if Path("plots/report.md").is_file():
            print("the whole run on one page: plots/report.md")


if __name__ == "__main__":
    main()
