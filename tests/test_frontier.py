"""Reading the frontier back from `dvc exp show --json` (the shape DVC 3 prints)."""

from sparsenet.frontier import collect_points, sweep_points


def _rev(name: str, method: str, sparsity: float, accuracy: float) -> dict:
    return {"rev": name, "name": name, "data": {
        "params": {"params.yaml": {"data": {"prune": {"method": method, "sparsity": sparsity, "schedule": "cubic"}}}},
        "metrics": {"metrics/evaluate.json": {"data": {
            "dense": {"accuracy": 0.91}, "control": {"accuracy": 0.914},
            "sparse": {"sparsity": sparsity, "accuracy": accuracy}}}},
    }}


def _experiment(state: str | None, rev: dict) -> dict:
    executor = None if state is None else {"state": state}
    return {"executor": executor, "name": rev["name"], "revs": [rev]}


def test_unfinished_experiments_are_left_out_and_the_baseline_is_not_repeated():
    baseline = _rev("abc123", "magnitude", 0.95, 0.9121)
    show = [{"rev": "workspace", "data": baseline["data"], "experiments": None},
            {**baseline, "experiments": [
                _experiment("success", _rev("sweep-magnitude-095", "magnitude", 0.95, 0.9121)),
                _experiment(None, _rev("by-hand", "random", 0.5, 0.90)),
                _experiment("running", _rev("sweep-random-09", "random", 0.9, 0.9121)),  # baseline's metrics
                _experiment("queued", _rev("sweep-random-095", "random", 0.95, 0.9121)),
                _experiment("failed", _rev("sweep-random-098", "random", 0.98, 0.5)),
            ]}]
    rows = collect_points(show)
    assert [(r["experiment"], r["line"], r["accuracy"]) for r in rows] == [
        ("sweep-magnitude-095", "magnitude (global)", 0.9121), ("by-hand", "random (global)", 0.90)]
    assert rows[0]["control_accuracy"] == 0.914 and rows[0]["dense_accuracy"] == 0.91


def test_sweep_points_cover_methods_and_structures():
    points = sweep_points(["magnitude", "structured"], [0.5, 0.9], ["filters", "channels"])
    assert len(points) == 2 + 4
    assert {"prune.method": "structured", "prune.sparsity": "0.9", "prune.structure": "channels"} in points


def test_keys_missing_from_an_experiments_params_take_the_configs_defaults():
    from sparsenet.config import PruneConfig

    rev = _rev("old-exp", "magnitude", 0.9, 0.9)
    del rev["data"]["params"]["params.yaml"]["data"]["prune"]["schedule"]  # params.yaml without the key
    (row,) = collect_points([{"rev": "workspace", "data": rev["data"], "experiments": None}])
    assert row["schedule"] == PruneConfig().schedule == "cubic"
    assert row["scope"] == PruneConfig().scope and row["line"] == "magnitude (global)"


def test_rows_carry_the_sparsity_over_covered_and_over_all_layers():
    rev = _rev("exclude-fc1", "magnitude", 0.9, 0.88)
    rev["data"]["params"]["params.yaml"]["data"]["prune"]["exclude"] = ["fc1"]
    sparse = rev["data"]["metrics"]["metrics/evaluate.json"]["data"]["sparse"]
    sparse["sparsity_all_layers"] = 0.2
    (row,) = collect_points([{"rev": "workspace", "data": rev["data"], "experiments": None}])
    assert (row["sparsity"], row["sparsity_all_layers"]) == (0.9, 0.2)
    assert row["line"] == "magnitude (global), fc1 dense" and row["exclude"] == "fc1"


def test_runs_that_differ_beyond_method_and_sparsity_are_separate_lines():
    plain = _rev("plain", "magnitude", 0.9, 0.90)
    rewound = _rev("rewound", "magnitude", 0.9, 0.85)
    rewound["data"]["params"]["params.yaml"]["data"]["prune"].update({"rewind": "init", "epochs": 5})
    rows = collect_points([{**plain, "experiments": [_experiment("success", rewound)]}])
    assert sorted(row["line"] for row in rows) == ["magnitude (global)", "magnitude (global), rewind init, epochs 5"]


def test_older_experiments_get_their_covered_sparsity_from_the_layer_counts():
    old = _rev("before-pruned-layers", "structured", 0.5, 0.9)
    old["data"]["params"]["params.yaml"]["data"]["prune"]["structure"] = "filters"
    old["data"]["metrics"]["metrics/evaluate.json"]["data"]["sparse"] = {
        "accuracy": 0.9, "sparsity": 0.49,  # counted over every layer, fc3 (never pruned by filters) included
        "layers": {"conv1": {"zeros": 225, "total": 450}, "conv2": {"zeros": 1200, "total": 2400},
                   "fc1": {"zeros": 24000, "total": 48000}, "fc2": {"zeros": 5040, "total": 10080},
                   "fc3": {"zeros": 0, "total": 840}}}
    (row,) = collect_points([{"rev": "workspace", "data": old["data"], "experiments": None}])
    assert row["sparsity"] == 0.5 and row["sparsity_all_layers"] == 0.49


def test_runs_on_other_data_or_dense_training_are_separate_lines_and_seeds_are_not():
    plain = _rev("plain", "magnitude", 0.9, 0.90)
    small = _rev("img32", "magnitude", 0.9, 0.80)
    small["data"]["params"]["params.yaml"]["data"].update({"data": {"image_size": 32}, "train": {"epochs": 1}})
    seed = _rev("seed1", "magnitude", 0.9, 0.89)
    seed["data"]["params"]["params.yaml"]["data"]["seed"] = 1
    rows = collect_points([{**plain, "experiments": [_experiment("success", small), _experiment("success", seed)]}])
    lines = {row["experiment"]: row["line"] for row in rows}
    assert lines == {"plain": "magnitude (global)", "seed1": "magnitude (global)",
                     "img32": "magnitude (global), train.epochs 1, data.image_size 32"}
