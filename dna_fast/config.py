"""Run configuration of the DNA pipeline: dataclasses, YAML loading, dotted ``key=value`` overrides.

A run config is one YAML mapping whose sections mirror the dataclasses below (``data``, ``teacher``, ``distill``,
``rate``, ``search``, ``retrain``, ``control``, ``rank_check``). Every key is checked: an unknown key or a value of
the wrong type raises :class:`ConfigError` naming the key, what was given and what is expected, so
``python -m dna_fast.train`` can stop with one clear message before it touches the run directory.

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
    "ControlConfig", "RankCheckConfig", "RunConfig", "load_config", "apply_overrides", "to_dict", "from_dict",
    "builtin_run_config", "dump_yaml",
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
        max_train_images, max_val_images: ``fashion_mnist`` only: use the first N images of the train / val split
            (a fixed class-balanced subset; null: all), to size a run to a small machine.
        fallback: ``fashion_mnist`` only: the backend used instead when its files are missing (``embedded``: the
            digits), with a message saying how to get them; null: stop with that message.
        random_interpolation: train split: each image's random-resized crop resized bilinearly or bicubically at
            random (timm's default ``random``, as in the authors' distillation and retraining); false: bilinear.
            Torchvision backend only (the config refuses it for the others).
    """

    backend: str = "embedded"
    root: str | None = None
    image_size: int | None = None
    batch_size: int = 64
    val_batch_size: int | None = None
    workers: int | None = None
    skip_corrupt: bool = False
    max_train_images: int | None = None
    max_val_images: int | None = None
    fallback: str | None = None
    random_interpolation: bool = False


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
        bn: the teacher's BatchNorm: ``eval`` (frozen statistics; this project's default) or ``train`` (the
            authors': batch statistics during distillation, and at rating the teacher's BN recalibrated on the
            calibration batch before its features are computed).
    """

    model: str | None = None
    checkpoint: str | None = None
    pretrained: bool = False
    allow_random_teacher: bool = False
    train: bool = False
    epochs: int = 10
    lr: float = 0.01
    bn: str = "eval"


@dataclass
class DistillConfig:
    """Block-wise distillation of the supernet (all blocks per teacher forward; see :func:`dna_fast.distill`).

    Attributes:
        epochs: epochs over the train split (every block trains in every epoch).
        lr: one learning rate for every block (default: the library's per-block rates).
        max_steps_per_epoch: cut every epoch after this many steps (0: whole epochs; for tests).
        checkpoint_every_steps: also checkpoint every N steps within an epoch (0: at epoch ends).
        sampling: path sampling, ``uniform`` or ``fair`` (over the block, or within each cell with ``cells:
            parallel``).
        cells: ``shared``: one path per block and step, so a block's cells share its steps (a cell gets a share
            proportional to its candidates with uniform sampling, an equal share with fair). ``parallel``: one path
            of every cell per step (block 0 with a stem per cell), so every cell trains the full budget as in the
            authors' one supernet per depth, from the same teacher pass; costs one forward + backward per cell.
        weight_decay: Adam weight decay (L2) of every block (the authors: 1e-4).
        weight_decay_1d: also decay 1-dim parameters (BN weights and biases, conv biases); false: only weights with
            >= 2 dims, as the authors' optimizer does.
        lr_decay: lr factor per epoch (the authors: 0.9).
        lr_epoch_offset: epoch ``e`` (from 0) runs at ``lr * lr_decay ** (e + lr_epoch_offset)``; the authors call
            their step schedule with epochs 1..N, so their first epoch already runs at 0.9 x lr (offset 1).
        amp: ``auto`` (bf16 on GPU, fp32 on CPU), ``bf16``, ``fp16`` or ``fp32`` (the authors: fp32).
        color_jitter: brightness / contrast / saturation jitter factor of the distillation batches (the authors: 0.4;
            0: off).
        random_erasing: probability of erasing a random rectangle of each image with per-pixel normal noise (the
            authors: 0.5, timm's ``pixel`` mode; 0: off).
    """

    epochs: int = 20
    lr: float | None = None
    max_steps_per_epoch: int = 0
    checkpoint_every_steps: int = 0
    sampling: str = "uniform"
    cells: str = "shared"
    weight_decay: float = 1e-4
    weight_decay_1d: bool = True
    lr_decay: float = 0.9
    lr_epoch_offset: int = 0
    amp: str = "auto"
    color_jitter: float = 0.0
    random_erasing: float = 0.0


@dataclass
class RateConfig:
    """Exhaustive rating of every candidate of every block.

    Attributes:
        num_batches: held-out batches each candidate is rated on.
        calib_batches: batches that recalibrate BatchNorm statistics per candidate (0: off).
        batch_size: images per batch (default: ``data.batch_size``); rating reads the val split (label-free: only
            the teacher's features are compared).
        bf16: rate in bfloat16 on GPU (much faster; fp32 on CPU always).
        metric: the per-block score the search sums, one of the columns every rating table has: ``loss`` (MSE),
            ``rel_loss`` (MSE / variance of the target) or ``rel_l1`` (the authors': per batch mean |s - t| / std(t),
            averaged over the batches). Switching needs no re-rating.
        calib_source: where the BN recalibration batches come from: ``val`` (the first ``calib_batches`` batches of
            the val split, before the rated ones) or ``train`` (the authors': augmented training batches, the
            first of the run's seed, drawn once; ``calib_batches=1`` is their one batch, its statistics alone).
        cell_calibration: stand-alone units per cell that calibrate the ratings (0: off, else at least 2): that many
            candidates of every cell, spread over the cell's ratings, trained alone on the teacher's features as the
            ranking check trains them (``rank_check.block_steps``, ``block_lr``, ``block_batch_size``,
            ``block_train_images``, ``block_val_images``); each cell's ``metric`` is then mapped onto the stand-alone
            loss by a least-squares line, so the cells of a block (depths, widths) become comparable. Raw tables stay
            in ``ratings/raw/``; ``ratings/calibration.json`` holds the lines and units.
    """

    num_batches: int = 4
    calib_batches: int = 2
    batch_size: int | None = None
    bf16: bool = True
    metric: str = "loss"
    calib_source: str = "val"
    cell_calibration: int = 0


@dataclass
class SearchConfig:
    """Exact constrained search.

    Attributes:
        budget: e.g. ``macs=400M`` or ``macs=400M,params=5e6``.
        top_k: architectures kept (the best one is retrained).
        fixed_blocks: block index -> candidate string (``{5: "d1w320:ir_k3_e6_se0.25"}``): those blocks are not
            searched (their score is left out of the sum) and their costs count in the base cost; the authors fixed
            the last block to MB6 3x3.
    """

    budget: str = "macs=400M"
    top_k: int = 5
    fixed_blocks: dict[int, str] = field(default_factory=dict)


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
        color_jitter: brightness / contrast / saturation jitter of the training batches (the authors' example
            script: 0.06; 0: off).
        random_erasing: random-erasing probability of the training batches (timm's ``pixel`` mode; 0: off; the
            authors' later DNA-c / DNA-d recipe used it).
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
    color_jitter: float = 0.0
    random_erasing: float = 0.0


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
class RankCheckConfig:
    """The ranking check (stage ``rank_check``, :mod:`dna_fast.rank_check`): do the ratings rank like stand-alone
    training?

    Attributes:
        enabled: run the stage as part of the pipeline (``--stages rank_check`` runs it regardless).
        analyze_only: train nothing; rebuild ``rank_check/results.json`` from the units already finished.
        block_candidates: M, candidates per block trained alone (see ``block_selection``).
        block_selection: how they are chosen: ``spread`` over each cell's rating range (lowest and highest rated
            included), or ``random``: uniformly at random within each cell (the cells share M equally as far as
            their sizes allow), without looking at any predictor: the draw a held-out confirmation needs.
        block_candidates_from: a ``plan.json`` of another ranking check whose block candidates (and seed-noise
            candidates) are trained here instead (e.g. the same units at another ``block_steps``).
        seed: seed of the random selections and of the stand-alone trainings (default: the run's ``seed``); a new
            seed gives a fresh set of units, trained with new seeds.
        block_found_budgets: B, per-block MACs budgets (at the quantiles 1/(B+1) .. B/(B+1) of the block's MACs)
            at which the best-rated candidate under the budget is trained against ``block_found_random`` random
            candidates within ``macs_tolerance`` of its MACs (the nearest in MACs where fewer are that close),
            each with ``block_found_seeds`` seeds: block-level found vs random (0: off).
        equal_macs_tolerance: the equal-MACs statistic counts only pairs of candidates whose MACs are within this
            fraction of each other (where MACs carry no information).
        block_steps: Adam steps of each stand-alone block (0: as many as the supernet block got in distillation).
        block_lr: Adam learning rate of the stand-alone blocks (cosine decay to 0).
        block_batch_size: batch of the stand-alone blocks.
        block_train_images: train images whose teacher features the blocks learn (cached in memory).
        block_val_images: val images of the stand-alone validation loss.
        noise_candidates: candidates per block trained again with other seeds (seed noise).
        noise_seeds: seeds of those candidates (the first is the run's).
        networks: K, architectures trained alone (spread over MACs, plus the matched groups).
        matched_groups, matched_size: groups of architectures within ``macs_tolerance`` of one MACs value.
        network_epochs: epochs of each network (the ``retrain`` recipe otherwise).
        network_train_images: train images of each network (0: the whole train split).
        noise_networks: networks trained again with other seeds (seed noise at network level).
        found_random: R, random architectures within ``macs_tolerance`` of the found one.
        found_seeds: S, seeds of the found one and of each random one.
        macs_tolerance: relative MACs tolerance of the matched groups and of the random controls.
        bootstrap: bootstrap resamples of each confidence interval.
        workers: processes that train units side by side (each claims a unit before training it; the run's
            ``threads`` are shared out among them). Small stand-alone models use 2 cores better as 2 processes of
            1 thread than as 1 process of 2. Does not change what is trained: can differ between reruns.
        compare: other run dirs whose ratings of the same candidates are scored too, ``label=DIR,...`` (e.g. a
            supernet distilled with another ``distill.sampling``); their columns appear as ``label:metric``. Can
            be added or changed on a rerun (``--analyze-only``) without retraining anything.
    """

    enabled: bool = False
    analyze_only: bool = False
    block_candidates: int = 16
    block_selection: str = "spread"
    block_candidates_from: str = ""
    seed: int | None = None
    block_steps: int = 400
    block_lr: float = 0.005
    block_batch_size: int = 64
    block_train_images: int = 4096
    block_val_images: int = 1024
    noise_candidates: int = 3
    noise_seeds: int = 3
    networks: int = 12
    matched_groups: int = 2
    matched_size: int = 3
    network_epochs: int = 1
    network_train_images: int = 0
    noise_networks: int = 2
    found_random: int = 4
    found_seeds: int = 2
    macs_tolerance: float = 0.05
    block_found_budgets: int = 0
    block_found_random: int = 4
    block_found_seeds: int = 2
    equal_macs_tolerance: float = 0.10
    bootstrap: int = 2000
    workers: int = 1
    compare: str = ""


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
    rank_check: RankCheckConfig = field(default_factory=RankCheckConfig)


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
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, e.g. {{5: 'd1w320:ir_k3_e6_se0.25'}}, got "
                              f"{value!r}")
        out = {}
        for k, v in value.items():
            if kt is int and isinstance(k, str) and k.strip().lstrip("-").isdigit():
                k = int(k)
            out[_coerce(k, kt, f"{key} (a key)")] = _coerce(v, vt, f"{key}.{k}")
        return out
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
    if cfg.data.fallback is not None and cfg.data.fallback not in BACKENDS:
        raise ConfigError(f"config key 'data.fallback': {cfg.data.fallback!r} is not one of {', '.join(BACKENDS)}")
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
    rc = cfg.rank_check
    rc_min = {"block_candidates": (rc.block_candidates, 2), "block_steps": (rc.block_steps, 0),
              "block_batch_size": (rc.block_batch_size, 1), "block_train_images": (rc.block_train_images, 1),
              "block_val_images": (rc.block_val_images, 1), "noise_candidates": (rc.noise_candidates, 0),
              "noise_seeds": (rc.noise_seeds, 1), "networks": (rc.networks, 0),
              "matched_groups": (rc.matched_groups, 0),
              "matched_size": (rc.matched_size, 2), "network_epochs": (rc.network_epochs, 1),
              "network_train_images": (rc.network_train_images, 0), "noise_networks": (rc.noise_networks, 0),
              "found_random": (rc.found_random, 0), "found_seeds": (rc.found_seeds, 1), "bootstrap": (rc.bootstrap, 0),
              "workers": (rc.workers, 1), "block_found_budgets": (rc.block_found_budgets, 0),
              "block_found_random": (rc.block_found_random, 1), "block_found_seeds": (rc.block_found_seeds, 1)}
    for key, (v, lo) in rc_min.items():
        if v < lo:
            raise ConfigError(f"config key 'rank_check.{key}' must be at least {lo}, got {v}")
    if rc.block_lr <= 0 or rc.macs_tolerance <= 0 or rc.equal_macs_tolerance <= 0:
        raise ConfigError("config keys 'rank_check.block_lr', 'rank_check.macs_tolerance' and "
                          "'rank_check.equal_macs_tolerance' must be positive")
    if rc.block_selection not in ("spread", "random"):
        raise ConfigError(f"config key 'rank_check.block_selection': {rc.block_selection!r} is not spread or random")
    if rc.block_candidates_from and not Path(rc.block_candidates_from).is_file():
        raise ConfigError(f"config key 'rank_check.block_candidates_from': no plan file {rc.block_candidates_from!r} "
                          "(give the plan.json of another ranking check)")
    for key in ("max_train_images", "max_val_images"):
        v = getattr(cfg.data, key)
        if v is not None and v < 1:
            raise ConfigError(f"config key 'data.{key}' must be at least 1 (or null: all), got {v}")
    if not 0.0 <= cfg.retrain.ema_decay < 1.0:
        raise ConfigError(f"config key 'retrain.ema_decay' must be in [0, 1), got {cfg.retrain.ema_decay}")
    if not 0.0 < cfg.retrain.decay_rate <= 1.0 or cfg.retrain.decay_epochs <= 0:
        raise ConfigError("config keys 'retrain.decay_rate' must be in (0, 1] and 'retrain.decay_epochs' > 0")
    choices = {"teacher.bn": (cfg.teacher.bn, ("eval", "train")),
               "rate.metric": (cfg.rate.metric, ("loss", "rel_loss", "rel_l1")),
               "rate.calib_source": (cfg.rate.calib_source, ("val", "train")),
               "distill.amp": (cfg.distill.amp, ("auto", "bf16", "fp16", "fp32"))}
    for key, (v, allowed) in choices.items():
        if v not in allowed:
            raise ConfigError(f"config key {key!r}: {v!r} is not one of {', '.join(allowed)}")
    d = cfg.distill
    if d.weight_decay < 0 or d.lr_epoch_offset < 0 or not 0.0 < d.lr_decay <= 1.0:
        raise ConfigError("config keys 'distill.weight_decay' and 'distill.lr_epoch_offset' must not be negative and "
                          f"'distill.lr_decay' must be in (0, 1], got {d.weight_decay}, {d.lr_epoch_offset}, "
                          f"{d.lr_decay}")
    for sec, aug in (("distill", d), ("retrain", cfg.retrain)):
        if aug.color_jitter < 0 or not 0.0 <= aug.random_erasing <= 1.0:
            raise ConfigError(f"config key '{sec}.color_jitter' must not be negative and '{sec}.random_erasing' "
                              f"must be a probability in [0, 1], got {aug.color_jitter} and {aug.random_erasing}")
    if cfg.rate.cell_calibration < 0 or cfg.rate.cell_calibration == 1:
        raise ConfigError("config key 'rate.cell_calibration' must be 0 (off) or at least 2 (a line per cell needs two "
                          f"units), got {cfg.rate.cell_calibration}")
    if (cfg.rate.calib_source == "train" or cfg.teacher.bn == "train") and cfg.rate.calib_batches < 1:
        raise ConfigError("rate.calib_source=train and teacher.bn=train recalibrate BatchNorm on calibration batches: "
                          "set rate.calib_batches >= 1 (the authors: 1)")
    if cfg.distill.sampling not in ("uniform", "fair"):
        raise ConfigError(f"config key 'distill.sampling': {cfg.distill.sampling!r} is not uniform or fair")
    if cfg.distill.cells not in ("shared", "parallel"):
        raise ConfigError(f"config key 'distill.cells': {cfg.distill.cells!r} is not shared or parallel")
    if cfg.data.random_interpolation and cfg.data.backend != "torchvision":
        raise ConfigError(f"config key 'data.random_interpolation' needs data.backend=torchvision (the authors' PIL "
                          f"pipeline; the other backends have no per-image interpolation), got {cfg.data.backend!r}")
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
