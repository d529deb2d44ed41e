"""The pipeline runner: stage order, the input checks of the selected stages before anything is written, resume
(each stage skips what the run directory already holds), and the summary at the end.

A stage is a module of this package with ``stage_<name>(ctx)`` (runs it), ``check_inputs(ctx)`` (raises when its
input is missing and nothing earlier in this run makes it), ``input_present(ctx)`` (whether it can run after an
earlier stage went missing) and ``READS_DATA``. ``python -m dna_fast.train`` (:mod:`dna_fast.train`) parses the
command line and calls :func:`run`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from ..config import ConfigError, RunConfig, dump_yaml
from . import distill, evaluate, rank_check, rate, retrain, search, teacher
from ._context import Context, _dist_env, _init_distributed, check_data, stage_status

__all__ = ["ALL_STAGES", "STAGES", "run", "check_inputs", "parse_stages"]

STAGES = ("teacher", "distill", "rate", "search", "retrain", "evaluate")
# stages run only when asked for (--stages) or enabled in the config (rank_check.enabled)
ALL_STAGES = (*STAGES, "rank_check")

_MODULES = {"teacher": teacher, "distill": distill, "rate": rate, "search": search, "retrain": retrain,
            "evaluate": evaluate, "rank_check": rank_check}
_RUNNERS: dict[str, Callable[[Context], Any]] = {st: getattr(m, f"stage_{st}") for st, m in _MODULES.items()}


def check_inputs(ctx: Context) -> None:
    """Every problem that would stop a selected stage, found before anything is written.

    Raises:
        StageInputError / ConfigError / FileNotFoundError with one message naming the cause and the fix.
    """
    sel = [st for st in ALL_STAGES if st in ctx.stages]
    if any(_MODULES[st].READS_DATA for st in sel):
        check_data(ctx)
    for st in sel:
        _MODULES[st].check_inputs(ctx)


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
        from ..summary import write_summary

        summary = write_summary(ctx)
        log("")
        log(summary["table"])
        if "rank_check" in ran:
            from ..rank_check import closing_lines

            log("")
            log("\n".join(closing_lines(results["rank_check"], cfg)))
        log(f"\nreport: {run_dir / 'report.md'}   summary: {run_dir / 'summary.json'}")
    if missing:
        log(f"\npipeline incomplete: stage(s) {', '.join(missing)} not implemented yet; no results were made up.")
    return {"ran": ran, "missing": missing, "skipped": skipped, "summary": summary, "results": results}


def _input_present(ctx: Context, st: str) -> bool:
    return _MODULES[st].input_present(ctx)
