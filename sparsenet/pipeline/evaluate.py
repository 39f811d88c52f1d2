"""Step ``evaluate``: accuracy, sparsity, size and cost of every model; measured inference speed."""

from __future__ import annotations

from sparsenet import analysis
from sparsenet.checkpoints import load_model
from sparsenet.config import Config
from sparsenet.data import BatchLoader, load_meta, load_split
from sparsenet.io import write_json
from sparsenet.models import default_device
from sparsenet.pipeline.stage import Paths
from sparsenet.pruning import pruned_layer_names
from sparsenet.training import EVAL_BATCH_SIZE, evaluate as test_loss_and_accuracy

SPEED_BATCH_SIZE = 256


def evaluate(cfg: Config, paths: Paths = Paths()) -> dict:
    """Accuracy, sparsity and cost of the dense, sparse, compact and control models; speed.

    ``metrics/evaluate.json`` is deterministic (same params + seed → same file); measured
    timings go to ``metrics/speed.json``.  ``sparse.sparsity`` is the pruned fraction of the
    weights the target covers (``prune.exclude`` and the layers a structure never prunes left
    out), ``sparse.sparsity_all_layers`` that of every weight layer; both are counted from the
    masks.
    """
    meta = load_meta(paths.prepared)
    test_split = load_split(paths.prepared, "test")  # the training split is not needed here
    test = BatchLoader(test_split, EVAL_BATCH_SIZE, meta["mean"], meta["std"], default_device())
    size, classes = int(test_split.images.shape[-1]), len(meta["classes"])
    models = {
        "dense": (paths.dense_model, load_model(paths.dense_model, False, size, classes)),
        "sparse": (paths.sparse_model, load_model(paths.sparse_model, True, size, classes)),
        "compact": (paths.compact_model, load_model(paths.compact_model, False, size, classes)),
    }
    metrics: dict = {}
    speed: dict = {"device": str(default_device()), "batch_size": SPEED_BATCH_SIZE}
    control = load_model(paths.control_model, False, size, classes)
    for name, (path, model) in [*models.items(), ("control", (paths.control_model, control))]:
        loss, accuracy = test_loss_and_accuracy(model, test)
        cost = analysis.model_cost(model, size)
        metrics[name] = {"accuracy": accuracy, "loss": loss, "params": cost.params,
                         "nonzero_params": cost.nonzero_params, "macs": cost.macs,
                         "nonzero_macs": cost.nonzero_macs, "checkpoint_bytes": path.stat().st_size}
    rates = analysis.throughput({name: model for name, (_, model) in models.items()}, size, SPEED_BATCH_SIZE)
    speed.update({name: {"images_per_second": rate} for name, rate in rates.items()})
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
        "layers": {layer.name: {"sparsity": layer.sparsity, "zeros": layer.zeros, "total": layer.total}
                   for layer in layers},
    })
    metrics["compact"]["widths"] = list(models["compact"][1].widths)
    speed["speedup"] = speed["compact"]["images_per_second"] / speed["dense"]["images_per_second"]
    write_json(paths.metrics, metrics)
    write_json(paths.speed, speed)
    print(f"dense accuracy {metrics['dense']['accuracy']:.4f} | control (dense, same epochs) "
          f"{metrics['control']['accuracy']:.4f} | sparse accuracy {metrics['sparse']['accuracy']:.4f} "
          f"at sparsity {metrics['sparse']['sparsity']:.4f} over {', '.join(covered)} "
          f"({metrics['sparse']['sparsity_all_layers']:.4f} over all layers) -> {paths.metrics}")
    print(f"compact model: {metrics['compact']['macs'] / metrics['dense']['macs']:.2f}x the dense MACs, "
          f"{speed['speedup']:.2f}x its inference speed ({speed['device']}) -> {paths.speed}")
    return metrics
