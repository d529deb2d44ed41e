"""The per-cell calibration of the ratings (``rate.cell_calibration``, part of the rate stage).

The cells of one block (its depth / width options) can be rated on different scales: the ratings rank well within a
cell but not across (docs/ranking_study.md, the cells study). With ``rate.cell_calibration = K``, K candidates of
every cell, spread over the cell's ratings, are trained alone on the teacher's features exactly as the ranking check
trains them (``rank_check.block_steps`` / ``block_lr`` / ``block_batch_size`` / ``block_train_images`` /
``block_val_images``), and each cell's ratings are mapped onto the stand-alone loss scale by a least-squares line
(:func:`dna_fast.rank_check.fit_cell_calibration`; the slope stays positive, so the order within a cell never
changes). The search then sums calibrated scores.

Reads ``ratings/block{i}.parquet`` (the raw tables, kept in ``ratings/raw/``), the teacher and the data. Writes one
file per trained unit (``ratings/calibration/units/block{i}/*.json``: a rerun resumes unit by unit), the calibrated
tables in place of the raw ones, and ``ratings/calibration.json`` (the lines, the units) last: its presence means done.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from ._context import Context, _write_json

__all__ = ["calibration_done", "calibrate_cells", "standalone_steps"]


def calibration_done(ctx: Context) -> bool:
    return ctx.cfg.rate.cell_calibration == 0 or ctx.path("ratings", "calibration.json").is_file()


def standalone_steps(ctx: Context) -> int:
    """Adam steps of a stand-alone block: ``rank_check.block_steps``, or (0) as many as a supernet block got."""
    if ctx.cfg.rank_check.block_steps:
        return ctx.cfg.rank_check.block_steps
    per_epoch = len(ctx.loader("train"))
    return ctx.cfg.distill.epochs * min(per_epoch, ctx.cfg.distill.max_steps_per_epoch or per_epoch)


def _unit_path(ctx: Context, i: int, cand: str):
    from ..rank_check._units import _unit_name  # the ranking check's unit file name (candidate, seed)

    return ctx.path("ratings", "calibration", "units", f"block{i}", _unit_name(cand, ctx.cfg.seed))


def calibrate_cells(ctx: Context, build_teacher: Any) -> dict:
    """Train the missing calibration units, fit the lines, write the calibrated tables (see the module doc)."""
    import pandas as pd

    from .. import rank_check as rk
    from .._io import read_table
    from ..rating import _write_parquet_atomic

    space, k, rc = ctx.space, ctx.cfg.rate.cell_calibration, ctx.cfg.rank_check
    metric = ctx.cfg.rate.metric
    raw_dir = ctx.path("ratings", "raw")
    raw_dir.mkdir(parents=True, exist_ok=True)
    for i in range(space.num_blocks):  # the raw tables, once (calibrated ones are written only after this)
        dst = raw_dir / f"block{i}.parquet"
        if not dst.is_file():  # copied under a name of this process's own, then renamed: ranks may race here
            tmp = dst.with_name(f".{dst.name}.{os.getpid()}")
            shutil.copy2(ctx.path("ratings", f"block{i}.parquet"), tmp)
            os.replace(tmp, dst)
    raw = [read_table(raw_dir / f"block{i}.parquet", what="raw rating table",
                      fix="delete the run's ratings/ and run the rate stage again") for i in range(space.num_blocks)]
    chosen = {i: rk.calibration_candidates(space, i, raw[i], k, metric) for i in range(space.num_blocks)}
    todo = [(i, c) for i, cs in chosen.items() for c in cs if not _unit_path(ctx, i, c).is_file()]
    steps = standalone_steps(ctx)
    if todo:
        ctx.log(f"[rate] per-cell calibration: {len(todo)} of {sum(map(len, chosen.values()))} stand-alone units to "
                f"train ({k} per cell, {steps} steps each)")
        teacher = build_teacher(ctx).to(ctx.device).eval()
        blocks = sorted({i for i, _ in todo})
        bs = rc.block_batch_size
        tr = rk.block_features(teacher, ctx.loader("train", bs), blocks, rc.block_train_images, ctx.device)
        va = rk.block_features(teacher, ctx.loader("val", bs), blocks, rc.block_val_images, ctx.device)
        for n, (i, c) in enumerate(todo, 1):
            res = rk.train_block_candidate(space, i, c, tr[i], va[i], steps=steps, lr=rc.block_lr, batch_size=bs,
                                           seed=ctx.cfg.seed, device=ctx.device)
            if ctx.is_main:
                _write_json(res, _unit_path(ctx, i, c))
            ctx.log(f"[rate] calibration unit {n}/{len(todo)}: block {i} {c}: stand-alone loss {res['val_loss']:.4g} "
                    f"({res['seconds']:.0f} s)")
    rows = []
    for i, cs in chosen.items():
        for c in cs:
            u = json.loads(_unit_path(ctx, i, c).read_text())
            rows.append({"block": i, "cell": space.parse(i, c).cell, "candidate": c, "val_loss": u["val_loss"],
                         metric: float(raw[i][~raw[i].index.duplicated()].at[c, metric])})
    units = pd.DataFrame(rows)
    fit = rk.fit_cell_calibration(units, metric)
    tables = rk.calibrate_ratings(space, raw, fit, metric)
    if ctx.is_main:
        for i, t in enumerate(tables):
            _write_parquet_atomic(t, ctx.path("ratings", f"block{i}.parquet"))
        _write_json({"units_per_cell": k, "metric": metric, "steps": steps, "seed": ctx.cfg.seed,
                     "lines": {f"{b}.{c}": list(ab) for (b, c), ab in sorted(fit.items())}, "units": rows},
                    ctx.path("ratings", "calibration.json"))
    ctx.log(f"[rate] per-cell calibration: {len(fit)} cell lines from {len(rows)} stand-alone units -> "
            f"{ctx.run_dir}/ratings/ (raw tables in ratings/raw/)")
    return {"cells": len(fit), "units": len(rows)}
