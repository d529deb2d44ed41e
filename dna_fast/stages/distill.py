"""The distill stage: block-wise distillation of the supernet (:func:`dna_fast.distill.distill`).

Reads: the data, the teacher (:func:`.teacher.build_teacher`). Writes: ``checkpoints/supernet_last.pt`` (resumed
from), ``distill/log.csv``, ``distill/cell_steps.json``. Done when the checkpoint has all ``distill.epochs`` epochs
(:func:`supernet_done`).
"""

from __future__ import annotations

import sys
from typing import Any

from .._io import load_checkpoint
from ._context import Context
from .teacher import build_teacher, check_teacher, teacher_checkpoint

__all__ = ["stage_distill", "supernet_epochs", "supernet_done", "distill_augment"]

READS_DATA = True


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


def check_inputs(ctx: Context) -> None:
    check_teacher(ctx)


def input_present(ctx: Context) -> bool:
    return not ctx.cfg.teacher.train or teacher_checkpoint(ctx).is_file()


def distill_augment(ctx: Context) -> Any:
    """The distillation's batch augmentation (``distill.color_jitter`` / ``distill.random_erasing``), None if off."""
    from ..distill import BatchAugment

    d = ctx.cfg.distill
    aug = BatchAugment(d.color_jitter, d.random_erasing, seed=ctx.cfg.seed)
    return aug if aug.active else None


def stage_distill(ctx: Context) -> dict:
    """Distills the supernet into ``checkpoints/supernet_last.pt`` (resumes from it; done when all epochs are)."""
    from ..distill import distill
    from ..supernet import Supernet

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
