"""``python -m dna_fast.train``: the DNA pipeline from one run config.

Stages, in order (each reads only what the earlier ones wrote to the run directory, so each resumes or re-runs
alone): ``teacher`` (train the small teacher, or check and score the given one), ``distill`` (block-wise
distillation of the supernet), ``rate`` (every candidate of every block), ``search`` (exact search under the
budget), ``retrain`` (the found architecture, the random controls, or ``model=...``), ``evaluate`` (top-1 / top-5,
then ``summary.json`` and ``report.md``).

Bad input (unknown config key, wrong type, missing data path or checkpoint, a stage whose input the run directory
lacks, a damaged checkpoint or rating table) stops with one message and exit code 2, before anything is written or
without changing what was.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._io import DamagedFileError, atomic_write_json, atomic_write_text, load_checkpoint
from .config import ConfigError, RunConfig, builtin_run_config, dump_yaml, load_config

__all__ = ["ALL_STAGES", "STAGES", "main", "run", "StageInputError", "stage_status"]

STAGES = ("teacher", "distill", "rate", "search", "retrain", "evaluate")
# stages run only when asked for (--stages) or enabled in the config (rank_check.enabled)
ALL_STAGES = (*STAGES, "rank_check")
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1  # the run could not finish: a stage's library is missing, the disk is full


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
        from .space import SearchSpace

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

        from .data import build_loader

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


def _data_fallback(cfg: RunConfig, run_dir_given: bool, log: Callable[[str], None]) -> None:
    """``data.backend=fashion_mnist`` without its files and with ``data.fallback`` set: use the fallback backend.

    The message says how to get Fashion-MNIST. Unless the run dir was given, the fallback run goes to
    ``<run_dir>-digits`` (``-<fallback>``) so that it never resumes (or is resumed by) a Fashion-MNIST run.
    """
    d = cfg.data
    if d.backend != "fashion_mnist" or not d.fallback or d.fallback == "fashion_mnist":
        return
    from .data.fashion_mnist import find_fashion_mnist

    try:
        find_fashion_mnist(d.root)
        return
    except FileNotFoundError as e:
        why = str(e)
    d.backend, d.root = d.fallback, None
    if not run_dir_given:
        cfg.run_dir = f"{cfg.run_dir}-{'digits' if d.fallback == 'embedded' else d.fallback}"
    log(f"{why}\n-> this run uses data.backend={d.fallback} instead (run dir {cfg.run_dir})")


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


# ---------------------------------------------------------------------------------------------- file contracts
def teacher_checkpoint(ctx: Context) -> Path | None:
    """The teacher weights the run uses: the trained one in the run dir, or ``teacher.checkpoint``."""
    t = ctx.cfg.teacher
    if t.train:
        return ctx.path("checkpoints", "teacher.pth")
    if t.checkpoint:
        p = Path(t.checkpoint)
        return p if p.is_file() or not ctx.path(t.checkpoint).is_file() else ctx.path(t.checkpoint)
    return None


def supernet_epochs(ctx: Context) -> int | None:
    """Epochs the run dir's distilled supernet has finished (None: no checkpoint)."""
    p = ctx.path("checkpoints", "supernet_last.pt")
    if not p.is_file():
        return None
    ck = load_checkpoint(p, what="supernet checkpoint", fix="delete it to distill again from scratch, or restore it")
    return int(ck.get("epoch", 0))


def supernet_done(ctx: Context) -> bool:
    """Whether distillation finished all ``distill.epochs`` epochs."""
    done = supernet_epochs(ctx)
    return done is not None and done >= ctx.cfg.distill.epochs


def ratings_done(ctx: Context) -> bool:
    return all(ctx.path("ratings", f"block{i}.parquet").is_file() for i in range(ctx.space.num_blocks))


def search_done(ctx: Context) -> bool:
    return ctx.path("search", "results.json").is_file()


def retrain_entries(ctx: Context) -> list[str]:
    """Names of the retrain runs of this config: ``found`` and ``random_1..n``, or the ``model`` name."""
    if ctx.cfg.model:
        return [ctx.cfg.model]
    return ["found"] + [f"random_{k + 1}" for k in range(ctx.cfg.control.num_random)]


def _retrain_done(ctx: Context, name: str) -> bool:
    return ctx.path("retrain", name, "metrics.json").is_file()


# ---------------------------------------------------------------------------------------------- input checks
def check_inputs(ctx: Context) -> None:
    """Every problem that would stop a selected stage, found before anything is written.

    Raises:
        StageInputError / ConfigError / FileNotFoundError with one message naming the cause and the fix.
    """
    cfg, sel = ctx.cfg, set(ctx.stages)
    needs_data = sel & {"teacher", "distill", "rate", "retrain", "evaluate"}
    if needs_data:
        d = cfg.data
        if d.backend in ("dali", "torchvision", "auto") and not d.root:
            raise ConfigError(f"data backend {d.backend!r} needs data.root: a folder with train/ and val/ class "
                              "folders (or use data.backend=embedded)")
        if d.root and not Path(d.root).is_dir():
            raise FileNotFoundError(f"data.root {d.root!r} does not exist: point data.root at a folder with train/ "
                                    "and val/ class folders")
        if d.backend == "dali":
            from .data import resolve_backend

            resolve_backend("dali")
    t = cfg.teacher
    if sel & {"teacher", "distill", "rate"}:
        if not t.train:
            ck = teacher_checkpoint(ctx)
            if ck is not None and not ck.is_file():
                raise FileNotFoundError(f"teacher.checkpoint {t.checkpoint!r} does not exist: give the path of the "
                                        "teacher's weights, or set teacher.train=true to train a small teacher")
            if ck is None and not t.pretrained and not t.allow_random_teacher:
                raise StageInputError("no teacher weights: set teacher.checkpoint=PATH, teacher.pretrained=true or "
                                      "teacher.train=true")
        elif "teacher" not in sel and not teacher_checkpoint(ctx).is_file() and sel & {"distill", "rate"}:
            raise StageInputError(f"stage distill/rate needs the trained teacher {teacher_checkpoint(ctx)}: run "
                                  "--stages teacher first (teacher.train=true)")
    if "rate" in sel and "distill" not in sel and stage_status("distill") is None and not supernet_done(ctx):
        done = supernet_epochs(ctx)
        have = "no supernet" if done is None else f"a supernet distilled for {done} of {cfg.distill.epochs} epochs"
        raise StageInputError(f"stage rate needs the distilled supernet; {ctx.run_dir}/checkpoints holds {have}: "
                              "run --stages distill first")
    if "search" in sel and "rate" not in sel and not ratings_done(ctx):
        raise StageInputError(f"stage search needs {ctx.run_dir}/ratings/block{{0..{ctx.space.num_blocks - 1}}}"
                              ".parquet: run --stages rate first")
    if "retrain" in sel and not cfg.model and "search" not in sel and not search_done(ctx):
        raise StageInputError(f"stage retrain needs {ctx.run_dir}/search/results.json: run --stages search first, "
                              "or retrain a named model with model=dna_a")
    if "retrain" in sel and cfg.retrain.inherit and not cfg.model and "distill" not in sel \
            and stage_status("distill") is None and not supernet_done(ctx):
        raise StageInputError("retrain.inherit=true needs the distilled supernet: run --stages distill first")
    if cfg.model and sel & {"retrain", "evaluate"}:
        import timm

        _register_models()
        if not timm.is_model(cfg.model):
            raise ConfigError(f"config key 'model': {cfg.model!r} is not a timm model (e.g. dna_a, dna_b, dna_c, "
                              "dna_d, efficientnet_b0); leave it empty to use the search result")
    if "rank_check" in sel:
        _check_rank_check_plan(ctx)
    if "rank_check" in sel and "rate" not in sel and not ratings_done(ctx):
        raise StageInputError(f"stage rank_check needs {ctx.run_dir}/ratings/block{{0..{ctx.space.num_blocks - 1}}}"
                              ".parquet: run the pipeline up to --stages rate first")
    if "evaluate" in sel and "retrain" not in sel:
        if cfg.model and cfg.checkpoint:
            if not Path(cfg.checkpoint).is_file():
                raise FileNotFoundError(f"checkpoint {cfg.checkpoint!r} does not exist: give the weights to evaluate")
        elif cfg.model and not cfg.checkpoint and not ctx.path("retrain", cfg.model, "last.pth").is_file():
            raise StageInputError(f"stage evaluate of model={cfg.model} needs checkpoint=PATH (or a retrain of it "
                                  f"in {ctx.run_dir}/retrain/{cfg.model})")
        elif not cfg.model:
            missing = [n for n in retrain_entries(ctx) if not ctx.path("retrain", n, "last.pth").is_file()]
            if missing:
                raise StageInputError(f"stage evaluate needs the retrained {', '.join(missing)} in "
                                      f"{ctx.run_dir}/retrain: run --stages retrain first")


def _check_run_dir(ctx: Context) -> None:
    """A run dir made for another search space is not reused (its checkpoints would not fit)."""
    import yaml

    p = ctx.path("config.yaml")
    if p.is_file():
        try:
            old = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError:
            return
        if isinstance(old, dict) and old.get("space") not in (None, ctx.cfg.space):
            raise ConfigError(f"run dir {str(ctx.run_dir)!r} was made for space {old.get('space')!r}, the config "
                              f"says {ctx.cfg.space!r}: use another --run-dir")


def _write_config(ctx: Context) -> None:
    """Writes the resolved ``config.yaml``; a different one already there is kept as ``config.<time>.yaml``."""
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    p = ctx.path("config.yaml")
    text = dump_yaml(ctx.cfg)
    if p.is_file():
        if p.read_text() == text:
            return
        os.replace(p, ctx.path(f"config.{time.strftime('%Y%m%d-%H%M%S')}.yaml"))
    atomic_write_text(p, text)


# ---------------------------------------------------------------------------------------------- stages
def _write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj, default=str)


def build_teacher(ctx: Context) -> Any:
    """The ``Teacher`` of the run (weights from the run dir's trained teacher or the config)."""
    from .teacher import Teacher, build_embedded_teacher

    t = ctx.cfg.teacher
    ck = teacher_checkpoint(ctx)
    if t.train:
        model = build_embedded_teacher(ctx.space, num_classes=ctx.num_classes)
        return Teacher(model, ctx.space, checkpoint=ck, train_bn=t.bn == "train")
    name = t.model or ctx.space.teacher.model
    return Teacher(name, ctx.space, checkpoint=ck, pretrained=t.pretrained, allow_random_teacher=t.allow_random_teacher,
                   train_bn=t.bn == "train")


def stage_teacher(ctx: Context) -> dict:
    """Trains the small teacher (``teacher.train``) or scores the given one; writes ``teacher/metrics.json``."""
    from .teacher import build_embedded_teacher, train_teacher

    t, out = ctx.cfg.teacher, ctx.path("teacher", "metrics.json")
    if out.is_file():
        res = json.loads(out.read_text())
        ctx.log(f"[teacher] done before: val top-1 {res['acc']:.2f} %")
        return res
    if t.train:
        model = build_embedded_teacher(ctx.space, num_classes=ctx.num_classes)
        acc = train_teacher(model, ctx.loader("train"), ctx.loader("val"), epochs=t.epochs, lr=t.lr,
                            device=ctx.device, out_path=teacher_checkpoint(ctx))
        model_name = "embedded teacher"
    else:
        from .retrain import evaluate

        teacher = build_teacher(ctx)  # checks channels and strides against the space
        # top-1 over the whole val split (summed over ranks under torchrun), bf16 on GPU
        acc = evaluate(teacher.model.to(ctx.device), ctx.loader("val"), ctx.device)["top1"] / 100.0
        model_name = t.model or ctx.space.teacher.model
    res = {"model": model_name, "acc": None if acc is None else 100.0 * acc, "trained": t.train,
           "checkpoint": str(teacher_checkpoint(ctx))}
    if ctx.is_main:
        _write_json(res, out)
    ctx.log(f"[teacher] val top-1 {res['acc']:.2f} %" if res["acc"] is not None else "[teacher] ready")
    return res


def distill_augment(ctx: Context) -> Any:
    """The distillation's batch augmentation (``distill.color_jitter`` / ``distill.random_erasing``), None if off."""
    from .distill import BatchAugment

    d = ctx.cfg.distill
    aug = BatchAugment(d.color_jitter, d.random_erasing, seed=ctx.cfg.seed)
    return aug if aug.active else None


def _augmented(loader: Any, augment: Any) -> Any:
    """``loader``'s batches with ``augment`` applied (step = batch position), for the train calibration batch."""
    for step, batch in enumerate(loader):
        yield (augment(batch[0], step), *batch[1:]) if augment is not None else batch


def stage_distill(ctx: Context) -> dict:
    """Distills the supernet into ``checkpoints/supernet_last.pt`` (resumes from it; done when all epochs are)."""
    from .distill import distill
    from .supernet import Supernet

    d = ctx.cfg.distill
    if supernet_done(ctx):
        ctx.log(f"[distill] done before: {ctx.path('checkpoints', 'supernet_last.pt')} has all {d.epochs} epochs")
        return {"epoch": supernet_epochs(ctx), "resumed": True}
    supernet = Supernet(ctx.space, cell_stems=d.cells == "parallel")
    teacher = build_teacher(ctx)
    kwargs: dict[str, Any] = dict(epochs=d.epochs, device=ctx.device, seed=ctx.cfg.seed, sampling=d.sampling,
                                  cells=d.cells,
                                  checkpoint_every_steps=d.checkpoint_every_steps, tensorboard=False,
                                  progress=sys.stderr.isatty())
    if d.lr is not None:
        kwargs["lr"] = [d.lr] * ctx.space.num_blocks
    if d.max_steps_per_epoch:
        kwargs["max_steps_per_epoch"] = d.max_steps_per_epoch
    kwargs.update(weight_decay=d.weight_decay, weight_decay_1d=d.weight_decay_1d, lr_decay=d.lr_decay,
                  lr_epoch_offset=d.lr_epoch_offset, amp=None if d.amp == "auto" else d.amp,
                  augment=distill_augment(ctx))
    res = distill(supernet, teacher, ctx.loader("train"), ctx.run_dir, **kwargs)
    losses = ", ".join(f"{x:.4g}" for x in res.get("block_losses", []))
    steps = "; ".join(f"block {i}: " + ", ".join(f"{b.cells[c].label} {n}" for c, n in enumerate(cs))
                      for i, (b, cs) in enumerate(zip(ctx.space.blocks, res.get("cell_steps", []))))
    ctx.log(f"[distill] epoch {res.get('epoch')} of {d.epochs}{' (resumed)' if res.get('resumed') else ''}; "
            f"block losses {losses}; steps per cell ({d.cells}) {steps}")
    return res


def stage_rate(ctx: Context) -> dict:
    from .distill import load_supernet
    from .rating import rate

    r = ctx.cfg.rate
    if ratings_done(ctx):
        ctx.log(f"[rate] done before: {ctx.run_dir}/ratings/ has all {ctx.space.num_blocks} tables")
        return {"tables": ctx.space.num_blocks}
    supernet = load_supernet(ctx.run_dir, ctx.space)
    teacher = build_teacher(ctx)
    import torch

    dtype = torch.bfloat16 if r.bf16 and ctx.device.type == "cuda" else torch.float32
    loader = ctx.loader("val", r.batch_size or ctx.cfg.data.batch_size)
    from_train = r.calib_source == "train"
    need = r.num_batches + (0 if from_train else r.calib_batches)
    if len(loader) < need:
        raise StageInputError(f"rate needs {'' if from_train else 'rate.calib_batches + '}rate.num_batches = {need}"
                              f" batches but the val split gives {len(loader)} of {loader.batch_size}: lower them or "
                              "rate.batch_size")
    calib_loader = None
    if from_train:  # the authors': augmented training batches (the run seed's first), drawn once
        train_loader = ctx.loader("train", r.batch_size or ctx.cfg.data.batch_size)
        train_loader.set_epoch(0)  # the same batch whether or not distillation ran in this process
        calib_loader = _augmented(train_loader, distill_augment(ctx))
    res = rate(supernet.to(ctx.device), teacher.to(ctx.device), loader, ctx.run_dir, num_batches=r.num_batches,
               calib_batches=r.calib_batches, device=ctx.device, dtype=dtype, progress=sys.stderr.isatty(),
               calib_loader=calib_loader, recalibrate_teacher=ctx.cfg.teacher.bn == "train")
    best = ", ".join(f"{t['loss'].min():.4g}" for t in res)
    ctx.log(f"[rate] {sum(len(t) for t in res)} candidates rated -> {ctx.run_dir}/ratings/ (best loss per block: "
            f"{best})")
    return {"tables": len(res)}


def stage_search(ctx: Context) -> dict:
    """Exact search under ``search.budget`` (skipped when ``search/results.json`` has the same budget and top-k).

    A new result whose best architecture differs from the one already retrained moves ``retrain/`` aside to
    ``retrain.stale-<time>`` (kept, not deleted), so retraining never resumes another architecture's checkpoint.
    """
    from .search import parse_budget
    from .stages.search import run_search_stage

    s = ctx.cfg.search
    budget = parse_budget(s.budget)
    metric = ctx.cfg.rate.metric
    try:
        fixed = {str(i): ctx.space.format(int(i), ctx.space.parse(int(i), c)) for i, c in s.fixed_blocks.items()}
    except (ValueError, IndexError) as e:
        raise ConfigError(f"config key 'search.fixed_blocks': {e}") from None
    res_path = ctx.path("search", "results.json")
    if res_path.is_file():
        old = json.loads(res_path.read_text())
        same = old.get("metric", "loss") == metric and old.get("fixed_blocks", {}) == fixed
        if [b.get("budget") for b in old.get("budgets", [])] == [budget] and old.get("top_k") == s.top_k and same:
            best = found_architecture(ctx)
            ctx.log(f"[search] done before: best {best['arch_str']} ({best['macs'] / 1e6:.3f} M MACs)")
            return old
    res = run_search_stage(ctx.run_dir, [budget], top_k=s.top_k, space=ctx.space, image_size=ctx.image_size,
                           num_classes=ctx.num_classes, metric=metric, fixed_blocks=s.fixed_blocks)
    best = found_architecture(ctx)
    ctx.log(f"[search] budget {s.budget}: best {best['arch_str']} ({best['macs'] / 1e6:.3f} M MACs)")
    plan_path = ctx.path("retrain", "plan.json")
    if ctx.is_main and plan_path.is_file():
        plan = json.loads(plan_path.read_text())
        if plan.get("found", {}).get("choices") != best["choices"]:
            stale = ctx.path(f"retrain.stale-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(ctx.path("retrain"), stale)
            ctx.log(f"[search] the best architecture changed: moved the old retrain/ to {stale.name}/")
    return res if isinstance(res, dict) else {}


def found_architecture(ctx: Context) -> dict:
    """The best architecture of ``search/results.json``: ``choices`` (candidate strings), ``arch_def``, costs."""
    from . import cost, models

    data = json.loads(ctx.path("search", "results.json").read_text())
    entry = None
    for b in data.get("budgets") or []:
        if b.get("results"):
            entry = b["results"][0]
            break
    if entry is None:
        raise StageInputError(f"{ctx.run_dir}/search/results.json holds no architecture within the budget: run "
                              "--stages search again with a larger search.budget")
    if entry.get("choices"):
        choices = [ctx.space.parse(i, c) for i, c in enumerate(entry["choices"])]
    else:
        choices = models.choices_from_arch_def(ctx.space, entry["arch_def"])
    c = cost.network_cost(ctx.space, choices, ctx.image_size, ctx.num_classes)
    return {"choices": [str(x) for x in choices], "arch_def": models.arch_def(ctx.space, choices),
            "arch_str": " | ".join(str(x) for x in choices), "macs": int(c["macs"]), "params": int(c["params"]),
            "loss": entry.get("loss")}


def random_controls(ctx: Context, found: dict, n: int, tolerance: float, max_tries: int = 200_000) -> list[dict]:
    """``n`` distinct random architectures of the space (not the found one) with MACs within ``tolerance``."""
    import random

    from . import cost, models

    space, rng = ctx.space, random.Random(ctx.cfg.seed + 1)
    cands = [space.candidates(i) for i in range(space.num_blocks)]
    base_cache: dict[int, int] = {}
    cand_cache: dict[tuple, int] = {}
    target, seen, out = found["macs"], {tuple(found["choices"])}, []
    for _ in range(max_tries):
        choice = [rng.choice(c) for c in cands]
        key = tuple(str(c) for c in choice)
        if key in seen:
            continue
        macs, width = 0, space.stem_out_chs
        for i, c in enumerate(choice):
            k = (i, str(c), width)
            if k not in cand_cache:
                cand_cache[k] = int(cost.candidate_cost(space, i, c, ctx.image_size, child_in_chs=width)["macs"])
            macs += cand_cache[k]
            width = space.blocks[i].cells[c.cell].width
        if width not in base_cache:
            base_cache[width] = int(cost.base_cost(space, ctx.image_size, ctx.num_classes, last_width=width)["macs"])
        macs += base_cache[width]
        if abs(macs - target) <= tolerance * target:
            seen.add(key)
            c = cost.network_cost(space, choice, ctx.image_size, ctx.num_classes)
            out.append({"choices": list(key), "arch_def": models.arch_def(space, choice), "arch_str": " | ".join(key),
                        "macs": int(c["macs"]), "params": int(c["params"])})
            if len(out) == n:
                return out
    raise StageInputError(f"found only {len(out)} of {n} random architectures within {tolerance:.0%} of the found "
                          f"one's MACs in {max_tries} samples: raise control.macs_tolerance or lower "
                          "control.num_random")


def _build_child(ctx: Context, entry: dict) -> Any:
    import timm

    from . import models

    r = ctx.cfg.retrain
    kw = dict(drop_rate=r.dropout, drop_path_rate=r.drop_path)
    if "choices" in entry:
        return models.build(ctx.space, entry["choices"], num_classes=ctx.num_classes, **kw)
    _register_models()
    return timm.create_model(entry["model"], num_classes=ctx.num_classes, **kw)


def _register_models() -> None:
    """Imports the modules that register dna_fast's timm models (dna_a..dna_d, dna_mini_teacher)."""
    importlib.import_module("dna_fast.models")
    if stage_status("teacher") is None:
        importlib.import_module("dna_fast.teacher")


def retrain_plan(ctx: Context) -> dict[str, dict]:
    """name -> architecture entry of every retrain run (cached in ``retrain/plan.json`` so resumes match)."""
    plan_path = ctx.path("retrain", "plan.json")
    if ctx.cfg.model:
        return {ctx.cfg.model: {"model": ctx.cfg.model}}
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
        found = found_architecture(ctx)
        if plan.get("found", {}).get("choices") != found["choices"]:
            raise StageInputError(f"{plan_path.parent} holds the retraining of another architecture than "
                                  "search/results.json's best: move it away or use a new --run-dir")
        if set(plan) == set(retrain_entries(ctx)):
            return plan
    found = found_architecture(ctx)
    plan = {"found": found}
    ctl = ctx.cfg.control
    if ctl.num_random:
        for k, e in enumerate(random_controls(ctx, found, ctl.num_random, ctl.macs_tolerance)):
            plan[f"random_{k + 1}"] = e
    if ctx.is_main:
        _write_json(plan, plan_path)
    return plan


def stage_retrain(ctx: Context) -> dict:
    from .retrain import train_model

    r = ctx.cfg.retrain
    plan = retrain_plan(ctx)
    results = {}
    for name, entry in plan.items():
        out = ctx.path("retrain", name)
        label = entry.get("arch_str") or entry.get("model")
        if _retrain_done(ctx, name):
            ctx.log(f"[retrain] {name}: done before")
        else:
            ctx.log(f"[retrain] {name}: {label}")
        model = _build_child(ctx, entry)
        if r.inherit and "choices" in entry and not (out / "last.pth").is_file():
            from .distill import load_supernet
            from .models import inherit_weights

            rep = inherit_weights(model, load_supernet(ctx.run_dir, ctx.space), entry["choices"])
            ctx.log(f"[retrain] {name}: inherited {len(rep.copied)} tensors from the supernet")
        meta = {k: entry[k] for k in ("choices", "arch_def", "macs", "params", "model") if k in entry}
        res = train_model(model, ctx.loader("train", r.batch_size), ctx.loader("val"), out, cfg=r, device=ctx.device,
                          meta=meta, log=ctx.log)
        results[name] = res
        ctx.log(f"[retrain] {name}: val top-1 {res['top1']:.2f} % (EMA {_fmt(res.get('ema_top1'))} %)")
    return results


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def _short(res: Any) -> str:
    if not isinstance(res, dict):
        return "ok"
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(res.items())[:6]
                     if isinstance(v, (int, float, str)))


def stage_evaluate(ctx: Context) -> dict:
    """Top-1 / top-5 of the raw and EMA weights of every retrained model (or of ``model`` + ``checkpoint``)."""
    import timm

    from .retrain import evaluate, load_weights

    r, val = ctx.cfg.retrain, ctx.loader("val")
    results = {}
    if ctx.cfg.model and ctx.cfg.checkpoint:
        _register_models()
        model = timm.create_model(ctx.cfg.model, num_classes=ctx.num_classes).to(ctx.device)
        model.load_state_dict(load_weights(ctx.cfg.checkpoint))
        res = evaluate(model, val, ctx.device, amp=r.amp, channels_last=r.channels_last)
        res.update(model=ctx.cfg.model, checkpoint=str(ctx.cfg.checkpoint))
        if ctx.is_main:
            _write_json(res, ctx.path("evaluate", f"{ctx.cfg.model}.json"))
        ctx.log(f"[evaluate] {ctx.cfg.model}: top-1 {res['top1']:.2f} %  top-5 {res['top5']:.2f} %  "
                f"({res['n']} images)")
        return {ctx.cfg.model: res}
    plan = retrain_plan(ctx)
    for name, entry in plan.items():
        ck = ctx.path("retrain", name, "last.pth")
        model = _build_child(ctx, entry).to(ctx.device)
        state = load_checkpoint(ck, what="retrain checkpoint", fix=f"delete {ck.parent} to retrain {name} again")
        model.load_state_dict(state["model"])
        res = {"raw": evaluate(model, val, ctx.device, amp=r.amp)}
        if state.get("ema") is not None:
            model.load_state_dict(state["ema"])
            res["ema"] = evaluate(model, val, ctx.device, amp=r.amp)
        res["acc"] = res["ema"]["top1"] if "ema" in res else res["raw"]["top1"]
        res.update({k: entry[k] for k in ("arch_def", "macs", "params", "model", "choices") if k in entry})
        if ctx.is_main:
            _write_json(res, ctx.path("retrain", name, "eval.json"))
        results[name] = res
        ctx.log(f"[evaluate] {name}: top-1 {res['raw']['top1']:.2f} % (EMA {_fmt(res.get('ema', {}).get('top1'))} %)")
    return results


def _machine() -> str:
    import platform

    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.node()}: {model or platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def _parse_compare(text: str) -> dict[str, str]:
    out = {}
    for item in [x.strip() for x in text.split(",") if x.strip()]:
        if "=" not in item:
            raise ConfigError(f"config key 'rank_check.compare': {item!r} is not LABEL=RUN_DIR")
        lab, d = item.split("=", 1)
        out[lab.strip()] = d.strip()
    return out


def _rank_check_key(cfg: RunConfig) -> dict:
    """The rank_check settings a plan is made with (those that change what is trained)."""
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(cfg.rank_check).items()
            if k not in ("enabled", "analyze_only", "bootstrap", "compare", "workers", "equal_macs_tolerance")}


def _check_rank_check_plan(ctx: Context) -> None:
    p = ctx.path("rank_check", "plan.json")
    if p.is_file():
        old = json.loads(p.read_text()).get("config")
        if old is not None:  # settings added since the plan was made count with their defaults
            old = {**_rank_check_key(RunConfig()), **old}
        if old != _rank_check_key(ctx.cfg):
            diff = {k: v for k, v in (old or {}).items() if _rank_check_key(ctx.cfg).get(k) != v}
            raise StageInputError(f"{p} was made with other rank_check settings ({diff}): keep those settings to "
                                  "resume the study, or move rank_check/ away to start a new one")


def stage_rank_check(ctx: Context) -> dict:
    """The ranking check (:mod:`dna_fast.rank_check`): stand-alone blocks and networks vs the ratings.

    Writes ``rank_check/plan.json`` once (what is trained: reused on a rerun, so the study resumes unit by unit),
    one file per finished unit, and ``rank_check/results.json`` / ``report.md`` / plots after every unit.
    """
    import dataclasses

    import torch

    from . import models
    from . import rank_check as rk
    from .data import build_loader
    from .rating import load_ratings
    from .retrain import train_model

    rc, space = ctx.cfg.rank_check, ctx.space
    out = ctx.path("rank_check")
    out.mkdir(parents=True, exist_ok=True)
    key = _rank_check_key(ctx.cfg)
    plan_path = out / "plan.json"
    _check_rank_check_plan(ctx)
    compare = {}
    for lab, cdir in _parse_compare(rc.compare).items():
        try:
            compare[lab] = load_ratings(cdir, space.num_blocks)
        except FileNotFoundError as e:
            raise StageInputError(f"rank_check.compare {lab}={cdir}: {e}") from None
    seed = ctx.cfg.seed if rc.seed is None else rc.seed
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
    else:
        tables = load_ratings(ctx.run_dir, space.num_blocks)
        found, controls = None, None
        if search_done(ctx):
            found = found_architecture(ctx)
            found = {k: found[k] for k in ("choices", "macs", "params")}
            if rc.found_random:
                ctl = random_controls(ctx, found, rc.found_random, rc.macs_tolerance)
                controls = {f"random_{k + 1}": {k2: e[k2] for k2 in ("choices", "macs", "params")}
                            for k, e in enumerate(ctl)}
        source = None
        if rc.block_candidates_from:
            source = {**json.loads(Path(rc.block_candidates_from).read_text()), "source": rc.block_candidates_from}
        plan = rk.build_plan(space, tables, rc, seed=seed, image_size=ctx.image_size,
                             num_classes=ctx.num_classes, found=found, controls=controls, candidates_from=source)
        plan["config"] = key
        if ctx.is_main:
            _write_json(plan, plan_path)
    d = ctx.cfg.data
    eval_split = "test" if d.backend == "fashion_mnist" else "val"
    block_steps = rc.block_steps
    if not block_steps:
        per_epoch = len(ctx.loader("train"))
        block_steps = ctx.cfg.distill.epochs * min(per_epoch, ctx.cfg.distill.max_steps_per_epoch or per_epoch)
    extra = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": _machine(),
             "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file()
             else None, "threads": torch.get_num_threads(), "workers": rc.workers, "data": d.backend,
             "network_eval_split": eval_split, "block_steps": block_steps,
             "distill_sampling": ctx.cfg.distill.sampling, "run_dir": str(ctx.run_dir)}
    if rc.analyze_only:
        res = rk.refresh(out, plan, rc.noise_seeds, rc.bootstrap, seed, extra, compare=compare,
                         equal_macs_tolerance=rc.equal_macs_tolerance)
        ctx.log(f"[rank_check] analyzed {res['status']['done']} of {res['status']['total']} finished units")
        return res
    teacher = build_teacher(ctx).to(ctx.device).eval()
    left_blocks = sorted({spec[0] for kind, spec in rk.units(plan, rc.noise_seeds)
                          if kind == "block" and not rk.unit_done(out, kind, spec)})
    feats: dict[int, Any] = {}
    if left_blocks:  # one teacher pass for every block (before the workers fork, who share it)
        bs = rc.block_batch_size
        tr = rk.block_features(teacher, ctx.loader("train", bs), left_blocks, rc.block_train_images, ctx.device)
        va = rk.block_features(teacher, ctx.loader("val", bs), left_blocks, rc.block_val_images, ctx.device)
        feats = {b: (tr[b], va[b]) for b in left_blocks}

    def train_block(b: int, cand: str, seed: int) -> dict:
        tr, va = feats[b]
        return rk.train_block_candidate(space, b, cand, tr, va, steps=block_steps, lr=rc.block_lr,
                                        batch_size=rc.block_batch_size, seed=seed, device=ctx.device)

    rcfg = dataclasses.replace(ctx.cfg.retrain, epochs=rc.network_epochs)
    eval_loader = ctx.loader(eval_split) if eval_split == "val" else build_loader(
        backend=d.backend, root=d.root, split=eval_split, batch_size=d.val_batch_size or d.batch_size,
        image_size=ctx.image_size, device=ctx.device)

    def train_net(name: str, entry: dict, seed: int) -> dict:
        torch.manual_seed(seed)
        model = models.build(space, entry["choices"], num_classes=ctx.num_classes, drop_rate=rcfg.dropout,
                             drop_path_rate=rcfg.drop_path)
        tl = build_loader(backend=d.backend, root=d.root, split="train", batch_size=rcfg.batch_size or d.batch_size,
                          image_size=ctx.image_size, device=ctx.device, seed=seed,
                          max_images=rc.network_train_images or d.max_train_images)
        meta = {"choices": entry["choices"], "macs": entry["macs"], "params": entry["params"], "seed": seed,
                "eval_split": eval_split}
        return train_model(model, tl, eval_loader, out / "networks" / f"{name}_s{seed}", cfg=rcfg, device=ctx.device,
                           meta=meta, log=lambda s: None)

    def work(log: Callable[[str], None], plots: bool) -> dict:
        return rk.run_units(out, plan, rc.noise_seeds, train_block=train_block, train_net=train_net,
                            n_boot=rc.bootstrap, seed=seed, log=log, extra=extra, plots=plots,
                            compare=compare, equal_macs_tolerance=rc.equal_macs_tolerance)

    return _run_workers(ctx, work, rc.workers)


def _run_workers(ctx: Context, work: Callable[[Callable[[str], None], bool], dict], workers: int) -> dict:
    """Runs ``work`` in ``workers`` processes (forked, sharing what is already in memory; the run's threads shared
    out among them; claims keep them off each other's units) and once more in this one for the final results."""
    import multiprocessing as mp

    import torch

    if workers > 1 and (ctx.device.type != "cpu" or "fork" not in mp.get_all_start_methods()):
        ctx.log(f"[rank_check] rank_check.workers={workers} needs the CPU and fork(): one process")
        workers = 1
    if workers == 1:
        return work(ctx.log, True)
    threads = max(1, torch.get_num_threads() // workers)
    fork = mp.get_context("fork")
    procs = []
    for k in range(1, workers):
        def child(k: int = k) -> None:
            torch.set_num_threads(threads)
            work(lambda s: ctx.log(f"{s} [worker {k + 1}]"), False)
        procs.append(fork.Process(target=child, name=f"rank_check-{k + 1}"))
        procs[-1].start()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        work(lambda s: ctx.log(f"{s} [worker 1]"), False)
    finally:
        for p in procs:
            p.join()
        torch.set_num_threads(old)
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"rank_check: worker(s) {', '.join(failed)} failed (see above); what they finished is "
                           "kept: rerun the same command to continue")
    return work(ctx.log, True)


_RUNNERS: dict[str, Callable[[Context], Any]] = {
    "teacher": stage_teacher, "distill": stage_distill, "rate": stage_rate, "search": stage_search,
    "retrain": stage_retrain, "evaluate": stage_evaluate, "rank_check": stage_rank_check,
}


# ---------------------------------------------------------------------------------------------- driver
def parse_stages(s: str | None) -> list[str]:
    if s is None or s.strip() == "":
        return list(STAGES)
    out = [x.strip().replace("-", "_") for x in s.split(",") if x.strip()]
    bad = [x for x in out if x not in ALL_STAGES]
    if bad:
        raise ConfigError(f"unknown stage(s) {', '.join(bad)}: choose from {','.join(ALL_STAGES)}")
    return [st for st in ALL_STAGES if st in out]  # always in pipeline order


def run(cfg: RunConfig, run_dir: str | os.PathLike, stages: Sequence[str] = STAGES,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the selected stages (checked first; nothing is written when a check fails).

    Returns:
        ``{"ran": [...], "missing": {stage: reason}, "skipped": {stage: reason}, "summary": dict | None}``.
    """
    import torch

    run_dir = Path(run_dir)
    if _dist_env()[0] != 0:
        log = lambda s: None  # noqa: E731  (one rank reports)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = Context(cfg, run_dir, stages, log)
    missing = {st: why for st in stages if (why := stage_status(st)) is not None}
    _check_run_dir(ctx)
    check_inputs(ctx)
    if cfg.teacher.train or any(st in stages for st in ("retrain", "evaluate", "distill", "rate")):
        ctx.loader("val")  # a bad data path fails here, before anything is written
    _init_distributed(ctx)
    if ctx.is_main:
        _write_config(ctx)
    ran, skipped, results = [], {}, {}
    blocked: str | None = None
    for st in stages:
        if st in missing:
            log(f"[{st}] missing: {missing[st]}; not run")
            blocked = blocked or st
            continue
        if blocked is not None and not _input_present(ctx, st):
            skipped[st] = f"needs the output of stage {blocked}, which is missing"
            log(f"[{st}] skipped: {skipped[st]}")
            continue
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed + ALL_STAGES.index(st))  # per stage: a stage run alone gives what a full run gives
        results[st] = _RUNNERS[st](ctx)
        ran.append(st)
        log(f"[{st}] {time.perf_counter() - t0:.1f} s")
    summary = None
    if ctx.is_main and not cfg.model and ("evaluate" in ran or "retrain" in ran or "rank_check" in ran):
        from .summary import write_summary

        summary = write_summary(ctx)
        log("")
        log(summary["table"])
        if "rank_check" in ran:
            from .rank_check import closing_lines

            log("")
            log("\n".join(closing_lines(results["rank_check"], cfg)))
        log(f"\nreport: {run_dir / 'report.md'}   summary: {run_dir / 'summary.json'}")
    if missing:
        log(f"\npipeline incomplete: stage(s) {', '.join(missing)} not implemented yet; no results were made up.")
    return {"ran": ran, "missing": missing, "skipped": skipped, "summary": summary, "results": results}


def _input_present(ctx: Context, st: str) -> bool:
    if st == "teacher":
        return True
    if st == "distill":
        return not ctx.cfg.teacher.train or teacher_checkpoint(ctx).is_file()
    if st == "rate":
        return supernet_done(ctx) if stage_status("distill") is None else False
    if st == "search":
        return ratings_done(ctx)
    if st == "retrain":
        return bool(ctx.cfg.model) or search_done(ctx)
    if st == "rank_check":
        return ratings_done(ctx)
    return all(ctx.path("retrain", n, "last.pth").is_file() for n in retrain_entries(ctx)) or bool(ctx.cfg.checkpoint)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dna_fast.train",
        description=(
            "Run the DNA pipeline (block-wise distillation NAS) from one YAML config. With no arguments: the embedded "
            "default (digits 32x32, dna_mini space; teacher, distill, rate, search under a MACs budget, retrain the "
            "found architecture and 3 random controls, evaluate) in runs/embedded, ending with a table, "
            "report.md and summary.json."
        ),
        epilog=(
            "stages: teacher (train the small teacher / score the given one), distill (supernet, block-wise), rate "
            "(every candidate of every block -> ratings/block{i}.parquet), search (exact, under search.budget -> "
            "search/results.json), retrain (found architecture + control.num_random random ones, or model=NAME), "
            "evaluate (top-1/top-5 raw and EMA; summary.json, report.md), rank_check (only when asked for or "
            "rank_check.enabled: blocks and networks trained alone vs the ratings -> rank_check/results.json). Each "
            "stage resumes from what --run-dir holds.\n\nexamples:\n"
            "  python -m dna_fast.train\n"
            "  python -m dna_fast.train --config configs/runs/imagenet_dna.yaml data.root=/data/imagenet\n"
            "  python -m dna_fast.train --run-dir runs/x --stages search search.budget=macs=20M\n"
            "  python -m dna_fast.train --stages evaluate model=dna_a checkpoint=dna_a.pth data.root=/data/imagenet "
            "data.backend=torchvision\n"
            "  torchrun --nproc_per_node=8 -m dna_fast.train --config configs/runs/imagenet_dna.yaml ...\n\n"
            "Exit codes: 0 done, 1 not finished (a stage's library is missing, the disk is full, a loss became NaN: "
            "what was written stays), 2 bad input (a bad config, a missing or damaged input file: nothing in the run "
            "dir is changed)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="run config YAML (default: the packaged configs/runs/embedded.yaml)")
    p.add_argument("--run-dir", help="run directory (default: the config's run_dir)")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(ALL_STAGES)} (default: {','.join(STAGES)}"
                   ", and rank_check when rank_check.enabled; always run in this order)")
    p.add_argument("--info", action="store_true", help="print dna_fast.backend_info() and the stage status, then exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted config overrides, e.g. distill.epochs=2 search.budget=macs=40M device=cpu")
    return p


def print_info(log: Callable[[str], None] = print) -> None:
    from . import backend_info

    for k, v in backend_info().items():
        log(f"{k}: {v}")
    for st in STAGES:
        why = stage_status(st)
        log(f"stage {st}: {'ready' if why is None else 'missing (' + why + ')'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.info:
        print_info()
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
        stages = parse_stages(args.stages)
        if args.stages is None and cfg.rank_check.enabled:
            stages.append("rank_check")
        _data_fallback(cfg, run_dir_given=bool(args.run_dir), log=lambda s: print(s, flush=True))
        run_dir = Path(args.run_dir or cfg.run_dir)
        if args.run_dir:
            cfg.run_dir = str(run_dir)
        if args.config is None and not args.run_dir:
            print(f"embedded default: {builtin_run_config('embedded')} -> {run_dir}", flush=True)
        res = run(cfg, run_dir, stages, log=lambda s: print(s, flush=True))
    except (ConfigError, StageInputError, FileNotFoundError, DamagedFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except FloatingPointError as e:  # a diverged stage (NaN / inf loss): its last checkpoint is kept
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:  # a data error from the loaders is bad input too
        from .data import DataError

        if isinstance(e, DataError):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise
    return 0 if not res["missing"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
