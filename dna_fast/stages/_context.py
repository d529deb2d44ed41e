"""What every stage shares: the run :class:`Context` (config, run dir, device, rank, space, loaders, logger), the
error a stage raises when its input is missing, and which library each stage needs.

Stages take a ``Context`` and read and write only below ``ctx.run_dir``; the runner (:mod:`._runner`) builds it
once per run.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._io import atomic_write_json
from ..config import ConfigError, RunConfig

__all__ = ["Context", "StageInputError", "stage_status"]


class StageInputError(RuntimeError):
    """A stage cannot run: its input is missing from the run directory (or the config points at nothing)."""


# ---------------------------------------------------------------------------------------------- stage registry
@dataclass(frozen=True)
class _Need:
    module: str
    names: tuple[str, ...]


# what each stage needs from the libraries; a stage whose library has not landed is reported missing, never faked
_NEEDS: dict[str, tuple[_Need, ...]] = {
    "teacher": (_Need("dna_fast.teacher", ("Teacher", "train_teacher", "build_embedded_teacher")),),
    "distill": (_Need("dna_fast.distill", ("distill", "load_supernet")), _Need("dna_fast.teacher", ("Teacher",))),
    "rate": (_Need("dna_fast.rating", ("rate",)), _Need("dna_fast.distill", ("load_supernet",))),
    "search": (_Need("dna_fast.stages.search", ("run_search_stage",)),),
    "retrain": (_Need("dna_fast.retrain", ("train_model",)), _Need("dna_fast.models", ("build",))),
    "evaluate": (_Need("dna_fast.retrain", ("evaluate",)),),
    "rank_check": (_Need("dna_fast.rank_check", ("run_units",)), _Need("dna_fast.retrain", ("train_model",))),
}


def stage_status(stage: str) -> str | None:
    """None when the stage's library is present, else why it is missing (e.g. ``dna_fast.rating.rate``)."""
    for need in _NEEDS[stage]:
        try:
            mod = importlib.import_module(need.module)
        except ModuleNotFoundError as e:
            if e.name == need.module:
                return f"{need.module} is not implemented yet"
            raise
        for n in need.names:
            if not hasattr(mod, n):
                return f"{need.module}.{n} is not implemented yet"
    return None


# ---------------------------------------------------------------------------------------------- run context
class Context:
    """Everything the stages share: config, run dir, device, rank, space, loaders (built lazily), logger."""

    def __init__(self, cfg: RunConfig, run_dir: Path, stages: Sequence[str], log: Callable[[str], None]) -> None:
        from ..space import SearchSpace

        self.cfg, self.run_dir, self.stages, self.log = cfg, run_dir, list(stages), log
        try:
            self.space = SearchSpace.load(cfg.space)
        except (ValueError, FileNotFoundError, OSError) as e:
            raise ConfigError(f"config key 'space': {e}") from None
        if cfg.data.root and cfg.data.backend == "embedded":
            # a data root means that data: read it with the best backend available (noted in config.yaml)
            cfg.data.backend = "auto"
            log(f"data.root given: data.backend embedded -> auto ({cfg.data.root})")
        self.image_size = cfg.data.image_size or _model_image_size(cfg.model) or self.space.default_image_size
        self.rank, self.world_size, self.local_rank = _dist_env()
        self.device = _resolve_device(cfg.device, self.local_rank)
        self._loaders: dict[tuple, Any] = {}

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def loader(self, split: str, batch_size: int | None = None) -> Any:
        """The loader of ``split`` (cached per batch size)."""
        import torch

        from ..data import build_loader

        d = self.cfg.data
        bs = batch_size or (d.val_batch_size if split == "val" and d.val_batch_size else d.batch_size)
        key = (split, bs)
        if key not in self._loaders:
            self._loaders[key] = build_loader(
                backend=d.backend, root=d.root, split=split, batch_size=bs, image_size=self.image_size,
                rank=self.rank, world_size=self.world_size, device=self.device, dtype=torch.float32,
                workers=d.workers, seed=self.cfg.seed, skip_corrupt=d.skip_corrupt,
                num_classes=self.cfg.num_classes or 1000,
                max_images={"train": d.max_train_images, "val": d.max_val_images}.get(split),
                random_interpolation=d.random_interpolation and split == "train",
            )
        return self._loaders[key]

    @property
    def num_classes(self) -> int:
        if self.cfg.num_classes:
            return self.cfg.num_classes
        return self.loader("val").num_classes

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)


def check_data(ctx: Context) -> None:
    """The data a stage reads exists: ``data.root`` where the backend needs one, DALI where it is asked for."""
    d = ctx.cfg.data
    if d.backend in ("dali", "torchvision", "auto") and not d.root:
        raise ConfigError(f"data backend {d.backend!r} needs data.root: a folder with train/ and val/ class "
                          "folders (or use data.backend=embedded)")
    if d.root and not Path(d.root).is_dir():
        raise FileNotFoundError(f"data.root {d.root!r} does not exist: point data.root at a folder with train/ "
                                "and val/ class folders")
    if d.backend == "dali":
        from ..data import resolve_backend

        resolve_backend("dali")


def _model_image_size(name: str | None) -> int | None:
    """Input size of a named timm model's default config (``dna_a`` -> 224), None without a model."""
    if not name:
        return None
    import timm

    _register_models()
    if not timm.is_model(name):
        return None
    cfg = timm.models.get_pretrained_cfg(name)
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else None


def _register_models() -> None:
    """Imports the modules that register dna_fast's timm models (dna_a..dna_d, dna_mini_teacher)."""
    importlib.import_module("dna_fast.models")
    if stage_status("teacher") is None:
        importlib.import_module("dna_fast.teacher")


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _resolve_device(name: str, local_rank: int) -> Any:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"config key 'device': {name!r} but no CUDA GPU is usable here: use device=cpu")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    return torch.device(name)


def _init_distributed(ctx: Context) -> None:
    import torch
    import torch.distributed as dist

    if ctx.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if ctx.device.type == "cuda" else "gloo"
        if ctx.device.type == "cuda":
            torch.cuda.set_device(ctx.device)
        dist.init_process_group(backend=backend)


def _write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj, default=str)
