from pathlib import Path

import pytest

from sparsenet.config import ConfigError, config_from_dict, load_config


def test_the_shipped_params_file_is_valid():
    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    assert cfg.data.source == "fashion-mnist"
    assert cfg.prune.method in ("magnitude", "random", "structured")


def test_missing_keys_take_defaults():
    cfg = config_from_dict({"prune": {"method": "random"}})
    assert cfg.prune.method == "random" and cfg.train.batch_size == 128


@pytest.mark.parametrize("raw,words", [
    ({"prune": {"method": "lottery"}}, ["prune.method", "'lottery'", "magnitude, random, structured"]),
    ({"prune": {"sparsity": 1.0}}, ["prune.sparsity", "1.0", "[0, 1)"]),
    ({"prune": {"sparsity": -0.1}}, ["prune.sparsity", "[0, 1)"]),
    ({"prune": {"structure": "rows"}}, ["prune.structure", "filters, channels"]),
    ({"data": {"source": "imagenet"}}, ["data.source", "fashion-mnist, folder, synthetic"]),
    ({"train": {"epochs": "ten"}}, ["train.epochs", "'ten'", "int"]),
    ({"train": {"epochs": 0}}, ["train.epochs", ">= 1"]),
    ({"train": {"lr": 3}}, ["train.lr", "(0, 1)"]),
    ({"prune": {"methd": "random"}}, ["prune.methd", "unknown", "method"]),
    ({"prune": 5}, ["prune", "mapping"]),
    ({"prune": {"schedule": "exp"}}, ["prune.schedule", "constant, linear, cubic"]),
    ({"train": {"lr_schedule": "step"}}, ["train.lr_schedule", "'step'", "constant, cosine"]),
    ({"prune": {"lr_schedule": None}}, ["prune.lr_schedule", "None", "str"]),
    ({"prune": {"rewind": 9}}, ["prune.rewind", "'9'", "1..4 (train.epochs)"]),
    ({"data": {"image_size": 8}}, ["data.image_size", "8", ">= 16"]),
    ({"seed": -1}, ["seed", "-1", ">= 0"]),
    ({"train": {"batch_size": 1.5}}, ["train.batch_size", "1.5", "int"]),
    ({"data": {"synthetic": {"classes": 1}}}, ["data.synthetic.classes", ">= 2"]),
    ({"prune": {"sparsity": "high"}}, ["prune.sparsity", "'high'", "float"]),
    ({"prune": {"exclude": ["conv1", "conv2", "fc1", "fc2", "fc3"]}}, ["prune.exclude", "at least one layer"]),
    ({"extra": 1}, ["extra", "unknown", "seed, data, train, prune"]),
    ({"prune": {"exclude": ["fc9"]}}, ["prune.exclude", "'fc9'", "conv1, conv2, fc1, fc2, fc3"]),
    ({"prune": {"exclude": "fc3"}}, ["prune.exclude", "list"]),
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
