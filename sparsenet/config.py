"""``params.yaml`` → validated, typed configuration.

The params file is read here and nowhere else.  Defaults, allowed values and ranges come from
:mod:`sparsenet.options`.  Every problem is reported as one :class:`ConfigError` line naming the
key, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from sparsenet import options
from sparsenet.errors import SparseNetError
from sparsenet.options import default


class ConfigError(SparseNetError):
    """A parameter is missing, has the wrong type or an unsupported value."""


def _default(key: str) -> Any:
    value = default(key)
    return field(default_factory=lambda: list(value)) if isinstance(value, list) else field(default=value)


@dataclass(frozen=True)
class SyntheticConfig:
    """Size of the generated dataset used by ``data.source: synthetic``."""

    train_size: int = _default("data.synthetic.train_size")
    test_size: int = _default("data.synthetic.test_size")
    classes: int = _default("data.synthetic.classes")


@dataclass(frozen=True)
class DataConfig:
    source: str = _default("data.source")
    train_dir: str = _default("data.train_dir")
    test_dir: str = _default("data.test_dir")
    image_size: int = _default("data.image_size")
    fashion_mnist_dir: str = _default("data.fashion_mnist_dir")
    workers: int = _default("data.workers")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _default("train.epochs")
    batch_size: int = _default("train.batch_size")
    lr: float = _default("train.lr")
    lr_schedule: str = _default("train.lr_schedule")
    conv_block: str = _default("train.conv_block")

    @property
    def compiled_conv(self) -> bool:
        """Whether CPU training steps run the compiled conv blocks (``conv_block: compiled``)."""
        return self.conv_block == "compiled"


@dataclass(frozen=True)
class PruneConfig:
    method: str = _default("prune.method")
    structure: str = _default("prune.structure")
    scope: str = _default("prune.scope")
    criterion: str = _default("prune.criterion")
    score_batches: int = _default("prune.score_batches")
    allocation: str = _default("prune.allocation")
    round_to: int = _default("prune.round_to")
    schedule: str = _default("prune.schedule")
    exclude: list = _default("prune.exclude")
    rewind: str = _default("prune.rewind")
    sparsity: float = _default("prune.sparsity")
    epochs: int = _default("prune.epochs")
    finetune_epochs: int = _default("prune.finetune_epochs")
    lr: float = _default("prune.lr")
    lr_schedule: str = _default("prune.lr_schedule")


@dataclass(frozen=True)
class CompressConfig:
    conv_bits: int = _default("compress.conv_bits")
    fc_bits: int = _default("compress.fc_bits")
    epochs: int = _default("compress.epochs")
    lr: float = _default("compress.lr")


@dataclass(frozen=True)
class Config:
    seed: int = _default("seed")
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read and validate a params file; missing keys take the defaults documented in docs/params.md."""
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
        default_value = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default_value):
            values[name] = _build(type(default_value), value, key + ".", source)
        else:
            values[name] = _coerce(key, value, type(default_value), source)
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
    if kind is float and value != value:
        raise ConfigError(f"{source}: {key} = {value!r} must be a number")
    return value


def _get(cfg: Config, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _check_values(cfg: Config, source: str) -> None:
    def fail(key: str, value: Any, allowed: str) -> None:
        raise ConfigError(f"{source}: {key} = {value!r} is not allowed; expected {allowed}")

    def one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            fail(key, value, "one of: " + ", ".join(allowed))

    one_of("data.source", cfg.data.source, options.DATA_SOURCES)
    one_of("prune.method", cfg.prune.method, options.PRUNE_METHODS)
    one_of("prune.structure", cfg.prune.structure, options.PRUNE_STRUCTURES)
    one_of("prune.scope", cfg.prune.scope, options.PRUNE_SCOPES)
    one_of("prune.criterion", cfg.prune.criterion, options.PRUNE_CRITERIA)
    one_of("prune.allocation", cfg.prune.allocation, options.PRUNE_ALLOCATIONS)
    one_of("prune.schedule", cfg.prune.schedule, options.PRUNE_SCHEDULES)
    one_of("train.lr_schedule", cfg.train.lr_schedule, options.LR_SCHEDULES)
    one_of("train.conv_block", cfg.train.conv_block, options.CONV_BLOCKS)
    one_of("prune.lr_schedule", cfg.prune.lr_schedule, options.LR_SCHEDULES)
    for name in cfg.prune.exclude:
        one_of("prune.exclude", name, options.LAYER_NAMES)
    kept = options.STRUCTURE_KEEPS[cfg.prune.structure] if cfg.prune.method == "structured" else None
    if set(cfg.prune.exclude) | {kept} >= set(options.LAYER_NAMES):
        why = f" (structured {cfg.prune.structure} never prunes {kept})" if kept else ""
        fail("prune.exclude", cfg.prune.exclude, f"a list that leaves at least one layer to prune{why}")
    for key, (low, high) in options.INT_RANGES.items():
        value = _get(cfg, key)
        if not low <= value <= high:
            fail(key, value, f"an integer in {low}..{high}")
    for key, (low, high) in options.OPEN_FLOAT_RANGES.items():
        value = _get(cfg, key)
        if not low < value < high:
            fail(key, value, f"a number in ({low:g}, {high:g})")
    for key, (low, high) in options.HALF_OPEN_FLOAT_RANGES.items():
        value = _get(cfg, key)
        if not low <= value < high:
            fail(key, value, f"a fraction in [{low:g}, {high:g})")
    if cfg.prune.allocation == "sensitivity" and cfg.prune.method != "structured" and cfg.prune.scope == "global":
        raise ConfigError(f"{source}: prune.allocation = 'sensitivity' needs prune.scope = 'layer' for "
                          f"{cfg.prune.method} pruning (global scope shares the target by one ranking of all weights)")
    if cfg.prune.allocation == "sensitivity" and cfg.prune.sparsity > options.SENSITIVITY_MAX_SHARE:
        fail("prune.sparsity", cfg.prune.sparsity, f"a fraction in [0, {options.SENSITIVITY_MAX_SHARE:g}] with "
             "prune.allocation = 'sensitivity' (the largest share its curves are measured at)")
    rewind = cfg.prune.rewind
    if rewind not in options.REWIND_POINTS and not (rewind.isdigit() and 1 <= int(rewind) <= cfg.train.epochs):
        fail("prune.rewind", rewind,
             f"none, init, reinit or a dense epoch number 1..{cfg.train.epochs} (train.epochs)")
    if rewind != "none" and cfg.prune.finetune_epochs == 0:
        raise ConfigError(f"{source}: prune.rewind = {rewind!r} needs prune.finetune_epochs >= 1: the rewind after "
                          "the last pruning round would leave the model untrained")
