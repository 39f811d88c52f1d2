"""The figures of README.md and docs/, rendered from the committed results.

    python -m sparsenet.readme            # rewrite every rendered block of README.md and docs/*.md
    python -m sparsenet.readme --check    # exit 1 with one line naming the files whose blocks differ

A rendered block is everything between ``<!-- rendered: NAME -->`` and ``<!-- end rendered -->``;
NAME is a key of :data:`BLOCKS`.  The sources, all committed:

- ``metrics/evaluate.json``: the default run's accuracies, sizes and sparsity (deterministic);
- ``metrics/speed.json``: its measured inference speed, with the machine where recorded;
- ``metrics/bench.json``, ``bench_data.json``, ``bench_sweep.json``: the benchmarks and their machines;
- ``results/frontier/frontier.csv`` (mean ± std over seeds) and ``frontier_runs.csv`` (every run);
- ``plots/sensitivity.csv``: each layer of the dense model pruned alone.

One function per table, each taking the loaded dict or DataFrame and returning Markdown.  Units:
accuracy in % with 2 decimals, differences in signed points, bytes and counts with thousands
separators, ratios with 2 decimals and ×.  Prose around a block is written by hand and cites only
figures the block shows.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml

from sparsenet.errors import SparseNetError, one_line_errors
from sparsenet.io import write_text
from sparsenet.options import default
from sparsenet.report import markdown_table

# A block's markers stand on lines of their own (a marker quoted inside a line is text).
BLOCK = re.compile(r"^(<!-- rendered: (?P<name>[\w-]+) -->\n)(?P<body>.*?)^(<!-- end rendered -->)$", re.S | re.M)
OPENING = re.compile(r"^<!-- rendered:", re.M)
UNKNOWN_COMMIT = "?"  # frontier.csv's mark for a run recorded without its commit
DAGGER = "† includes runs recorded without their commit (`results/frontier/frontier_runs.csv`)."
DEFAULT_SCHEDULE = default("prune.schedule")  # the pairs compare the frontier's lines at the default schedule


# --- formatting -------------------------------------------------------------------------------------

def pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def points(fraction: float) -> str:
    return f"{100 * fraction:+.2f}"


def count(number: float) -> str:
    return f"{round(number):,}"


def times(ratio: float) -> str:
    return f"{ratio:.2f}×"


def mean_std(mean: float, std: float, signed: bool = False) -> str:
    """``91.31 ± 0.44`` (percent) or ``+0.28 ± 0.38`` (points); the mean alone without a std."""
    text = f"{100 * mean:{'+' if signed else ''}.2f}"
    return text if pd.isna(std) else f"{text} ± {100 * std:.2f}"


def machine_line(info: dict, commit: str | None = None) -> str:
    """The machine a timing file names: ``AMD EPYC, 2 cores, 2 threads, torch 2.14.1+cu130``, and
    the commit of the code it measured where the file records one."""
    parts = [info.get("cpu") or info.get("processor") or "a CPU the file does not name"]
    parts += [f"{info[key]} {key}" for key in ("cores", "threads") if key in info]
    if "torch" in info:
        parts.append(f"torch {info['torch']}")
    if commit:
        parts.append(f"code at commit {commit}")
    return ", ".join(str(part) for part in parts)


# --- the default run: metrics/evaluate.json, metrics/speed.json -------------------------------------------

def default_params(params: dict) -> str:
    """The sentence saying which run the default-run table shows, from ``params.yaml``."""
    train, prune = params["train"], params["prune"]
    scope = "one global ranking" if prune["scope"] == "global" else "the same sparsity in every layer"
    rounds = f"{prune['epochs']} {prune['schedule']} round{'s' if prune['epochs'] != 1 else ''}"
    tune = f"{prune['finetune_epochs']} fine-tuning epoch{'s' if prune['finetune_epochs'] != 1 else ''}"
    return (f"The default run (`params.yaml` as committed: {train['epochs']} dense epochs, then {prune['method']} "
            f"pruning with {scope} to {prune['sparsity']:.0%} over {rounds} and {tune}; seed {params['seed']}), "
            "from `metrics/evaluate.json`:")


def default_run(evaluate: dict) -> str:
    """Accuracy, non-zero parameters and checkpoint size of every model of the default run."""
    dense_bytes = evaluate["dense"]["checkpoint_bytes"]
    sparse = evaluate["sparse"]

    def size(nbytes: int) -> str:
        if nbytes == dense_bytes:
            return "1"
        return f"{times(dense_bytes / nbytes)} smaller" if nbytes < dense_bytes else f"{times(nbytes / dense_bytes)} larger"

    packed = evaluate["packed"]
    packed_accuracy = pct(sparse["accuracy"]) if packed["restores_sparse"] else "does not restore `sparse.pt`"
    models = [
        ("dense LeNet", "dense.pt", evaluate["dense"]),
        ("control: the dense model trained as long as the pruned one", "control.pt", evaluate["control"]),
        (f"pruned: {pct(sparse['sparsity'])} of its weights zero (stored with its masks)", "sparse.pt", sparse),
        ("the pruned model without its zeros (lossless)", "packed.pt",
         {**packed, "accuracy": None, "nonzero_params": sparse["nonzero_params"]}),
        ("the pruned model, Deep-Compressed", "compressed.pt", evaluate["compressed"]),
        (f"the pruned model compacted, widths {evaluate['compact']['widths']}", "compact.pt", evaluate["compact"]),
        (f"small dense LeNet from scratch, widths {evaluate['small']['widths']}", "small.pt", evaluate["small"]),
    ]
    rows = [[label, f"`models/{file}`", packed_accuracy if entry["accuracy"] is None else pct(entry["accuracy"]),
             count(entry["nonzero_params"]), count(entry["checkpoint_bytes"]), size(entry["checkpoint_bytes"])]
            for label, file, entry in models]
    return markdown_table(["model", "file", "test accuracy", "non-zero parameters", "bytes", "vs `dense.pt`"], rows)


def layers(evaluate: dict) -> str:
    """The pruned model's zeros per layer."""
    rows = [[f"`{name}`", count(layer["zeros"]), count(layer["total"]), pct(layer["sparsity"])]
            for name, layer in evaluate["sparse"]["layers"].items()]
    rows.append(["all pruned layers", "", "", pct(evaluate["sparse"]["sparsity"])])
    return markdown_table(["layer", "zero weights", "weights", "sparsity"], rows)


def speed(speed: dict) -> str:
    """Inference at batch 256 in PyTorch and on the engine, and batch-1 latency."""
    ips = speed["images_per_second"]
    where = machine_line(speed.get("machine", {key: speed[key] for key in ("threads",) if key in speed}))
    names = {"dense": "dense", "sparse": "pruned (`models/sparse.pt`)", "compact": "compacted (`models/compact.pt`)"}
    rows = []
    for model, label in names.items():
        engine = speed.get("engines", {}).get(model, speed.get("engine", "?"))
        rows.append([label, count(ips[f"{model}_eager"]), f"{count(ips[f'{model}_engine'])} ({engine})",
                     times(ips[f"{model}_engine"] / ips["dense_eager"]),
                     times(ips[f"{model}_engine"] / ips["dense_engine"])])
    device = speed.get("device", "cpu")
    text = (f"Measured on {where}{'' if device == 'cpu' else f' ({device})'}; images/s at batch "
            f"{speed.get('batch_size', 256)}, median of repeats, contenders taking turns:\n\n")
    text += markdown_table(["model", "PyTorch (eager)", "`sparsenet.engine`", "engine vs dense PyTorch",
                   "engine vs dense on the engine"], rows)
    latency = speed["batch1_latency_ms"]

    def ms(contender: str) -> str:
        return f"{latency[contender]['p50']:.3f} ({latency[contender]['p99']:.3f}) ms"

    ratio = latency["sparse_engine"]["p50"] / latency["dense_eager"]["p50"]
    text += (f"\nBatch 1, median (p99) latency: dense in PyTorch {ms('dense_eager')}, pruned in PyTorch "
             f"{ms('sparse_eager')}, pruned on the engine {ms('sparse_engine')}: {times(ratio)} dense "
             "PyTorch's median.\n")
    return text


def engine_agreement(speed: dict) -> str:
    """How closely the engine reproduces each model on the test set."""
    agreement, difference = speed["engine_prediction_agreement"], speed["engine_max_abs_logit_difference"]
    rows = [[model, speed.get("engines", {}).get(model, speed.get("engine", "?")), pct(agreement[model]),
             f"{difference[model]:.1e}"] for model in agreement]
    return ("`metrics/speed.json`: the engine against the PyTorch model on the prepared test set.\n\n"
            + markdown_table(["model", "ran on", "same predicted class", "largest logit difference"], rows))


# --- the frontier over seeds: results/frontier/ -----------------------------------------------------------

HEADLINE = {  # row label → frontier.csv line
    "magnitude, global": "magnitude (global)",
    "taylor, global": "taylor (global)",
    "random, global": "random (global)",
    "structured filters, l2": "structured (filters, l2)",
    "structured filters, taylor": "structured (filters, taylor)",
    "small dense from scratch, as many parameters as the unstructured model keeps":
        "small dense, from scratch (parameters of the pruned model)",
    "small dense from scratch, the structured model's widths": "small dense, from scratch (widths of structured (filters))",
}
STRUCTURED_TWINS = "small dense, from scratch (widths of "  # the small models of structured lines
STRUCTURED_WIDTHS = STRUCTURED_TWINS + "structured (filters))"


def _cell(row: pd.Series, value: str, most: int) -> str:
    number = "vs_control_n" if value == "vs_control" else "n"
    text = mean_std(row[f"{value}_mean"], row[f"{value}_std"], signed=value == "vs_control")
    if row[number] < most:
        text += f" (n={row[number]})"
    return text + (" †" if UNKNOWN_COMMIT in str(row["commits"]).split() else "")


def _by_sparsity(frontier: pd.DataFrame, labels: dict[str, str], value: str = "accuracy") -> tuple[str, bool]:
    """One row per label, one column per target sparsity; and whether a cell holds a †."""
    frame = frontier[frontier["line"].isin(labels.values()) & frontier[f"{value}_mean"].notna()]
    targets = sorted(frame["target_sparsity"].unique())
    most = int(frame["vs_control_n" if value == "vs_control" else "n"].max())
    rows, dagger = [], False
    for label, line in labels.items():
        cells = {row["target_sparsity"]: _cell(row, value, most) for _, row in frame[frame["line"] == line].iterrows()}
        if cells:
            rows.append([label] + [cells.get(target, "") for target in targets])
            dagger |= any("†" in cell for cell in cells.values())
    return markdown_table(["`prune.sparsity`"] + [f"{target:g}" for target in targets], rows), dagger


def _references(frontier: pd.DataFrame) -> str:
    dense = frontier[frontier["kind"] == "dense"].iloc[0]
    control = frontier[frontier["line"] == "control: dense, same total epochs"].iloc[0]
    return (f"dense LeNet {mean_std(dense['accuracy_mean'], dense['accuracy_std'])}%, control (the dense model "
            f"trained as long as the pruned ones) {mean_std(control['accuracy_mean'], control['accuracy_std'])}%")


def _commits(runs: pd.DataFrame) -> str:
    known = sorted({commit[:7] for commit in runs["commit"].dropna()})
    missing = int(runs["commit"].isna().sum())
    return f"{len(runs)} runs at commits {', '.join(known)}" + (f"; {missing} recorded without their commit" if missing else "")


def frontier_headline(frontier: pd.DataFrame, runs: pd.DataFrame) -> str:
    """The headline methods' test accuracy at every target sparsity, mean ± std over seeds."""
    body, dagger = _by_sparsity(frontier, HEADLINE)
    seeds = frontier[frontier["kind"] == "dense"].iloc[0]["seeds"]
    text = (f"Test accuracy (%), mean ± std over seeds {seeds}, each seed retraining everything "
            f"(`results/frontier/frontier.csv`: {_commits(runs)}); {_references(frontier)}.\n\n{body}")
    return text + (f"\n{DAGGER}\n" if dagger else "")


def frontier_full(frontier: pd.DataFrame, value: str = "accuracy") -> str:
    """Every line of the record (``accuracy``: test accuracy %; ``vs_control``: pruned minus its own seed's
    control, points), one column per target sparsity; the dense model and the controls as a list."""
    kinds = ("pruned", "small") if value == "accuracy" else ("pruned",)
    lines = frontier[frontier["kind"].isin(kinds)]["line"]
    body, dagger = _by_sparsity(frontier, {line: line for line in dict.fromkeys(lines)}, value)
    if value == "accuracy":
        references = frontier[frontier["kind"].isin(("dense", "control"))]
        most = int(references["n"].max())
        body = markdown_table(["reference (no pruning)", "test accuracy (%)"],
                     [[row["line"], _cell(row, value, most)] for _, row in references.iterrows()]) + "\n" + body
        dagger |= references["commits"].astype(str).str.split().map(lambda c: UNKNOWN_COMMIT in c).any()
        body += "\nShare of the dense model's parameters gone once a structured model is compacted (its small-dense twin's):\n\n"
        for line, widths in frontier[frontier["line"].str.startswith(STRUCTURED_TWINS)].groupby("line", sort=False):
            body += (f"- {line.removeprefix(STRUCTURED_TWINS).removesuffix(')')}: "
                     + ", ".join(f"{pct(row['sparsity_mean'])} at {row['target_sparsity']:g}" for _, row in widths.iterrows())
                     + "\n")
    return body + (f"\n{DAGGER}\n" if dagger else "")


PAIRS = [  # label, line A, line B: A minus B, run by run of the same seed and target
    ("magnitude − small dense of as many parameters", "magnitude (global)",
     "small dense, from scratch (parameters of the pruned model)"),
    ("taylor − magnitude (global)", "taylor (global)", "magnitude (global)"),
    ("random − magnitude (global)", "random (global)", "magnitude (global)"),
    ("structured filters: taylor − l2", "structured (filters, taylor)", "structured (filters, l2)"),
    ("structured filters l2 − small dense of its widths", "structured (filters, l2)", STRUCTURED_WIDTHS),
    ("structured filters l2: sensitivity allocation − uniform", "structured (filters, l2), sensitivity allocation",
     "structured (filters, l2)"),
    ("structured filters l2, sensitivity allocation − small dense of its widths",
     "structured (filters, l2), sensitivity allocation", STRUCTURED_TWINS + "structured (filters, l2, sensitivity allocation))"),
]


def per_seed(runs: pd.DataFrame, line: str) -> pd.DataFrame:
    """One row per (target, seed) of ``line`` at the default schedule: a point run at two commits
    counts once, as the mean of its runs (``unknown``: a run's commit was not recorded)."""
    rows = runs[(runs["line"] == line) & runs["schedule"].fillna(DEFAULT_SCHEDULE).eq(DEFAULT_SCHEDULE)]
    return (rows.assign(unknown=rows["commit"].isna()).groupby(["target_sparsity", "seed"], as_index=False)
            .agg(accuracy=("accuracy", "mean"), unknown=("unknown", "any")))


def frontier_pairs(runs: pd.DataFrame) -> str:
    """Paired differences between two lines (points, mean ± std over the seeds both ran)."""
    targets = sorted(t for t in runs["target_sparsity"].unique() if t > 0)
    rows, dagger = [], False
    for label, a, b in PAIRS:
        joined = per_seed(runs, a).merge(per_seed(runs, b), on=["target_sparsity", "seed"])
        cells = {}
        for target, group in joined.groupby("target_sparsity"):
            difference = group["accuracy_x"] - group["accuracy_y"]
            cell = mean_std(difference.mean(), difference.std(), signed=True)
            ahead = int((difference > 0).sum())
            cell += f" ({ahead}/{len(difference)})"
            if group["unknown_x"].any() or group["unknown_y"].any():
                cell, dagger = cell + " †", True
            cells[target] = cell
        rows.append([label] + [cells.get(target, "") for target in targets])
    body = markdown_table(["A − B, paired by seed (points)"] + [f"{target:g}" for target in targets], rows)
    return body + "\n(k/n): in k of the n seeds A is ahead.\n" + (f"\n{DAGGER}\n" if dagger else "")


# --- targets: the project's goals against the committed figures -------------------------------------------

def targets(evaluate: dict, speed: dict, bench: dict, frontier: pd.DataFrame) -> str:
    """Each target with the committed figure it is judged on, and whether it is met."""
    def line(name: str, target: float) -> pd.Series:
        return frontier[(frontier["line"] == name) & (frontier["target_sparsity"] == target)].iloc[0]

    def vs_control(name: str, target: float) -> tuple[str, bool]:
        row = line(name, target)
        return (f"{mean_std(row['vs_control_mean'], row['vs_control_std'], signed=True)} points vs control"
                + (" †" if UNKNOWN_COMMIT in str(row["commits"]).split() else ""), row["vs_control_mean"] >= -0.01)

    dense = frontier[frontier["kind"] == "dense"].iloc[0]
    ips, bench_ips = speed["images_per_second"], bench["inference"]["images_per_second"]
    eager, engine = ips["sparse_engine"] / ips["dense_eager"], ips["sparse_engine"] / ips["dense_engine"]
    compact_engine = bench_ips["compact_engine"] / bench_ips["dense_engine"]
    compact_eager = bench_ips["compact_engine"] / bench_ips["dense_eager"]
    latency = speed["batch1_latency_ms"]["sparse_engine"]["p50"] / speed["batch1_latency_ms"]["dense_eager"]["p50"]
    packed = evaluate["dense"]["checkpoint_bytes"] / evaluate["packed"]["checkpoint_bytes"]
    compressed = evaluate["dense"]["checkpoint_bytes"] / evaluate["compressed"]["checkpoint_bytes"]
    compressed_drop = evaluate["sparse"]["accuracy"] - evaluate["compressed"]["accuracy"]
    checks = [
        ("dense LeNet ≥ 90.50% (frontier, mean over seeds)", f"{mean_std(dense['accuracy_mean'], dense['accuracy_std'])}%",
         dense["accuracy_mean"] >= 0.905),
        ("magnitude, global, 95%: within 1 point of the control (frontier)", *vs_control("magnitude (global)", 0.95)),
        ("magnitude, global, 98%: within 1 point of the control (frontier)", *vs_control("magnitude (global)", 0.98)),
        ("… with `prune.epochs: 6`, `prune.finetune_epochs: 2`",
         *vs_control("magnitude (global), epochs 6, finetune_epochs 2", 0.98)),
        ("structured filters 50%, `prune.allocation: sensitivity`: within 1 point of the control (frontier)",
         *vs_control("structured (filters, l2), sensitivity allocation", 0.5)),
        ("pruned model on the engine, batch 256: ≥ 2.50× dense PyTorch, ≥ 1.30× dense on the engine (`speed.json`)",
         f"{times(eager)}, {times(engine)}", eager >= 2.5 and engine >= 1.3),
        ("compact model from 50% filters on the engine: ≥ 1.60× dense on the engine, ≥ 2.00× dense PyTorch "
         "(`bench.json`)", f"{times(compact_engine)}, {times(compact_eager)}", compact_engine >= 1.6 and compact_eager >= 2),
        ("batch 1: pruned model on the engine ≤ 0.50× dense PyTorch's median latency (`speed.json`)", times(latency),
         latency <= 0.5),
        ("`models/packed.pt` ≤ 1/12 of `models/dense.pt` (`evaluate.json`)", f"{times(packed)} smaller", packed >= 12),
        ("`models/compressed.pt` ≥ 50× smaller than `dense.pt`, ≤ 0.50 points below the pruned model (`evaluate.json`)",
         f"{times(compressed)} smaller, {points(-compressed_drop)} points", compressed >= 50 and compressed_drop <= 0.005),
    ]
    data, step = bench["training_data_path"], bench["training_step"]
    checks += [
        ("training data path ≥ 0.90× the compute bound (`bench.json`)", times(data["pipeline_vs_compute_bound"]),
         data["pipeline_vs_compute_bound"] >= 0.9),
        ("data loader ≥ 5× the naive `ImageFolder` loader (`bench.json`)", times(data["loader_vs_naive_loader"]),
         data["loader_vs_naive_loader"] >= 5),
        ("SparseNet training step ≤ 1.15× LeNet's (`bench.json`)", times(step["sparse_vs_dense"]),
         step["sparse_vs_dense"] <= 1.15),
    ]
    rows = [[goal, measured, "met" if met else "**not met**"] for goal, measured, met in checks]
    text = markdown_table(["target", "measured", ""], rows)
    if any("†" in measured for _, measured, _ in checks):
        text += f"\n{DAGGER}\n"
    return text


# --- benchmarks: metrics/bench*.json, plots/sensitivity.csv -----------------------------------------------

def bench_training(bench: dict) -> str:
    """The training data path, a SparseNet step and LeNet's GFLOP/s (``sparsenet bench``)."""
    data, step, flops = bench["training_data_path"], bench["training_step"], bench["flops"]
    rows = [
        ["training: our data path vs the compute bound (the same steps on one pre-loaded batch)",
         times(data["pipeline_vs_compute_bound"]), f"{count(data['pipeline_img_s'])} vs {count(data['compute_bound_img_s'])} img/s"],
        ["loader alone: ours vs `ImageFolder` + `DataLoader` + PIL transforms over the same images as PNG files",
         times(data["loader_vs_naive_loader"]), f"{count(data['loader_only_img_s'])} vs {count(data['naive_loader_only_img_s'])} img/s"],
        ["training: ours vs training on that naive loader", times(data["training_vs_naive_training"]),
         f"{count(data['pipeline_img_s'])} vs {count(data['naive_training_img_s'])} img/s"],
        ["the most any data path could gain over training on the naive loader (the compute bound vs that training)",
         times(data["compute_bound_img_s"] / data["naive_training_img_s"]),
         f"{count(data['compute_bound_img_s'])} vs {count(data['naive_training_img_s'])} img/s"],
        ["training step: SparseNet (90% masked) vs LeNet", times(step["sparse_vs_dense"]),
         f"{step['sparse_ms']:.1f} vs {step['dense_ms']:.1f} ms"],
        ["LeNet training vs this machine's fp32 matmul", f"{flops['fraction_of_matmul']:.2f}",
         f"{flops['lenet_training_gflops']:.1f} of {flops['matmul_gflops']:.1f} GFLOP/s"],
    ]
    return (f"`metrics/bench.json`, {bench['machine'].get('device', 'cpu')}: {machine_line(bench['machine'], bench.get('commit'))}; batch "
            f"{bench['batch_size']}, {count(bench['images'])} images from `{bench['data']}`.\n\n"
            + markdown_table(["measurement", "ratio", "detail"], rows))


def bench_inference(bench: dict) -> str:
    """Images/s at batch 256 and milliseconds per layer, PyTorch and engine (``sparsenet bench``)."""
    inference = bench["inference"]
    ips = inference["images_per_second"]
    labels = {"dense_eager": "dense, PyTorch", "compact_eager": "compact 50% filters, PyTorch",
              "sparse_eager": "pruned, PyTorch", "dense_engine": "dense, engine", "sparse_engine": "pruned, engine",
              "compact_engine": "compact 50% filters, engine"}
    rows = [[label, count(ips[key]), times(ips[key] / ips["dense_eager"]),
             times(ips[key] / ips["dense_engine"]) if key.endswith("engine") else ""] for key, label in labels.items()]
    text = (f"`metrics/bench.json` ({machine_line(bench['machine'], bench.get('commit'))}; engine code {inference['engine']}): the run's pruned "
            f"model and a compact model from 50% filter pruning of its dense model, widths "
            f"{inference['compact_widths']}, {times(inference['compact_macs_fraction'])} the dense MACs.\n\n")
    text += markdown_table(["batch 256", "images/s", "vs dense PyTorch", "vs dense on the engine"], rows)
    layer_ms = inference["layer_ms"]
    eager_columns = ["conv1", "conv2", "fc1", "fc2", "fc3", "pooling+relu", "total"]
    engine_columns = ["input copy", "conv1 (+pool, ReLU)", "conv2 (+pool, ReLU)", "fc1", "fc2", "fc3", "total"]
    for title, columns, suffix in (("PyTorch", eager_columns, ""), ("engine", engine_columns, "_engine")):
        rows = [[model] + [f"{layer_ms[model + suffix][column]:.3f}" for column in columns]
                for model in ("dense", "sparse", "compact")]
        text += f"\nMilliseconds per batch, {title}:\n\n" + markdown_table(["model"] + columns, rows)
    return text


def bench_data(data: dict) -> str:
    """``sparsenet bench-data``: decoding a folder, prepare's peak memory, epochs from the memory map."""
    decode, memory, epoch = data["decode"], data["memory"], data["epoch"]
    ips = decode["images_per_second"]
    runs = memory["runs"]
    small, large = (runs[key] for key in sorted(runs, key=int))
    mib = 2 ** 20
    rows = [
        [f"`prepare` of {count(decode['images'])} PNG and JPEG files at `image_size` {decode['image_size']}, 1 worker",
         f"{count(ips['prepare_1_worker'])} images/s", ""],
        ["… 2 workers", f"{count(ips['prepare_2_workers'])} images/s", f"{times(decode['ratio_2_workers_vs_1'])} 1 worker"],
        ["`ImageFolder` + `DataLoader(num_workers=2)`, decoding and resizing only",
         f"{count(ips['imagefolder_2_workers'])} images/s",
         f"`prepare` on 2 workers: {times(decode['ratio_prepare_2_workers_vs_imagefolder'])} of it"],
        [f"peak anonymous memory of `prepare`, {count(small['images'])} images of {memory['image_size']} px, "
         f"{memory['workers']} workers", f"{count(small['peak_anonymous_bytes'] / mib)} MiB",
         f"{count(small['base_anonymous_bytes'] / mib)} MiB before it starts"],
        [f"… {count(large['images'])} images", f"{count(large['peak_anonymous_bytes'] / mib)} MiB",
         f"arrays {count(large['array_bytes'] / mib)} MiB, {memory['arrays_vs_peak']:.1f}× the peak; peak growth "
         f"{times(memory['peak_growth_4x_images'])} for 4× the images"],
        [f"a LeNet epoch over {count(epoch['images'])} images at {epoch['image_size']} px, batches from the memory map",
         f"{count(epoch['images_per_second']['memory_map'])} images/s",
         f"{times(epoch['ratio_memory_map_vs_in_memory'])} the split held in memory "
         f"({count(epoch['images_per_second']['in_memory'])} images/s)"],
    ]
    machines = {machine_line(part["machine"], part.get("commit")) for part in (decode, memory, epoch)}
    return (f"`metrics/bench_data.json` ({'; '.join(sorted(machines))}; median of {decode['repeats']} turns):\n\n"
            + markdown_table(["measurement", "result", "detail"], rows))


def bench_sweep(sweep: dict) -> str:
    """``sparsenet bench-sweep``: threads per point, and points per hour against DVC's queue."""
    threads, throughput = sweep["threads"], sweep["throughput"]
    ray, queue = throughput["ray"], throughput["queue"]
    rows = [
        [f"two 1-thread `{threads['stage']}` runs at once vs one {threads['cores']}-thread run after the other",
         times(threads["two_at_once_speedup"]),
         f"{threads['two_at_once_s']:.1f} vs {threads['one_at_a_time_s']:.1f} s (median of {threads['repeats']} turns)"],
        [f"{len(throughput['points'])} points (`{'`, `'.join(throughput['points'])}`), each sweep from a fresh clone "
         "and an empty cache: `sparsenet frontier sweep` vs DVC's queue with one job", times(throughput["ray_vs_queue"]),
         f"{ray['points_per_hour']:.1f} vs {queue['points_per_hour']:.1f} points per hour ({count(ray['seconds'])} vs "
         f"{count(queue['seconds'])} s); the same accuracies point by point: {'yes' if throughput['same_accuracies'] else '**no**'}"],
    ]
    return f"`metrics/bench_sweep.json` ({machine_line(sweep['machine'])}):\n\n" + markdown_table(["measurement", "ratio", "detail"], rows)


def sensitivity(curves: pd.DataFrame) -> str:
    """Each layer pruned alone without retraining: test accuracy lost (points) per share asked for."""
    unpruned = curves[curves["share"] == 0]["accuracy"].iloc[0]
    curves = curves[curves["share"] > 0]
    shares = sorted(curves["share"].unique())
    rows = []
    for layer, group in curves.groupby("layer", sort=False):
        drops = dict(zip(group["share"], group["drop"]))
        rows.append([f"`{layer}`", count(group["weights"].iloc[0])] + [f"{100 * drops[s]:.2f}" if s in drops else "" for s in shares])
    return (f"`plots/sensitivity.csv`: points of test accuracy lost, from {pct(unpruned)} unpruned.\n\n"
            + markdown_table(["layer", "weights"] + [f"{share:g}" for share in shares], rows))


# --- sources and blocks -------------------------------------------------------------------------------------

class Sources:
    """The committed result files under ``root``, each read on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _read(self, name: str, parse: Callable[[Path], Any]) -> Any:
        """``parse(path)`` of a result file; a missing or malformed one is one error line naming it."""
        try:
            return parse(self.root / name)
        except FileNotFoundError:
            raise SparseNetError(f"{name}: not found (the rendered blocks are made from the committed results)") from None
        except (json.JSONDecodeError, yaml.YAMLError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise SparseNetError(f"{name}: unreadable ({' '.join(str(exc).split())[:200]})") from None

    def _json(self, name: str) -> dict:
        return self._read(name, lambda path: json.loads(path.read_text()))

    def _csv(self, name: str, **options) -> pd.DataFrame:
        return self._read(name, lambda path: pd.read_csv(path, **options))

    def _yaml(self, name: str) -> dict:
        return self._read(name, lambda path: yaml.safe_load(path.read_text()))

    params = cached_property(lambda self: self._yaml("params.yaml"))
    evaluate = cached_property(lambda self: self._json("metrics/evaluate.json"))
    speed = cached_property(lambda self: self._json("metrics/speed.json"))
    bench = cached_property(lambda self: self._json("metrics/bench.json"))
    bench_data = cached_property(lambda self: self._json("metrics/bench_data.json"))
    bench_sweep = cached_property(lambda self: self._json("metrics/bench_sweep.json"))
    frontier = cached_property(lambda self: self._csv("results/frontier/frontier.csv", dtype={"commits": str}))
    runs = cached_property(lambda self: self._csv("results/frontier/frontier_runs.csv", dtype={"commit": str}))
    sensitivity = cached_property(lambda self: self._csv("plots/sensitivity.csv"))


BLOCKS: dict[str, Callable[[Sources], str]] = {
    "default-params": lambda s: default_params(s.params),
    "default-run": lambda s: default_run(s.evaluate),
    "layers": lambda s: layers(s.evaluate),
    "speed": lambda s: speed(s.speed),
    "engine-agreement": lambda s: engine_agreement(s.speed),
    "frontier-headline": lambda s: frontier_headline(s.frontier, s.runs),
    "frontier-accuracy": lambda s: frontier_full(s.frontier, "accuracy"),
    "frontier-vs-control": lambda s: frontier_full(s.frontier, "vs_control"),
    "frontier-pairs": lambda s: frontier_pairs(s.runs),
    "targets": lambda s: targets(s.evaluate, s.speed, s.bench, s.frontier),
    "bench-training": lambda s: bench_training(s.bench),
    "bench-inference": lambda s: bench_inference(s.bench),
    "bench-data": lambda s: bench_data(s.bench_data),
    "bench-sweep": lambda s: bench_sweep(s.bench_sweep),
    "sensitivity": lambda s: sensitivity(s.sensitivity),
}


def render(text: str, sources: Sources, name: str = "text") -> tuple[str, list[str]]:
    """``text`` with every rendered block made afresh from ``sources``; and the names of the blocks that changed."""
    if len(OPENING.findall(text)) != len(BLOCK.findall(text)):
        raise SparseNetError(f"{name}: a '<!-- rendered: … -->' line without its '<!-- end rendered -->' line")
    changed = []

    def fill(match: re.Match) -> str:
        block = match["name"]
        if block not in BLOCKS:
            raise SparseNetError(f"{name}: unknown rendered block {block!r}; known: {', '.join(BLOCKS)}")
        try:
            body = BLOCKS[block](sources).rstrip("\n") + "\n"
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # a result file without what the block shows
            detail = f"no {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
            raise SparseNetError(f"{name}: block {block!r} cannot be rendered from the result files ({detail}); "
                                 "re-run the step that writes them") from None
        if body != match["body"]:
            changed.append(block)
        return match[1] + body + match[4]

    return BLOCK.sub(fill, text), changed


def documents(root: Path) -> list[Path]:
    """README.md and every Markdown file of docs/ (those without a block are left as they are)."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sparsenet readme", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a block differs from what the committed files render")
    parser.add_argument("--root", type=Path, default=Path("."), help="the project folder (default: here)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with one_line_errors():
        sources, stale = Sources(args.root), []
        if not (args.root / "README.md").is_file():
            raise SparseNetError(f"{args.root / 'README.md'}: not found; run sparsenet readme in the project's folder "
                                 "(or name it with --root)")
        for path in documents(args.root):
            name = path.relative_to(args.root).as_posix()
            text = path.read_text(encoding="utf-8")
            rendered, changed = render(text, sources, name)
            if changed:
                stale.append(f"{name} ({', '.join(changed)})")
                if not args.check:
                    write_text(path, rendered)
        if args.check and stale:
            print(f"error: rendered blocks differ from the committed results in {'; '.join(stale)}: "
                  "run python -m sparsenet.readme", file=sys.stderr)
            raise SystemExit(1)
        if not args.check:
            print(f"rendered: {'; '.join(stale)}" if stale else "every rendered block is up to date")


if __name__ == "__main__":
    main()
