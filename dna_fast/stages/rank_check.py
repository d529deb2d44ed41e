"""The rank_check stage: do the ratings rank candidates like training them alone? (:mod:`dna_fast.rank_check`)

Runs only when asked for (``--stages rank_check``) or enabled (``rank_check.enabled``). Reads: the rating tables,
the teacher (block features), the data, ``search/results.json`` when present (found vs random), other runs' ratings
(``rank_check.compare``). Writes: ``rank_check/plan.json`` once (what is trained; a rerun with other settings is
refused), one file per finished unit (``rank_check/blocks/``, ``rank_check/networks/``), and after every unit
``results.json``, ``units.csv``, ``report.md`` and the plots. Resumes unit by unit; ``rank_check.workers``
processes share the units (:func:`_run_workers`, claims in ``rank_check/claims/``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig
from ._cell_calibration import standalone_steps
from ._context import Context, StageInputError, _write_json
from .rate import ratings_done
from .retrain import random_controls
from .search import found_architecture, search_done
from .teacher import build_teacher

__all__ = ["stage_rank_check"]

READS_DATA = False


def check_inputs(ctx: Context) -> None:
    _check_rank_check_plan(ctx)
    if "rate" not in ctx.stages and not ratings_done(ctx):
        raise StageInputError(f"stage rank_check needs {ctx.run_dir}/ratings/block{{0..{ctx.space.num_blocks - 1}}}"
                              ".parquet: run the pipeline up to --stages rate first")


def input_present(ctx: Context) -> bool:
    return ratings_done(ctx)


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

    from .. import models
    from .. import rank_check as rk
    from ..data import build_loader
    from ..rating import load_ratings
    from ..retrain import train_model

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
    block_steps = standalone_steps(ctx)
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

