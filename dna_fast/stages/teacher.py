"""The teacher stage: train the small teacher (``teacher.train``) or check and score the given one.

Reads: the data; the teacher's weights (``teacher.checkpoint``, ``teacher.pretrained``) unless it trains one.
Writes: ``checkpoints/teacher.pth`` (a trained teacher), ``teacher/metrics.json`` (its val top-1). Done when
``teacher/metrics.json`` exists. Later stages get the teacher through :func:`build_teacher`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._context import Context, StageInputError, _write_json

__all__ = ["stage_teacher", "build_teacher", "teacher_checkpoint", "check_teacher"]

READS_DATA = True


def teacher_checkpoint(ctx: Context) -> Path | None:
    """The teacher weights the run uses: the trained one in the run dir, or ``teacher.checkpoint``."""
    t = ctx.cfg.teacher
    if t.train:
        return ctx.path("checkpoints", "teacher.pth")
    if t.checkpoint:
        p = Path(t.checkpoint)
        return p if p.is_file() or not ctx.path(t.checkpoint).is_file() else ctx.path(t.checkpoint)
    return None


def check_teacher(ctx: Context) -> None:
    """The teacher weights exist: the given ones, or (``teacher.train``) the run dir's trained teacher, unless the
    teacher stage runs too. The input check of the teacher, distill and rate stages."""
    t, sel = ctx.cfg.teacher, set(ctx.stages)
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


def check_inputs(ctx: Context) -> None:
    check_teacher(ctx)


def input_present(ctx: Context) -> bool:
    return True


def build_teacher(ctx: Context) -> Any:
    """The ``Teacher`` of the run (weights from the run dir's trained teacher or the config)."""
    from ..teacher import Teacher, build_embedded_teacher

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
    from ..teacher import build_embedded_teacher, train_teacher

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
        from ..retrain import evaluate

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
