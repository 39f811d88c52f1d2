"""``plots/report.md``: one page tying a run's numbers to its figures, readable without DVC."""

from __future__ import annotations

from pathlib import Path

from sparsenet.config import Config
from sparsenet.io import write_text

MODEL_ROWS = (
    ("dense", "dense LeNet (train_dense)"),
    ("control", "control: dense, same total epochs, no pruning (train_control)"),
    ("small", "small dense: as large as the pruned model, from scratch, same total epochs (train_small)"),
    ("sparse", "pruned SparseNet (prune_train)"),
    ("compact", "compact: pruned structure removed (prune_train)"),
    ("compressed", "compressed: shared weights, Huffman-coded (compress)"),
)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of already formatted cells, with a final newline.

    Unpadded, one line per row: a changed figure changes one line of the README's diff.
    """
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


def write_report(cfg: Config, metrics: dict, speed: dict, figures: list[Path], out: Path) -> Path:
    """Write the Markdown report to ``out``; figure links are relative to its folder."""
    p = cfg.prune
    how = f"{p.structure} by {p.criterion}" if p.method == "structured" else f"{p.scope} scope"
    if p.allocation != "uniform":
        how += f", {p.allocation} allocation"
    if p.method == "structured" and p.round_to > 1:
        how += f", widths rounded to {p.round_to}"
    if p.method == "taylor" or (p.method == "structured" and p.criterion == "taylor"):
        how += f", Taylor scores over {p.score_batches} batches"
    sparse = metrics["sparse"]
    lines = [
        f"# SparseNet run: {p.method} pruning ({how}), target sparsity {p.sparsity:g}",
        "",
        f"Data: {cfg.data.source}, {cfg.data.image_size}x{cfg.data.image_size}x3; seed {cfg.seed}. "
        f"Dense training {cfg.train.epochs} epochs (lr {cfg.train.lr:g}, {cfg.train.lr_schedule}); "
        f"prune training {p.epochs} pruning rounds ({p.schedule} schedule) + {p.finetune_epochs} fine-tuning "
        f"epoch(s) (lr {p.lr:g}, {p.lr_schedule}); rewind {p.rewind}; excluded layers: "
        f"{', '.join(p.exclude) or 'none'}. Compression: {cfg.compress.conv_bits}-bit conv and "
        f"{cfg.compress.fc_bits}-bit fc codes, {cfg.compress.epochs} epoch(s) fine-tuning the shared values "
        f"(lr {cfg.compress.lr:g}).",
        "",
        f"**Sparse test accuracy {sparse['accuracy']:.2%} at {sparse['sparsity']:.2%} sparsity** "
        f"(of the layers the target covers: {', '.join(sparse['pruned_layers'])}; "
        f"{sparse['sparsity_all_layers']:.2%} of all weights): "
        f"{-sparse['accuracy_drop'] * 100:+.2f} points vs the dense model, "
        f"{-sparse['accuracy_drop_vs_control'] * 100:+.2f} vs the control (dense, trained for as many "
        "epochs in total)"
        + (f", {-sparse['accuracy_drop_vs_small'] * 100:+.2f} vs a small dense LeNet of the same size "
           f"(widths {metrics['small']['widths']}) trained from scratch." if "small" in metrics else "."),
        "",
        "## Models",
        "",
    ]
    rows = []
    for key, label in MODEL_ROWS:
        if key not in metrics:  # written by an older release
            continue
        m = metrics[key]
        rates = [speed.get("images_per_second", {}).get(f"{key}_{how}") for how in ("eager", "engine")]
        rows.append([label, f"{m['accuracy']:.2%}", f"{m['nonzero_params']:,} / {m['params']:,}",
                     f"{m['macs']:,}", f"{m['nonzero_macs']:,}", f"{m['checkpoint_bytes']:,}",
                     *(f"{rate:,.0f}" if rate else "—" for rate in rates)])
    lines += markdown_table(["model", "test accuracy", "non-zero / all params", "MACs per image",
                             "MACs over non-zero weights", "checkpoint bytes", "img/s PyTorch",
                             f"img/s engine ({speed.get('engine', '?')})"], rows).splitlines()
    if "packed" in metrics and "compressed" in metrics:
        packed, compressed = metrics["packed"], metrics["compressed"]
        lines += ["", f"On disk: the pruned model's checkpoint keeps dense tensors and masks "
                  f"({sparse['checkpoint_bytes']:,} bytes); `models/packed.pt` keeps only the kept weights and "
                  f"their positions: **{packed['checkpoint_bytes']:,} bytes, "
                  f"{packed['times_smaller_than_dense']:.1f}x smaller than the dense model's**, "
                  + ("lossless (restores the pruned model bit for bit). " if packed["restores_sparse"] else
                     "but it does NOT restore the pruned model exactly. ") +
                  f"`models/compressed.pt`: **{compressed['checkpoint_bytes']:,} bytes, "
                  f"{compressed['times_smaller_than_dense']:.1f}x smaller**, at "
                  f"{-compressed['accuracy_drop_vs_sparse'] * 100:+.2f} points vs the pruned model."]
    up = speed.get("speedup")
    if isinstance(up, dict) and "batch1_p50_latency_ratio" in speed and "machine" in speed:
        on = "on the engine" if speed.get("engine") != "pytorch" else "on the engine's PyTorch fallback"
        where = speed["machine"]
        lines += ["", f"Inference at batch {speed['batch_size']} on {where['device']} ({where['processor']}, "
                  f"{where['threads']} threads, torch {where['torch']}): "
                  f"the sparse model {on} runs **{up['sparse_engine_vs_dense_eager']:.2f}x** the dense "
                  f"model in PyTorch and {up['sparse_engine_vs_dense_engine']:.2f}x the dense model {on}; "
                  f"the compact model (widths {metrics['compact']['widths']}) {on} "
                  f"{up['compact_engine_vs_dense_engine']:.2f}x the dense model {on}. Batch 1: the sparse "
                  f"model {on} takes {speed['batch1_p50_latency_ratio']['sparse_engine_vs_dense_eager']:.2f}x "
                  "the dense PyTorch model's median latency."]
    else:
        lines += ["", "`metrics/speed.json` is from an older release: re-run `dvc repro` for the speed figures."]
    lines += ["", "## Sparsity per layer", ""]
    lines += markdown_table(["layer", "sparsity", "zero weights", "weights"],
                            [[name, f"{layer['sparsity']:.2f}", f"{layer['zeros']:,}", f"{layer['total']:,}"]
                             for name, layer in sparse["layers"].items()]).splitlines()
    lines += ["", "## Figures", ""]
    for figure in figures:
        lines += [f"### {figure.stem.replace('_', ' ')}", "", f"![{figure.stem}]({figure.relative_to(out.parent)})",
                  ""]
    write_text(out, "\n".join(lines))
    return out
