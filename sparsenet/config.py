"""``params.yaml`` → validated, typed configuration.

The params file is read here and nowhere else.  Every problem is reported as one
:class:`ConfigError` line naming the key, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from sparsenet.errors import SparseNetError
from sparsenet.models import LAYER_NAMES
from sparsenet.pruning import METHODS, SCHEDULES, SCOPES, STRUCTURES
from sparsenet.training import LR_SCHEDULES

DATA_SOURCES = ("fashion-mnist", "folder", "synthetic")


class ConfigError(SparseNetError):
    """A parameter is missing, has the wrong type or an unsupported value."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Size of the generated dataset used by ``data.source: synthetic``."""

    train_size: int = 600
    test_size: int = 200
    classes: int = 4


@dataclass(frozen=True)
class DataConfig:
    source: str = "fashion-mnist"
    train_dir: str = "data/train"
    test_dir: str = "data/test"
    image_size: int = 64
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    lr_schedule: str = "cosine"


@dataclass(frozen=True)
class PruneConfig:
    method: str = "magnitude"
    structure: str = "filters"
    scope: str = "global"
    schedule: str = "cubic"
    exclude: list = field(default_factory=list)
    rewind: str = "none"
    sparsity: float = 0.95
    epochs: int = 3
    finetune_epochs: int = 1
    lr: float = 1e-3
    lr_schedule: str = "constant"


@dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read and validate a params file; missing keys take the defaults documented in the README."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the project root)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    return config_from_dict(raw or {}, source=str(path))


def config_from_dict(raw: Any, source: str = "params") -> Config:
    """Build a :class:`Config` from plain data, validating every key."""
    cfg = _build(Config, raw, prefix="", source=source)
    _check_values(cfg, source)
    return cfg


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {raw!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        keys = ", ".join(prefix + str(k) for k in unknown)
        raise ConfigError(f"{source}: unknown key(s) {keys}; allowed under {where}: {', '.join(known)}")
    values = {}
    for name, f in known.items():
        if name not in raw:
            continue
        key, value = prefix + name, raw[name]
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            values[name] = _build(type(default), value, key + ".", source)
        else:
            values[name] = _coerce(key, value, type(default), source)
    return cls(**values)


def _coerce(key: str, value: Any, kind: type, source: str) -> Any:
    if kind is list:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: {key} = {value!r} must be a list of names, e.g. [fc3]")
        return list(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is str and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # e.g. prune.rewind: 2
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{source}: {key} = {value!r} must be a {kind.__name__}")
    return value


def _check_values(cfg: Config, source: str) -> None:
    def fail(key: str, value: Any, allowed: str) -> None:
        raise ConfigError(f"{source}: {key} = {value!r} is not allowed; expected {allowed}")

    def one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            fail(key, value, "one of: " + ", ".join(allowed))

    def at_least(key: str, value: float, low: float) -> None:
        if value < low:
            fail(key, value, f"a number >= {low}")

    one_of("data.source", cfg.data.source, DATA_SOURCES)
    one_of("prune.method", cfg.prune.method, METHODS)
    one_of("prune.structure", cfg.prune.structure, STRUCTURES)
    one_of("prune.scope", cfg.prune.scope, SCOPES)
    one_of("prune.schedule", cfg.prune.schedule, SCHEDULES)
    one_of("train.lr_schedule", cfg.train.lr_schedule, LR_SCHEDULES)
    one_of("prune.lr_schedule", cfg.prune.lr_schedule, LR_SCHEDULES)
    for name in cfg.prune.exclude:
        one_of("prune.exclude", name, LAYER_NAMES)
    rewind = cfg.prune.rewind
    if rewind not in ("none", "init") and not (rewind.isdigit() and 1 <= int(rewind) <= cfg.train.epochs):
        fail("prune.rewind", rewind, f"none, init or a dense epoch number 1..{cfg.train.epochs} (train.epochs)")
    if set(cfg.prune.exclude) >= set(LAYER_NAMES):
        fail("prune.exclude", cfg.prune.exclude, "a list that leaves at least one layer to prune")
    if not 0.0 <= cfg.prune.sparsity < 1.0:
        fail("prune.sparsity", cfg.prune.sparsity, "a fraction in [0, 1)")
    if cfg.seed < 0:
        fail("seed", cfg.seed, "an integer >= 0")
    at_least("data.image_size", cfg.data.image_size, 16)
    at_least("data.synthetic.train_size", cfg.data.synthetic.train_size, 1)
    at_least("data.synthetic.test_size", cfg.data.synthetic.test_size, 1)
    at_least("data.synthetic.classes", cfg.data.synthetic.classes, 2)
    at_least("train.epochs", cfg.train.epochs, 1)
    at_least("train.batch_size", cfg.train.batch_size, 1)
    at_least("prune.epochs", cfg.prune.epochs, 1)
    at_least("prune.finetune_epochs", cfg.prune.finetune_epochs, 0)
    for key, lr in (("train.lr", cfg.train.lr), ("prune.lr", cfg.prune.lr)):
        if not 0.0 < lr < 1.0:
            fail(key, lr, "a learning rate in (0, 1)")
