"""Step ``compress``: Deep Compression of the pruned model — shared weights, fine-tuned, Huffman-coded."""

from __future__ import annotations

from sparsenet.checkpoints import load_model, save_checkpoint
from sparsenet.compressed import compressed_checkpoint
from sparsenet.compress import shared_weights, tie_weights, untie_weights
from sparsenet.config import Config
from sparsenet.stage import Paths
from sparsenet.training_stage import resume_args, training_start
from sparsenet.training import fit


def compress(cfg: Config, paths: Paths = Paths()) -> list[dict]:
    """``models/sparse.pt`` with its weights shared and coded → ``models/compressed.pt``.

    Every layer's kept weights are clustered into at most ``2**compress.conv_bits`` (convolutions)
    or ``2**compress.fc_bits`` (fully connected layers) shared values by k-means (see
    :mod:`sparsenet.compress`).  ``compress.epochs`` epochs then train the shared values and the
    biases (Adam at ``compress.lr``, cosine schedule down to 0), the masks and each weight's
    cluster fixed, with the seed and batch order of the other training stages.  The result is
    stored with its codes and index gaps Huffman-coded
    (:func:`sparsenet.compressed.compressed_checkpoint`).  Returns one record per epoch.
    """
    dataset, train, test = training_start(cfg, paths)
    net = load_model(paths.sparse_model, True, dataset.image_size, len(dataset.classes))
    c = cfg.compress
    tie_weights(net, c.conv_bits, c.fc_bits)
    counts = ", ".join(f"{name} {len(centroids)}" for name, (centroids, _) in shared_weights(net).items())
    print(f"compress: shared values per layer ({c.conv_bits}-bit conv, {c.fc_bits}-bit fc codes): {counts}")
    history: list[dict] = []
    if c.epochs:
        resume = resume_args(paths, "compress", cfg, paths.prepared, paths.sparse_model)
        history = fit(net, train, test, c.epochs, c.lr, desc="compress (shared values)", lr_schedule="cosine",
                      compiled_conv=cfg.train.compiled_conv, **resume)
    shared = shared_weights(net)
    untie_weights(net)
    save_checkpoint(paths.compressed_model, compressed_checkpoint(net, shared))
    if c.epochs:
        resume["checkpoint"].unlink(missing_ok=True)
    print(f"compressed model: {paths.compressed_model.stat().st_size:,} bytes -> {paths.compressed_model}")
    return history


if __name__ == "__main__":
    from sparsenet.stage import run_stage

    run_stage(compress)
