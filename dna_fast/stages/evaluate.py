"""The evaluate stage: top-1 / top-5 of the raw and EMA weights of every retrained model, or of ``model`` with
``checkpoint`` (:func:`dna_fast.retrain.evaluate`).

Reads: the val split, ``retrain/<name>/last.pth`` (or ``checkpoint``). Writes: ``retrain/<name>/eval.json``, or
``evaluate/<model>.json``. Cheap, so it always runs again; the runner then writes ``summary.json`` and
``report.md`` (:mod:`dna_fast.summary`).
"""

from __future__ import annotations

from pathlib import Path

from .._io import load_checkpoint
from ._context import Context, StageInputError, _register_models, _write_json
from .retrain import _build_child, _fmt, check_model, retrain_entries, retrain_plan

__all__ = ["stage_evaluate"]

READS_DATA = True


def check_inputs(ctx: Context) -> None:
    cfg = ctx.cfg
    check_model(ctx)
    if "retrain" not in ctx.stages:
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


def input_present(ctx: Context) -> bool:
    return all(ctx.path("retrain", n, "last.pth").is_file() for n in retrain_entries(ctx)) or bool(ctx.cfg.checkpoint)


def stage_evaluate(ctx: Context) -> dict:
    """Top-1 / top-5 of the raw and EMA weights of every retrained model (or of ``model`` + ``checkpoint``)."""
    import timm

    from ..retrain import evaluate, load_weights

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
