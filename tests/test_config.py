from pathlib import Path

import pytest
import yaml

from sparsenet.config import ConfigError, config_from_dict, load_config
from sparsenet.options import DEFAULTS


def test_the_shipped_params_file_is_valid_and_holds_every_default():
    path = Path(__file__).resolve().parents[1] / "params.yaml"
    load_config(path)  # valid
    assert yaml.safe_load(path.read_text()) == DEFAULTS  # every key, at its documented default, nothing else


def test_missing_keys_take_defaults():
    cfg = config_from_dict({"prune": {"method": "random"}})
    assert cfg.prune.method == "random" and cfg.train.batch_size == 128


@pytest.mark.parametrize("raw,words", [
    ({"prune": {"method": "lottery"}}, ["prune.method", "'lottery'", "magnitude, random, taylor, structured"]),
    ({"prune": {"sparsity": 1.0}}, ["prune.sparsity", "1.0", "[0, 1)"]),
    ({"prune": {"sparsity": -0.1}}, ["prune.sparsity", "[0, 1)"]),
    ({"prune": {"structure": "rows"}}, ["prune.structure", "filters, channels"]),
    ({"data": {"source": "imagenet"}}, ["data.source", "fashion-mnist, folder, synthetic"]),
    ({"train": {"epochs": "ten"}}, ["train.epochs", "'ten'", "int"]),
    ({"train": {"epochs": 0}}, ["train.epochs", "an integer in 1..1000"]),
    ({"train": {"lr": 3}}, ["train.lr", "(0, 1)"]),
    ({"prune": {"methd": "random"}}, ["prune.methd", "unknown", "method"]),
    ({"prune": 5}, ["prune", "mapping"]),
    ({"prune": {"schedule": "exp"}}, ["prune.schedule", "constant, linear, cubic"]),
    ({"train": {"lr_schedule": "step"}}, ["train.lr_schedule", "'step'", "constant, cosine"]),
    ({"prune": {"lr_schedule": None}}, ["prune.lr_schedule", "None", "str"]),
    ({"prune": {"rewind": 9}}, ["prune.rewind", "'9'", "1..4 (train.epochs)"]),
    ({"data": {"image_size": 8}}, ["data.image_size", "8", "16..512"]),
    ({"data": {"image_size": 100000}}, ["data.image_size", "100000", "16..512"]),
    ({"seed": -1}, ["seed", "-1", "0..4294967295"]),
    ({"seed": 2**32}, ["seed", "4294967296", "0..4294967295"]),
    ({"train": {"batch_size": 10**6}}, ["train.batch_size", "1..65536"]),
    ({"prune": {"finetune_epochs": -1}}, ["prune.finetune_epochs", "0..1000"]),
    ({"data": {"synthetic": {"train_size": 0}}}, ["data.synthetic.train_size", "1..1000000"]),
    ({"prune": {"lr": float("nan")}}, ["prune.lr", "must be a number"]),
    ({"prune": {"rewind": "init", "finetune_epochs": 0}},
     ["prune.rewind = 'init' needs prune.finetune_epochs >= 1", "untrained"]),
    ({"train": {"batch_size": 1.5}}, ["train.batch_size", "1.5", "int"]),
    ({"data": {"synthetic": {"classes": 1}}}, ["data.synthetic.classes", "2..1000"]),
    ({"prune": {"sparsity": "high"}}, ["prune.sparsity", "'high'", "float"]),
    ({"prune": {"exclude": ["conv1", "conv2", "fc1", "fc2", "fc3"]}}, ["prune.exclude", "at least one layer"]),
    ({"extra": 1}, ["extra", "unknown", "seed, data, train, prune"]),
    ({"prune": {"exclude": ["fc9"]}}, ["prune.exclude", "'fc9'", "conv1, conv2, fc1, fc2, fc3"]),
    ({"prune": {"exclude": "fc3"}}, ["prune.exclude", "list"]),
    ({"prune": {"criterion": "l1"}}, ["prune.criterion", "'l1'", "l2, taylor"]),
    ({"prune": {"allocation": "greedy"}}, ["prune.allocation", "'greedy'", "uniform, sensitivity"]),
    ({"prune": {"score_batches": 0}}, ["prune.score_batches", "1..100000"]),
    ({"prune": {"round_to": 0}}, ["prune.round_to", "1..4096"]),
    ({"prune": {"method": "structured", "allocation": "sensitivity", "sparsity": 0.99}},
     ["prune.sparsity", "0.99", "[0, 0.98]", "prune.allocation = 'sensitivity'"]),
    ({"prune": {"method": "magnitude", "scope": "global", "allocation": "sensitivity"}},
     ["prune.allocation = 'sensitivity' needs prune.scope = 'layer'", "magnitude"]),
    ({"prune": {"method": "structured", "exclude": ["conv1", "conv2", "fc1", "fc2"]}},
     ["prune.exclude", "at least one layer", "structured filters never prunes fc3"]),
    ({"prune": {"method": "structured", "structure": "channels", "exclude": ["conv2", "fc1", "fc2", "fc3"]}},
     ["prune.exclude", "structured channels never prunes conv1"]),
])
def test_bad_values_give_one_line_naming_key_value_and_allowed(raw, words):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_unparsable_yaml_names_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("prune: [unclosed\n")
    with pytest.raises(ConfigError, match="params.yaml: not valid YAML"):
        load_config(bad)


def test_every_numeric_key_has_a_range_and_its_bounds_are_accepted():
    from dataclasses import fields, is_dataclass

    from sparsenet.config import Config
    from sparsenet.options import HALF_OPEN_FLOAT_RANGES, INT_RANGES, OPEN_FLOAT_RANGES

    def numeric_keys(cls, prefix=""):
        for f in fields(cls):
            value = f.default_factory() if callable(f.default_factory) else f.default
            if is_dataclass(value):
                yield from numeric_keys(type(value), prefix + f.name + ".")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                yield prefix + f.name

    ranged = set(INT_RANGES) | set(OPEN_FLOAT_RANGES) | set(HALF_OPEN_FLOAT_RANGES)
    assert set(numeric_keys(Config)) == ranged
    for key, (low, high) in INT_RANGES.items():
        for value in (low, high):
            section = {}
            node = section
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
            config_from_dict(section)  # both ends of the range are valid
