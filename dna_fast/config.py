"""Run configuration of the DNA pipeline: dataclasses, YAML loading, dotted ``key=value`` overrides.

A run config is one YAML mapping whose sections mirror the dataclasses below (``data``, ``teacher``, ``distill``,
``rate``, ``search``, ``retrain``, ``control``). Every key is checked: an unknown key or a value of the wrong type
raises :class:`ConfigError` naming the key, what was given and what is expected, so ``python -m dna_fast.train``
can stop with one clear message before it touches the run directory.

Overrides use dotted keys and YAML values: ``distill.epochs=2``, ``search.budget=macs=40M``,
``teacher.checkpoint=null``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError", "DataConfig", "TeacherConfig", "DistillConfig", "RateConfig", "SearchConfig", "RetrainConfig",
    "ControlConfig", "RunConfig", "load_config", "apply_overrides", "to_dict", "from_dict", "builtin_run_config",
    "dump_yaml",
]


class ConfigError(ValueError):
    """A bad run config: unknown key, wrong type, invalid value or unreadable file."""


@dataclass
class DataConfig:
    """Where the images come from (see :func:`dna_fast.data.build_loader`).

    Attributes:
        backend: ``auto`` | ``dali`` | ``torchvision`` | ``embedded`` | ``synthetic``.
        root: folder with ``train/`` and ``val/`` class folders (``dali`` / ``torchvision``).
        image_size: input resolution; default: the space's ``default_image_size``.
        batch_size: per-process batch of the search stages (teacher training, distill, rate).
        val_batch_size: per-process batch of evaluation (default: ``batch_size``).
        workers: loader threads / processes (default: from the CPU count).
        skip_corrupt: skip unreadable images instead of stopping.
    """

    backend: str = "embedded"
    root: str | None = None
    image_size: int | None = None
    batch_size: int = 64
    val_batch_size: int | None = None
    workers: int | None = None
    skip_corrupt: bool = False


@dataclass
class TeacherConfig:
    """The teacher network.

    Attributes:
        model: timm model name; default: the space's teacher (``dna_mini_teacher`` for ``dna_mini``).
        checkpoint: weights file of the teacher (state_dict); resolved relative to the run dir when not found.
        pretrained: load timm's pretrained weights (hub download unless cached).
        allow_random_teacher: accept a teacher without trained weights (tests only).
        train: train the teacher on the data first (stage ``teacher``), writing ``checkpoints/teacher.pth``.
        epochs, lr: teacher training schedule.
    """

    model: str | None = None
    checkpoint: str | None = None
    pretrained: bool = False
    allow_random_teacher: bool = False
    train: bool = False
    epochs: int = 10
    lr: float = 0.01


@dataclass
class DistillConfig:
    """Block-wise distillation of the supernet (all blocks per teacher forward; see :func:`dna_fast.distill`).

    Attributes:
        epochs: epochs over the train split (every block trains in every epoch).
        lr: one learning rate for every block (default: the library's per-block rates).
        max_steps_per_epoch: cut every epoch after this many steps (0: whole epochs; for tests).
        checkpoint_every_steps: also checkpoint every N steps within an epoch (0: at epoch ends).
        sampling: path sampling, ``uniform`` or ``fair``.
    """

    epochs: int = 20
    lr: float | None = None
    max_steps_per_epoch: int = 0
    checkpoint_every_steps: int = 0
    sampling: str = "uniform"


@dataclass
class RateConfig:
    """Exhaustive rating of every candidate of every block.

    Attributes:
        num_batches: held-out batches each candidate is rated on.
        calib_batches: batches that recalibrate BatchNorm statistics per candidate (0: off).
        batch_size: images per batch (default: ``data.batch_size``); rating reads the val split (label-free: only
            the teacher's features are compared).
        bf16: rate in bfloat16 on GPU (much faster; fp32 on CPU always).
    """

    num_batches: int = 4
    calib_batches: int = 2
    batch_size: int | None = None
    bf16: bool = True


@dataclass
class SearchConfig:
    """Exact constrained search.

    Attributes:
        budget: e.g. ``macs=400M`` or ``macs=400M,params=5e6``.
        top_k: architectures kept (the best one is retrained).
    """

    budget: str = "macs=400M"
    top_k: int = 5


@dataclass
class RetrainConfig:
    """Retraining recipe of the found architecture (the paper's, scaled by the global batch size).

    Attributes:
        epochs: training epochs.
        batch_size: per-process batch (default: ``data.batch_size``).
        lr_per_256: RMSprop learning rate per 256 images of the global batch (paper: 0.016).
        warmup_epochs: linear warm-up (paper: 5), in epochs (fractions allowed).
        decay_epochs, decay_rate: lr x ``decay_rate`` every ``decay_epochs`` epochs (paper: 0.963 every 3).
        label_smoothing, dropout, drop_path: regularization (paper: 0.1, 0.2, 0.2).
        weight_decay: RMSprop weight decay (paper: 1e-5).
        ema_decay: EMA of the weights (paper: 0.9998 per step at batch 4096 over 1.28M images);
        ema_scale: scale the EMA horizon to the run: the decay used is ``min(ema_decay, max(0.5, 1 - 10 / steps))``
            with ``steps`` the run's total steps, so a tiny run's EMA still moves (off: ``ema_decay`` as is).
        amp: autocast on GPU (bf16); ignored on CPU.
        channels_last: channels-last memory format.
        inherit: start from the supernet's weights (``inherit_weights``) instead of from scratch.
        max_steps: stop after this many steps in all (0: no limit; for tests).
        checkpoint_every: save a resumable checkpoint every N epochs (the last epoch always saved).
    """

    epochs: int = 350
    batch_size: int | None = None
    lr_per_256: float = 0.016
    warmup_epochs: float = 5.0
    decay_epochs: float = 3.0
    decay_rate: float = 0.963
    label_smoothing: float = 0.1
    dropout: float = 0.2
    drop_path: float = 0.2
    weight_decay: float = 1e-5
    ema_decay: float = 0.9998
    ema_scale: bool = True
    amp: bool = True
    channels_last: bool = True
    inherit: bool = False
    max_steps: int = 0
    checkpoint_every: int = 1


@dataclass
class ControlConfig:
    """Random control architectures retrained with the same recipe as the found one.

    Attributes:
        num_random: how many (0: none).
        macs_tolerance: relative MACs distance to the found architecture (0.05: within 5 %).
    """

    num_random: int = 0
    macs_tolerance: float = 0.05


@dataclass
class RunConfig:
    """One pipeline run.

    Attributes:
        space: search space name (``dna``, ``dna_cells``, ``dna_mini``) or YAML path.
        run_dir: where everything is written (``--run-dir`` overrides).
        seed: seeds sampling, data order and initialization.
        device: ``auto`` (cuda when available), ``cpu``, ``cuda``, ``cuda:1``.
        model: what ``retrain`` / ``evaluate`` use instead of the found architecture: a timm model name
            (``dna_a``..``dna_d``, ``efficientnet_b0``) or empty for the search result.
        checkpoint: weights that ``evaluate`` loads (default: the run's retrain checkpoint).
        num_classes: classifier outputs (default: from the data).
        threads: torch CPU threads (default: torch's choice; 1 avoids oversubscription on a busy small machine).
    """

    space: str = "dna_mini"
    run_dir: str = "runs/embedded"
    seed: int = 0
    device: str = "auto"
    model: str | None = None
    checkpoint: str | None = None
    num_classes: int | None = None
    threads: int | None = None
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    rate: RateConfig = field(default_factory=RateConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    control: ControlConfig = field(default_factory=ControlConfig)


# ---------------------------------------------------------------------------------------------- type checking
def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if args and (typing.get_origin(tp) in (typing.Union, types.UnionType)):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the field type ``tp`` (int accepted for float; str fields take scalars)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(d: Any, cls: type = RunConfig, prefix: str = "") -> Any:
    """Builds a config dataclass from a (nested) mapping, checking every key and type."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        where = f"section {prefix.rstrip('.')!r}" if prefix else "the run config"
        raise ConfigError(f"{where} must be a mapping of keys to values, got {d!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(f"unknown config key {key!r}; valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: "
                              f"{', '.join(names)}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = from_dict(v, tp, f"{key}.")
        else:
            kwargs[k] = _coerce(v, tp, key)
    cfg = cls(**kwargs)
    if cls is RunConfig:
        validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a plain nested dict (what ``config.yaml`` holds)."""
    return dataclasses.asdict(cfg)


def validate(cfg: RunConfig) -> None:
    """Value checks beyond types (ranges, names); raises :class:`ConfigError`."""
    from .data import BACKENDS

    if cfg.data.backend not in BACKENDS:
        raise ConfigError(f"config key 'data.backend': {cfg.data.backend!r} is not one of {', '.join(BACKENDS)}")
    positive = {
        "data.batch_size": cfg.data.batch_size, "teacher.epochs": cfg.teacher.epochs,
        "rate.num_batches": cfg.rate.num_batches, "search.top_k": cfg.search.top_k,
        "retrain.epochs": cfg.retrain.epochs,
    }
    for key, v in positive.items():
        if v < 1:
            raise ConfigError(f"config key {key!r} must be at least 1, got {v}")
    non_negative = {
        "distill.epochs": cfg.distill.epochs, "distill.max_steps_per_epoch": cfg.distill.max_steps_per_epoch,
        "distill.checkpoint_every_steps": cfg.distill.checkpoint_every_steps,
        "rate.calib_batches": cfg.rate.calib_batches, "retrain.max_steps": cfg.retrain.max_steps,
        "control.num_random": cfg.control.num_random, "retrain.warmup_epochs": cfg.retrain.warmup_epochs,
        "retrain.label_smoothing": cfg.retrain.label_smoothing, "retrain.dropout": cfg.retrain.dropout,
        "retrain.drop_path": cfg.retrain.drop_path, "retrain.weight_decay": cfg.retrain.weight_decay,
        "control.macs_tolerance": cfg.control.macs_tolerance,
    }
    for key, v in non_negative.items():
        if v < 0:
            raise ConfigError(f"config key {key!r} must not be negative, got {v}")
    if not 0.0 <= cfg.retrain.ema_decay < 1.0:
        raise ConfigError(f"config key 'retrain.ema_decay' must be in [0, 1), got {cfg.retrain.ema_decay}")
    if not 0.0 < cfg.retrain.decay_rate <= 1.0 or cfg.retrain.decay_epochs <= 0:
        raise ConfigError("config keys 'retrain.decay_rate' must be in (0, 1] and 'retrain.decay_epochs' > 0")
    if cfg.distill.sampling not in ("uniform", "fair"):
        raise ConfigError(f"config key 'distill.sampling': {cfg.distill.sampling!r} is not uniform or fair")
    if cfg.data.image_size is not None and cfg.data.image_size < 8:
        raise ConfigError(f"config key 'data.image_size' must be at least 8, got {cfg.data.image_size}")
    from .search import parse_budget

    try:
        parse_budget(cfg.search.budget)
    except ValueError as e:
        raise ConfigError(f"config key 'search.budget': {e}") from None
    dev = cfg.device
    if not (dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:")):
        raise ConfigError(f"config key 'device': {dev!r} is not auto, cpu, cuda or cuda:N")


# ---------------------------------------------------------------------------------------------- loading
def _read_yaml(path: str | os.PathLike) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found: pass an existing YAML file to --config")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None


def builtin_run_config(name: str = "embedded") -> Path:
    """Path of a run config shipped in the package (``dna_fast/configs/runs/<name>.yaml``)."""
    p = Path(str(resources.files("dna_fast") / "configs" / "runs" / f"{name}.yaml"))
    if not p.is_file():
        raise ConfigError(f"no built-in run config {name!r}")
    return p


def _parse_override(item: str) -> tuple[list[str], str]:
    if "=" not in item:
        raise ConfigError(f"cannot read override {item!r}: expected KEY=VALUE, e.g. distill.epochs=2")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"cannot read override {item!r}: expected KEY=VALUE, e.g. distill.epochs=2")
    return key.split("."), raw


def _override_value(raw: str, tp: Any) -> Any:
    """YAML value of an override; string fields keep the raw text (``checkpoint=123`` stays ``'123'``)."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if str in args and value is not None and not isinstance(value, str):
        return raw
    if str in args and raw.strip() == "":
        return raw if type(None) not in args else None
    return value


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies dotted ``key=value`` overrides to a raw config dict (checked again by :func:`from_dict`)."""
    import copy

    d = copy.deepcopy(d) if d else {}
    for item in overrides:
        path, raw = _parse_override(item)
        cls: Any = RunConfig
        node = d
        for depth, part in enumerate(path):
            key = ".".join(path[: depth + 1])
            if not dataclasses.is_dataclass(cls):
                raise ConfigError(f"unknown config key {key!r}: {'.'.join(path[:depth])!r} is not a section")
            hints = _hints(cls)
            if part not in hints:
                names = ", ".join(f.name for f in dataclasses.fields(cls))
                raise ConfigError(f"unknown config key {key!r}; valid keys"
                                  f"{' in ' + '.'.join(path[:depth]) if depth else ''}: {names}")
            tp = hints[part]
            if depth == len(path) - 1:
                if dataclasses.is_dataclass(tp):
                    raise ConfigError(f"config key {key!r} is a section: set one of its keys, e.g. {key}."
                                      f"{dataclasses.fields(tp)[0].name}=...")
                node[part] = _override_value(raw, tp)
            else:
                if not dataclasses.is_dataclass(tp):
                    raise ConfigError(f"unknown config key {'.'.join(path)!r}: {key!r} is not a section")
                sub = node.get(part)
                if sub is None:
                    sub = node[part] = {}
                if not isinstance(sub, dict):
                    raise ConfigError(f"config section {key!r} must be a mapping, got {sub!r}")
                node, cls = sub, tp
    return d


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Reads a run config YAML (default: the packaged embedded run), applies overrides, checks everything.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or invalid value.
    """
    raw = _read_yaml(path if path is not None else builtin_run_config("embedded"))
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    raw = apply_overrides(raw or {}, list(overrides or []))
    return from_dict(raw)


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
