"""The retrain stage: the found architecture and the random controls of equal MACs, or a named ``model``, trained
from scratch with the ``retrain`` recipe (:func:`dna_fast.retrain.train_model`).

Reads: the data, ``search/results.json`` (:func:`.search.found_architecture`), with ``retrain.inherit`` the
distilled supernet. Writes: ``retrain/plan.json`` (what is retrained: kept so a resume retrains the same),
``retrain/<name>/`` (``last.pth``, ``metrics.json``). A run is done when its ``metrics.json`` exists; an unfinished
one resumes from ``last.pth``.
"""

from __future__ import annotations

import json
from typing import Any

from ..config import ConfigError
from ._context import Context, StageInputError, _register_models, _write_json, stage_status
from .distill import supernet_done
from .search import found_architecture, search_done

__all__ = ["stage_retrain", "retrain_plan", "retrain_entries", "random_controls", "check_model"]

READS_DATA = True


def retrain_entries(ctx: Context) -> list[str]:
    """Names of the retrain runs of this config: ``found`` and ``random_1..n``, or the ``model`` name."""
    if ctx.cfg.model:
        return [ctx.cfg.model]
    return ["found"] + [f"random_{k + 1}" for k in range(ctx.cfg.control.num_random)]


def _retrain_done(ctx: Context, name: str) -> bool:
    return ctx.path("retrain", name, "metrics.json").is_file()


def check_model(ctx: Context) -> None:
    """``model=NAME`` names a timm model (the input check of retrain and evaluate)."""
    cfg = ctx.cfg
    if cfg.model:
        import timm

        _register_models()
        if not timm.is_model(cfg.model):
            raise ConfigError(f"config key 'model': {cfg.model!r} is not a timm model (e.g. dna_a, dna_b, dna_c, "
                              "dna_d, efficientnet_b0); leave it empty to use the search result")


def check_inputs(ctx: Context) -> None:
    cfg, sel = ctx.cfg, set(ctx.stages)
    if not cfg.model and "search" not in sel and not search_done(ctx):
        raise StageInputError(f"stage retrain needs {ctx.run_dir}/search/results.json: run --stages search first, "
                              "or retrain a named model with model=dna_a")
    if cfg.retrain.inherit and not cfg.model and "distill" not in sel \
            and stage_status("distill") is None and not supernet_done(ctx):
        raise StageInputError("retrain.inherit=true needs the distilled supernet: run --stages distill first")
    check_model(ctx)


def input_present(ctx: Context) -> bool:
    return bool(ctx.cfg.model) or search_done(ctx)


def random_controls(ctx: Context, found: dict, n: int, tolerance: float, max_tries: int = 200_000) -> list[dict]:
    """``n`` distinct random architectures of the space (not the found one) with MACs within ``tolerance``."""
    import random

    from .. import cost, models

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

    from .. import models

    r = ctx.cfg.retrain
    kw = dict(drop_rate=r.dropout, drop_path_rate=r.drop_path)
    if "choices" in entry:
        return models.build(ctx.space, entry["choices"], num_classes=ctx.num_classes, **kw)
    _register_models()
    return timm.create_model(entry["model"], num_classes=ctx.num_classes, **kw)


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
    from ..retrain import train_model

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
            from ..distill import load_supernet
            from ..models import inherit_weights

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
