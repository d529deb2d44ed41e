"""The rate stage: every candidate of every block rated on held-out batches (:func:`dna_fast.rating.rate`).

Reads: the distilled supernet (``checkpoints/supernet_last.pt``), the teacher, the val split (and, with
``rate.calib_source=train``, the first augmented training batches). Writes: ``ratings/block{i}.parquet``. Done when
every block has its table (:func:`ratings_done`) and, with ``rate.cell_calibration``, the tables are calibrated
(:mod:`._cell_calibration`: stand-alone units per cell, ``ratings/raw/`` keeps the raw tables).
"""

from __future__ import annotations

import sys
from typing import Any

from ._cell_calibration import calibrate_cells, calibration_done
from ._context import Context, StageInputError, stage_status
from .distill import distill_augment, supernet_done, supernet_epochs
from .teacher import build_teacher, check_teacher

__all__ = ["stage_rate", "ratings_done"]

READS_DATA = True


def _tables_done(ctx: Context) -> bool:
    return all(ctx.path("ratings", f"block{i}.parquet").is_file() for i in range(ctx.space.num_blocks))


def ratings_done(ctx: Context) -> bool:
    return _tables_done(ctx) and calibration_done(ctx)


def check_inputs(ctx: Context) -> None:
    check_teacher(ctx)
    if "distill" not in ctx.stages and stage_status("distill") is None and not supernet_done(ctx):
        done = supernet_epochs(ctx)
        have = "no supernet" if done is None else f"a supernet distilled for {done} of {ctx.cfg.distill.epochs} epochs"
        raise StageInputError(f"stage rate needs the distilled supernet; {ctx.run_dir}/checkpoints holds {have}: "
                              "run --stages distill first")


def input_present(ctx: Context) -> bool:
    return supernet_done(ctx) if stage_status("distill") is None else False


def _augmented(loader: Any, augment: Any) -> Any:
    """``loader``'s batches with ``augment`` applied (step = batch position), for the train calibration batch."""
    for step, batch in enumerate(loader):
        yield (augment(batch[0], step), *batch[1:]) if augment is not None else batch


def stage_rate(ctx: Context) -> dict:
    from ..distill import load_supernet
    from ..rating import rate

    r = ctx.cfg.rate
    if ratings_done(ctx):
        ctx.log(f"[rate] done before: {ctx.run_dir}/ratings/ has all {ctx.space.num_blocks} tables")
        return {"tables": ctx.space.num_blocks}
    if _tables_done(ctx):  # rated before; the per-cell calibration is what is left
        return {"tables": ctx.space.num_blocks, **calibrate_cells(ctx, build_teacher)}
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
    if r.cell_calibration:
        return {"tables": len(res), **calibrate_cells(ctx, build_teacher)}
    return {"tables": len(res)}
