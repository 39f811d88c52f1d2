"""Step ``evaluate``: accuracy, sparsity, size and cost of every model → ``metrics/evaluate.json``.

Deterministic: the same params and seed give the same file, which is what ``dvc metrics diff``
compares.  Timings are the ``speed`` step's (``metrics/speed.json``).
"""

from __future__ import annotations

from sparsenet import analysis
from sparsenet.checkpoints import load_checkpoint, load_model, load_packed
from sparsenet.config import Config
from sparsenet.data import BatchLoader
from sparsenet.io import write_json
from sparsenet.models import default_device
from sparsenet.packed import same_tensors
from sparsenet.prepared import load_meta, load_split
from sparsenet.pruning import pruned_layer_names
from sparsenet.stage import Paths
from sparsenet.training import EVAL_BATCH_SIZE, evaluate as test_loss_and_accuracy


def packed_metrics(paths: Paths, dense_bytes: int) -> dict:
    """Size of ``models/packed.pt`` and whether it restores ``models/sparse.pt`` bit for bit."""
    lossless = same_tensors(load_packed(paths.packed_model), load_checkpoint(paths.sparse_model))
    size = paths.packed_model.stat().st_size
    return {"checkpoint_bytes": size, "times_smaller_than_dense": dense_bytes / size, "restores_sparse": lossless}


def evaluate(cfg: Config, paths: Paths = Paths()) -> dict:
    """Accuracy, sparsity, cost and size of the dense, sparse, compact, control, compressed and
    small-dense models, and of the packed checkpoint.

    ``sparse.sparsity`` is the pruned fraction of the
    weights the target covers (``prune.exclude`` and the layers a structure never prunes left
    out), ``sparse.sparsity_all_layers`` that of every weight layer; both are counted from the
    masks.
    """
    meta = load_meta(paths.prepared)
    test_split = load_split(paths.prepared, "test")  # the training split is not needed here
    test = BatchLoader(test_split, EVAL_BATCH_SIZE, meta["mean"], meta["std"], default_device())
    size, classes = int(test_split.images.shape[-1]), len(meta["classes"])
    kinds = {"dense": False, "sparse": True, "compact": False, "control": False, "compressed": True, "small": False}
    models = {name: (getattr(paths, f"{name}_model"), load_model(getattr(paths, f"{name}_model"), sparse, size, classes))
              for name, sparse in kinds.items()}
    metrics: dict = {}
    for name, (path, model) in models.items():
        loss, accuracy = test_loss_and_accuracy(model, test)
        cost = analysis.model_cost(model, size)
        metrics[name] = {"accuracy": accuracy, "loss": loss, "params": cost.params,
                         "nonzero_params": cost.nonzero_params, "macs": cost.macs,
                         "nonzero_macs": cost.nonzero_macs, "checkpoint_bytes": path.stat().st_size}
    sparse = models["sparse"][1]
    layers = analysis.layer_sparsity(sparse)
    analysis.interpret_sparsity(sparse)
    p = cfg.prune
    covered = pruned_layer_names(p.method, p.structure, p.exclude)
    metrics["sparse"].update({
        "sparsity": analysis.overall_sparsity(layers, covered),
        "sparsity_all_layers": analysis.overall_sparsity(layers),
        "pruned_layers": covered,
        "accuracy_drop": metrics["dense"]["accuracy"] - metrics["sparse"]["accuracy"],
        "accuracy_drop_vs_control": metrics["control"]["accuracy"] - metrics["sparse"]["accuracy"],
        "accuracy_drop_vs_small": metrics["small"]["accuracy"] - metrics["sparse"]["accuracy"],
        "layers": {layer.name: {"sparsity": layer.sparsity, "zeros": layer.zeros, "total": layer.total}
                   for layer in layers},
    })
    metrics["compact"]["widths"] = list(models["compact"][1].widths)
    metrics["small"]["widths"] = list(models["small"][1].widths)
    dense_bytes = metrics["dense"]["checkpoint_bytes"]
    metrics["packed"] = packed_metrics(paths, dense_bytes)
    metrics["compressed"].update({
        "times_smaller_than_dense": dense_bytes / metrics["compressed"]["checkpoint_bytes"],
        "accuracy_drop_vs_sparse": metrics["sparse"]["accuracy"] - metrics["compressed"]["accuracy"],
    })
    write_json(paths.metrics, metrics)
    print(f"dense accuracy {metrics['dense']['accuracy']:.4f} | control (dense, same epochs) "
          f"{metrics['control']['accuracy']:.4f} | small dense from scratch {metrics['small']['accuracy']:.4f} "
          f"({metrics['small']['params']:,} params, widths {metrics['small']['widths']}) | sparse accuracy "
          f"{metrics['sparse']['accuracy']:.4f} "
          f"at sparsity {metrics['sparse']['sparsity']:.4f} over {', '.join(covered)} "
          f"({metrics['sparse']['sparsity_all_layers']:.4f} over all layers) -> {paths.metrics}")
    packed, compressed = metrics["packed"], metrics["compressed"]
    print(f"checkpoint bytes: dense {dense_bytes:,} | sparse (masked) {metrics['sparse']['checkpoint_bytes']:,} | "
          f"packed {packed['checkpoint_bytes']:,} ({packed['times_smaller_than_dense']:.1f}x smaller than dense; "
          f"restores the sparse model exactly: {packed['restores_sparse']}) | compressed "
          f"{compressed['checkpoint_bytes']:,} ({compressed['times_smaller_than_dense']:.1f}x smaller, accuracy "
          f"{compressed['accuracy']:.4f}, {-compressed['accuracy_drop_vs_sparse'] * 100:+.2f} points vs sparse)")
    return metrics


if __name__ == "__main__":
    from sparsenet.stage import run_stage

    run_stage(evaluate)
