"""The accuracy–sparsity frontier: sweep methods × sparsities × seeds as DVC experiments on Ray, then tabulate what DVC recorded.

    sparsenet frontier sweep            # every point and seed not yet run on this code, then the tables
    sparsenet frontier plot             # the tables from the experiments of this code (--all-commits: every one)
    sparsenet frontier plot --runs FILE # the tables from a runs table recorded earlier

``sweep`` runs each point — ``-S prune.method=M -S prune.sparsity=S -S seed=N`` (structured once
per structure and criterion), named ``sweep-<values>-seed<n>`` — as a Ray task: one ordinary
``dvc exp run`` in a clean clone of HEAD, published with ``dvc exp push`` (:mod:`sparsenet.sweep`).
A point is skipped when an experiment of this code (:mod:`sparsenet.experiments`) already has its
params.  Every seed retrains everything — dense, control, the small model — because that is part
of the variance; within one seed DVC's run cache restores what another point already trained.

Both commands write, from ``dvc exp show --json`` (no tracker of their own), into ``--out``:
``frontier_runs.csv`` (one row per experiment and model: the pruned model, its small-dense
baseline, the dense model and the control, each naming its experiment's commit),
``frontier.csv`` (per line and target: mean and standard deviation over the seeds, the same of
each pruned run minus its own seed's control, the counts), ``frontier.md`` (those as Markdown
tables) and ``frontier.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import pandas as pd

from sparsenet.errors import SparseNetError, one_line_errors
from sparsenet.experiments import Code, Experiment, dvc, finished, git
from sparsenet.io import write_csv, write_text
from sparsenet.options import PRUNE_CRITERIA, PRUNE_METHODS, PRUNE_STRUCTURES, default
from sparsenet.pruning import pruned_layer_names

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_THREADS = 1  # two 1-thread points beat one 2-thread point on 2 cores (sparsenet bench sweep)
RUN_COLUMNS = ("experiment", "commit", "kind", "line", "method", "structure", "criterion", "allocation", "scope",
               "schedule", "exclude", "seed", "target_sparsity", "sparsity", "sparsity_all_layers", "accuracy",
               "control_accuracy", "params")
COLUMNS = ("kind", "line", "schedule", "target_sparsity", "sparsity_mean", "accuracy_mean", "accuracy_std",
           "vs_control_mean", "vs_control_std", "vs_control_n", "n", "seeds", "commits")
KINDS = ("pruned", "small", "dense", "control")  # what a row measures
UNKNOWN_COMMIT = "?"  # a run recorded without its commit (tables of earlier releases)
# Params besides method, structure, scope and exclude that make a different line when not at
# their default (the schedule also splits lines in the figure).
VARIANT_KEYS = ("rewind", "epochs", "finetune_epochs", "lr", "lr_schedule", "round_to")
# Of those, the ones the control and the small model depend on (they do not prune).
CONTROL_KEYS = ("epochs", "finetune_epochs", "lr", "lr_schedule")
SMALL_KEYS = ("epochs", "finetune_epochs")
EXIT_POINTS_FAILED = 100  # a sweep whose n points failed exits 100 + n, n up to 25 (125: 25 or more)
MAX_FAILED_STATUS = 25  # below 126..128 (the shell's) and 130 (interrupted); a refused command exits 2
EXIT_INTERRUPTED = 130


def sweep_points(methods: list[str], sparsities: list[float], structures: list[str],
                 criteria: list[str] = ("l2",), seeds: list[int] = (0,)) -> list[dict[str, str]]:
    """Every ``-S`` set of the sweep: structured pruning once per structure and criterion; each
    point once per seed."""
    points = []
    for method in methods:
        variants = ([{"prune.structure": s, "prune.criterion": c} for s in structures for c in criteria]
                    if method == "structured" else [{}])
        for variant in variants:
            for sparsity in sparsities:
                for seed in seeds:
                    points.append({"prune.method": method, **variant, "prune.sparsity": f"{sparsity:g}",
                                   "seed": str(seed)})
    return points


def experiment_name(point: dict[str, str], extra: list[str]) -> str:
    """``sweep-<values>-seed<n>``: the point's values, then each ``--set`` as its key (without
    ``prune.``) and value (``prune.epochs=6`` → ``epochs6``, ``train.epochs=6`` → ``trainepochs6``),
    as a git ref name (letters, digits, ``.``, ``-``, ``_``).  Where a value loses characters on
    the way (``[fc1, conv1]``), a digest of every value follows, so two points never share a name."""
    values = [v for key, v in point.items() if key != "seed"]
    values += [key.removeprefix("prune.").replace(".", "") + value for key, _, value in (e.partition("=") for e in extra)]
    cleaned = ["".join(ch for ch in value if ch.isascii() and (ch.isalnum() or ch in ".-_")).strip(".")
               for value in values]
    cleaned = [value.replace("..", ".") for value in cleaned]
    name = "sweep-" + "-".join(v for v in cleaned if v)
    if cleaned != values:
        name += "-" + hashlib.sha1("\0".join(values).encode()).hexdigest()[:6]
    return f"{name}-seed{point['seed']}"


def interleave_seeds(points: list[dict[str, str]]) -> list[dict[str, str]]:
    """The points reordered so that neighbours have different seeds: the first points to run at
    once train different dense models, and the later ones of each seed find theirs in DVC's run
    cache instead of training it again at the same time."""
    by_seed: dict[str, list[dict[str, str]]] = {}
    for point in points:
        by_seed.setdefault(point["seed"], []).append(point)
    queues = list(by_seed.values())
    return [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]


def _other_settings(params: dict) -> list[tuple[str, object]]:
    """``train.*`` and ``data.*`` params that differ from their defaults (a run on other data or
    with other dense training is not a point of the same line).  Seeds are replicates, not settings."""
    data = params.get("data") or {}
    keys = [f"train.{key}" for key in default("train")] + ["data.source", "data.image_size"]
    if data.get("source", default("data.source")) == "synthetic":
        keys += [f"data.synthetic.{key}" for key in default("data.synthetic")]
    settings = []
    for key in keys:
        value = params
        for part in key.split("."):
            value = (value or {}).get(part) if isinstance(value, dict) else None
        if value is not None and value != default(key):
            settings.append((key, value))
    return settings


def _covered_sparsity(sparse: dict, method: str, structure: str, exclude: list[str]) -> float:
    """``sparse.sparsity`` over the layers the target covers; recomputed from the per-layer counts
    for experiments older than that definition (their ``sparsity`` counted every layer)."""
    if "pruned_layers" in sparse or "layers" not in sparse:
        return sparse["sparsity"]
    covered = [sparse["layers"][name] for name in pruned_layer_names(method, structure or "filters", exclude)
               if name in sparse["layers"]]
    return sum(layer["zeros"] for layer in covered) / sum(layer["total"] for layer in covered)


def experiment_rows(experiment: Experiment) -> list[dict]:
    """Rows of :data:`RUN_COLUMNS` for one experiment: its pruned model, its small-dense baseline,
    its dense model and its control."""
    metrics, params = experiment.metrics, experiment.params
    prune = params.get("prune") or {}

    def param(key: str):  # a key missing from an experiment's params.yaml had its default
        return prune.get(key, default(f"prune.{key}"))

    def variants(keys: tuple[str, ...]) -> str:
        return "".join(f", {key} {param(key)}" for key in keys if param(key) != default(f"prune.{key}"))

    method = param("method")
    structured = method == "structured"
    structure = param("structure") if structured else ""
    criterion = param("criterion") if structured else ""
    allocation = param("allocation") if structured or param("scope") == "layer" else ""
    scope = param("scope") if not structured else "layer"
    exclude = param("exclude") or []
    settings = "".join(f", {key} {value}" for key, value in _other_settings(params))
    line = f"structured ({structure}, {criterion})" if structured else f"{method} ({scope})"
    line += ", sensitivity allocation" if allocation == "sensitivity" else ""
    line += f", {' '.join(exclude)} dense" if exclude else ""
    if (method == "taylor" or criterion == "taylor") and param("score_batches") != default("prune.score_batches"):
        line += f", score_batches {param('score_batches')}"
    line += variants(VARIANT_KEYS) + settings
    sparse, dense = metrics["sparse"], metrics["dense"]
    control = metrics.get("control") or {}
    base = {"experiment": experiment.name, "commit": experiment.baseline[:12],
            "control_accuracy": control.get("accuracy", ""), "method": method, "structure": structure,
            "criterion": criterion, "allocation": allocation, "scope": scope, "schedule": param("schedule"),
            "exclude": " ".join(exclude), "seed": params.get("seed", default("seed")),
            "target_sparsity": param("sparsity")}
    covered = _covered_sparsity(sparse, method, structure, exclude)
    rows = [{**base, "kind": "pruned", "line": line, "sparsity": covered,
             "sparsity_all_layers": sparse.get("sparsity_all_layers", sparse["sparsity"]),
             "accuracy": sparse["accuracy"], "params": sparse.get("nonzero_params", "")}]
    if "small" in metrics:
        small = metrics["small"]
        kept = f", {' '.join(exclude)} dense" if exclude else ""
        if structured:  # the widths follow the allocation; by sensitivity, also the criterion
            by = f", {criterion}, sensitivity allocation" if allocation == "sensitivity" else ""
            matched = f"widths of structured ({structure}{by}{variants(('round_to',))}{kept})"
        else:  # the non-zero count follows the target and the layers it covers (scope: how it spreads)
            spread = f", {scope} scope" if scope != default("prune.scope") else ""
            matched = f"parameters of the pruned model{spread}{kept}"
        share = 1 - small["params"] / dense["params"] if dense.get("params") else covered
        rows.append({**base, "kind": "small", "control_accuracy": "",
                     "line": f"small dense, from scratch ({matched}){variants(SMALL_KEYS)}{settings}",
                     "sparsity": share, "sparsity_all_layers": share, "accuracy": small["accuracy"],
                     "params": small["params"]})
    references = {"dense": (f"dense LeNet{settings}", dense),
                  "control": (f"control: dense, same total epochs{variants(CONTROL_KEYS)}{settings}", control)}
    for kind, (name, model) in references.items():
        if model:
            rows.append({**base, "kind": kind, "line": name, "control_accuracy": "", "method": "", "structure": "",
                         "criterion": "", "allocation": "", "scope": "", "exclude": "", "target_sparsity": 0.0,
                         "sparsity": 0.0, "sparsity_all_layers": 0.0, "accuracy": model["accuracy"],
                         "params": model.get("params", "")})
    return rows


def collect_runs(experiments: list[Experiment]) -> list[dict]:
    """Every experiment's rows, without repeats — the same small model, dense model or control
    behind several experiments of one seed is listed once — sorted."""
    rows = [row for experiment in experiments for row in experiment_rows(experiment)]
    return unique_runs(rows)


def unique_runs(rows: list[dict]) -> list[dict]:
    """``rows`` without repeats (see :func:`collect_runs`), sorted by kind, line, sparsity, seed."""
    kept, seen = [], set()
    for row in rows:
        # a small model, dense model or control is told apart by its line, seed, size and accuracy
        # (dvc exp show leaves out list-valued metrics such as small.widths); a pruned model by its experiment
        key = ((row["kind"], row["experiment"], row["commit"]) if row["kind"] == "pruned" else
               (row["kind"], row["line"], row["target_sparsity"] if row["kind"] == "small" else 0, row["seed"],
                row["params"], round(row["accuracy"], 6)))
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return sorted(kept, key=lambda r: (KINDS.index(r["kind"]), r["line"], r["sparsity"], r["seed"], r["experiment"]))


def read_runs(path: Path) -> list[dict]:
    """The rows of a runs table written earlier (``frontier_runs.csv``)."""
    try:
        frame = pd.read_csv(path, dtype={"commit": str, "exclude": str, "experiment": str}, keep_default_na=False)
    except FileNotFoundError:
        raise SparseNetError(f"{path}: no such runs table") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise SparseNetError(f"{path}: not a frontier runs table ({' '.join(str(exc).split())})") from None
    missing = [column for column in RUN_COLUMNS if column not in frame.columns]
    if missing:
        raise SparseNetError(f"{path}: not a frontier runs table (missing the columns {', '.join(missing)})")
    numeric = ["seed", "target_sparsity", "sparsity", "sparsity_all_layers", "accuracy"]
    values = frame[numeric].apply(pd.to_numeric, errors="coerce")
    bad = values.isna().any(axis=1)
    if bad.any():
        row = int(bad.idxmax())
        column = next(c for c in numeric if pd.isna(values.at[row, c]))
        raise SparseNetError(f"{path}: line {row + 2}: {column} = {frame.at[row, column]!r}; expected a number")
    frame[numeric] = values
    frame["seed"] = frame["seed"].astype(int)
    for column, kind in (("control_accuracy", float), ("params", int)):  # empty where not measured
        frame[column] = [kind(value) if value not in ("", None) and not pd.isna(value) else ""
                         for value in frame[column]]
    return frame[list(RUN_COLUMNS)].to_dict("records")


def aggregate(rows: list[dict]) -> list[dict]:
    """One row of :data:`COLUMNS` per (kind, line, schedule, target sparsity): the accuracy's mean
    and sample standard deviation over the runs (empty with one), the same of each pruned run
    minus its own control (``vs_control``, over the ``vs_control_n`` runs that know it), the mean
    measured sparsity, the seeds and the commits the runs are based on (``?``: not recorded)."""
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    frame["schedule"] = frame["schedule"].where(frame["kind"] == "pruned", "")
    frame["vs_control"] = frame["accuracy"] - pd.to_numeric(frame["control_accuracy"].replace("", None))
    frame["commit"] = frame["commit"].fillna("").astype(str).str[:7].replace("", UNKNOWN_COMMIT)
    groups = frame.groupby(["kind", "line", "schedule", "target_sparsity"], sort=False)
    means = groups.agg(sparsity_mean=("sparsity", "mean"), accuracy_mean=("accuracy", "mean"),
                       accuracy_std=("accuracy", "std"), vs_control_mean=("vs_control", "mean"),
                       vs_control_std=("vs_control", "std"), vs_control_n=("vs_control", "count"),
                       n=("accuracy", "size"),
                       seeds=("seed", lambda seeds: " ".join(str(seed) for seed in sorted(seeds))),
                       commits=("commit", lambda commits: " ".join(sorted(set(commits))))).reset_index()
    means["order"] = means["kind"].map(KINDS.index)
    means = means.sort_values(["order", "line", "target_sparsity"], kind="stable")[list(COLUMNS)]
    return means.astype(object).where(means.notna(), "").to_dict("records")


def markdown_table(means: list[dict], value: str = "accuracy") -> str:
    """The aggregated rows as a Markdown table: one row per line (schedule named where not the
    default), one column per target sparsity, cells ``mean ± std`` in percent (``value``
    ``accuracy``; the dense model and the control sit at sparsity 0) or in signed points
    (``vs_control``: pruned lines only); ``(n=…)`` where fewer runs than the most any cell has,
    ``†`` where a run's commit was not recorded."""
    frame = pd.DataFrame(means, columns=COLUMNS)
    frame = frame[frame[f"{value}_mean"] != ""]
    if frame.empty:
        return "(no runs)\n"
    count = "vs_control_n" if value == "vs_control" else "n"
    most = frame[count].max()
    sign = "+" if value == "vs_control" else ""

    def cell(row) -> str:
        text = f"{row[f'{value}_mean'] * 100:{sign}.2f}"
        text += f" ± {row[f'{value}_std'] * 100:.2f}" if row[f"{value}_std"] != "" else ""
        text += f" (n={row[count]})" if row[count] < most else ""
        return text + (" †" if UNKNOWN_COMMIT in row["commits"].split() else "")

    other = ~frame["schedule"].isin(["", default("prune.schedule")])
    frame = frame.assign(line=frame["line"] + other.map({True: ", ", False: ""})
                         + frame["schedule"].where(other, "") + other.map({True: " schedule", False: ""}),
                         cell=frame.apply(cell, axis=1))
    table = frame.pivot_table(index="line", columns="target_sparsity", values="cell", aggfunc="first", sort=False)
    table = table.reindex(columns=sorted(table.columns)).fillna("")
    table.columns = [f"{target:g}" for target in table.columns]
    text = table.rename_axis("line").to_markdown(tablefmt="github", stralign="left", disable_numparse=True) + "\n"
    if frame["commits"].str.split().map(lambda commits: UNKNOWN_COMMIT in commits).any():
        text += "\n† includes runs recorded without their commit\n"
    return text


def markdown_report(means: list[dict]) -> str:
    """``frontier.md``: the accuracy table, then the pruned lines against their controls."""
    return ("## Test accuracy (%), mean ± std over seeds\n\n" + markdown_table(means)
            + "\n## Pruned minus its own seed's control (points), mean ± std over seeds\n\n"
            + markdown_table(means, "vs_control"))


def write_tables(rows: list[dict], out: Path) -> list[dict]:
    """``frontier_runs.csv`` (``rows``), ``frontier.csv`` (:func:`aggregate`), ``frontier.md``
    (:func:`markdown_report`) and ``frontier.png`` in ``out``; returns the aggregated rows."""
    if not rows:
        raise SparseNetError("no finished experiment of this code with metrics/evaluate.json: run a sweep "
                             "(`sparsenet frontier sweep`), or plot every commit's (--all-commits)")
    means = aggregate(rows)
    for mean in means:
        seeds = mean["seeds"].split()
        if len(set(seeds)) < len(seeds):
            print(f"notice: {mean['line']} at {mean['target_sparsity']:g} has several runs of one seed "
                  f"({mean['seeds']}; commits {mean['commits']})", file=sys.stderr)
    write_csv(out / "frontier_runs.csv", rows, RUN_COLUMNS)
    write_csv(out / "frontier.csv", means, COLUMNS)
    write_text(out / "frontier.md", markdown_report(means))

    from sparsenet.plots import frontier_figure

    frontier_figure(means, out / "frontier.png")
    return means


def current_experiments(code: Code, all_commits: bool = False) -> list[Experiment]:
    """The finished experiments that ran this code (:meth:`Code.runs_this`), or every one."""
    experiments = finished(cwd=code.cwd)
    return experiments if all_commits else [e for e in experiments if code.runs_this(e.rev)]


def _sweep(args: argparse.Namespace) -> int:
    """Run the points not yet done for this code; returns how many failed."""
    from sparsenet import sweep

    root = Path(git("rev-parse", "--show-toplevel").stdout.strip())
    code = Code(root)
    if git("status", "--porcelain", "--untracked-files=no", cwd=root).stdout.strip():
        print(f"notice: the sweep runs commit {code.head[:12]}; uncommitted changes are not part of it "
              "(git status)", file=sys.stderr)
    remote = _git_remote(root, args.git_remote, args.address)
    elsewhere = not (os.path.isdir(remote) and os.path.samefile(remote, root))
    if elsewhere:
        _check_pushed(root, remote, code.head)
    if elsewhere:  # what every machine published there counts as done
        _pull(root, remote)
    points, seen = [], set()
    for values in interleave_seeds(sweep_points(args.methods, args.sparsities, args.structures, args.criteria,
                                                args.seeds)):
        sets = tuple(f"{key}={value}" for key, value in values.items()) + tuple(args.extra)
        name = experiment_name(values, args.extra)
        if name not in seen:  # a point given twice runs once
            seen.add(name)
            points.append((sweep.Point(name, sets), code.params(sets)))
    current = current_experiments(code)
    todo = [point for point, params in points if not any(e.params == params for e in current)]
    print(f"{len(points)} points: {len(points) - len(todo)} already done for this code, {len(todo)} to run")
    failed = []
    if todo:
        local = args.address is None
        cache_dir = args.cache_dir or (dvc("cache", "dir", cwd=root).strip() if local else None)
        dvc_remote = _remote_for_clones(root, args.dvc_remote or _default_remote(root))
        if not local and not cache_dir and not dvc_remote:
            print("notice: no --cache-dir shared by the nodes and no DVC remote: the experiments' models stay "
                  "out of reach (their metrics are published with them)", file=sys.stderr)
        # locally the clones sit beside the cache, so their outputs are hard links into it
        scratch = str(root / ".sparsenet" / "points") if local else None
        source = sweep.Source(remote, code.head, cache_dir, dvc_remote, scratch)
        outcomes = sweep.run([point for point in todo], source, args.threads, args.address, args.jobs)
        failed = [outcome for outcome in outcomes if outcome.error]
        for outcome in failed:
            if outcome.log:
                log = root / ".sparsenet" / "sweep" / f"{outcome.name}.log"
                write_text(log, outcome.log)
        if elsewhere:
            _pull(root, remote)
        print(f"{len(outcomes) - len(failed)} points done, {len(failed)} failed"
              + (" (logs: .sparsenet/sweep/)" if any(o.log for o in failed) else ""))
    if failed and not current_experiments(code):
        print("no experiment of this code to tabulate yet", file=sys.stderr)
    else:
        _plot(code, args.out, all_commits=False)
    return len(failed)


def _git_remote(root: Path, given: str | None, address: str | None) -> str:
    """The git remote the points clone from: ``given`` (a URL, a path, or the name of one of
    the repo's remotes), else this repo, which only a cluster on this machine can reach."""
    if given is None:
        if address is not None and address.rpartition(":")[0] not in ("127.0.0.1", "localhost", "[::1]"):
            raise SparseNetError(f"--address {address}: the other machines cannot clone this folder; pass "
                                 "--git-remote URL, a git remote every node reaches (push HEAD there first)")
        return str(root)
    names = git("remote", cwd=root).stdout.split()
    url = git("remote", "get-url", "--", given, cwd=root).stdout.strip() if given in names else given
    # a relative path means the same folder from every clone: made absolute here, where it was
    # given (a remote's relative URL: from the repo's root)
    local = (root if given in names else Path.cwd()) / url
    return str(local.resolve()) if "://" not in url and not url.startswith("git@") and local.exists() else url


def _check_pushed(root: Path, remote: str, commit: str) -> None:
    """Stop before any point runs when ``commit`` is not on the git remote ``remote``."""
    try:  # branches and tags only: a clone fetches nothing else (experiment refs included)
        listed = git("ls-remote", "--heads", "--tags", "--", remote, cwd=root).stdout.splitlines()
    except SparseNetError as exc:
        raise SparseNetError(f"--git-remote {remote}: cannot list it ({exc})") from None
    refs = dict(line.split()[::-1] for line in listed)
    unknown = [ref for ref, sha in refs.items()
               if git("cat-file", "-e", f"{sha}^{{commit}}", cwd=root, check=False).returncode != 0]
    if unknown:  # their commits, into this repo's objects only (FETCH_HEAD; no ref of the user's moves)
        git("fetch", "--quiet", "--no-tags", "--", remote, *unknown, cwd=root, check=False)
    for sha in refs.values():
        if sha == commit or git("merge-base", "--is-ancestor", commit, sha, cwd=root, check=False).returncode == 0:
            return
    raise SparseNetError(f"--git-remote {remote}: commit {commit[:12]} is not there; push it first "
                         f"(git push {remote} HEAD)")


def _pull(root: Path, remote: str) -> None:
    """Fetch every experiment published to the git remote ``remote`` (their refs: metrics and
    params; outputs stay in the DVC remote until ``dvc exp apply`` + ``dvc pull``).  A local
    experiment of the same name but other content is kept (DVC warns and leaves it)."""
    dvc("exp", "pull", "--no-cache", "--all-commits", remote, cwd=root)


def _remote_for_clones(root: Path, remote: str | None) -> str | None:
    """``remote`` as the points' clones can use it: its name where the project's ``.dvc/config``
    (which a clone has) defines it, else its URL (a remote of ``.dvc/config.local`` or of the
    user's config; its other settings stay behind, so a notice says so)."""
    from sparsenet.sweep import is_url

    if remote is None or is_url(remote):
        return remote
    try:
        url = dvc("config", "--project", f"remote.{remote}.url", cwd=root).strip()
        if "://" in url or os.path.isabs(url):
            return remote
        return str((root / ".dvc" / url).resolve())  # a relative path would land inside each clone
    except SparseNetError:
        try:
            url = dvc("config", f"remote.{remote}.url", cwd=root).strip()
        except SparseNetError:
            raise SparseNetError(f"--dvc-remote {remote}: no such DVC remote (dvc remote list)") from None
        print(f"notice: DVC remote {remote} is not in .dvc/config: the points use its URL {url} and none of its "
              "other settings (commit it with `dvc remote add --project`)", file=sys.stderr)
        return url


def _default_remote(root: Path) -> str | None:
    """The project's default DVC remote, if it has one."""
    try:
        return dvc("remote", "default", cwd=root).strip() or None
    except SparseNetError:
        return None


def _plot(code: Code, out: Path, all_commits: bool) -> None:
    experiments = current_experiments(code, all_commits)
    rows = collect_runs(experiments)
    means = write_tables(rows, out)
    print(f"{len(experiments)} experiments, {len(means)} points -> {out}/frontier.png, frontier.csv, "
          "frontier_runs.csv, frontier.md")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sparsenet frontier", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep", help="run methods × sparsities × seeds as DVC experiments on Ray, then plot")
    sweep.add_argument("--methods", nargs="+", default=list(PRUNE_METHODS), choices=PRUNE_METHODS)
    sweep.add_argument("--sparsities", nargs="+", type=float, default=list(DEFAULT_SPARSITIES))
    sweep.add_argument("--structures", nargs="+", default=[default("prune.structure")], choices=PRUNE_STRUCTURES)
    sweep.add_argument("--criteria", nargs="+", default=list(PRUNE_CRITERIA), choices=PRUNE_CRITERIA,
                       help="how structured pruning ranks filters / channels (default: %(default)s)")
    sweep.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS),
                       help="every point runs once per seed (default: %(default)s)")
    sweep.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                       help="more params for every experiment, e.g. --set prune.epochs=6")
    sweep.add_argument("--address", default=None, metavar="HOST:PORT",
                       help="join this Ray cluster (default: $RAY_ADDRESS, else a local instance on 127.0.0.1)")
    sweep.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                       help="CPUs and PyTorch threads per point (default %(default)s: on 2 cores two 1-thread points "
                       "at once beat one 2-thread point)")
    sweep.add_argument("--jobs", type=int, default=None,
                       help="local instance: points at once (default: cores / threads); on a cluster each node runs "
                       "as many as its `ray start --num-cpus` allows")
    sweep.add_argument("--git-remote", default=None, metavar="URL",
                       help="where each point clones HEAD from and pushes its experiment to (default: this repo)")
    sweep.add_argument("--cache-dir", default=None, metavar="DIR",
                       help="a DVC cache every node shares (default, local instance: this repo's cache)")
    sweep.add_argument("--dvc-remote", default=None, metavar="NAME|URL",
                       help="DVC remote for inputs, outputs and run cache (default: the project's default remote)")
    plot = sub.add_parser("plot", help="the tables and figure from the experiments of this code")
    plot.add_argument("--all-commits", action="store_true",
                      help="every finished experiment, whatever code it ran (each row names its commit)")
    plot.add_argument("--runs", type=Path, metavar="CSV",
                      help="a runs table recorded earlier (frontier_runs.csv) instead of DVC's experiments")
    for command in (sweep, plot):
        command.add_argument("--out", type=Path, default=Path("plots"),
                             help="folder of frontier.png, frontier.csv, frontier_runs.csv, frontier.md "
                             "(default %(default)s)")
    args = parser.parse_args(argv)
    with one_line_errors():
        if args.command == "plot":
            if args.runs is not None:
                rows = read_runs(args.runs)
                means = write_tables(rows, args.out)
                print(f"{len(rows)} runs, {len(means)} points -> {args.out}")
            else:
                _plot(Code(), args.out, args.all_commits)
            return
        if len(set(args.seeds)) != len(args.seeds) or any(not 0 <= s < 2**32 for s in args.seeds):
            raise SparseNetError(f"--seeds {args.seeds} not allowed; expected distinct integers in 0..{2**32 - 1}")
        if args.threads < 1 or (args.jobs is not None and args.jobs < 1):
            raise SparseNetError("--threads and --jobs: expected integers ≥ 1")
        args.address = args.address or os.environ.get("RAY_ADDRESS") or None
        try:
            failed = _sweep(args)
        except KeyboardInterrupt:
            print("interrupted: the points published so far stand; the same command runs the rest", file=sys.stderr)
            raise SystemExit(EXIT_INTERRUPTED) from None
    if failed:
        raise SystemExit(EXIT_POINTS_FAILED + min(failed, MAX_FAILED_STATUS))


if __name__ == "__main__":
    main()
