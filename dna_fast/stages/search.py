"""The search stage: rating tables in, ``search/results.json``, ``search/pareto.png`` and ``search/report.md`` out.

``run_search_stage`` reads ``run_dir/ratings/block{i}.parquet`` (index: canonical candidate strings; columns
``loss``, ``rel_loss``, ``params``, ``macs``, optionally ``latency_ms``, ``in_width``, ``out_width``), runs the
exact search (:func:`dna_fast.search.search`) for every budget asked, computes the whole loss-vs-cost Pareto
front, places the published DNA-a..d on it when they belong to the space, and writes the three files (the plot and
the markdown through :mod:`dna_fast.report`).

As a pipeline stage (:func:`stage_search`): reads ``ratings/block{i}.parquet``, writes ``search/``; done when
``search/results.json`` holds the same budget, top-k, metric and fixed blocks. Later stages read its best
architecture through :func:`found_architecture`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_json
from ..config import ConfigError
from ..report import _fmt_costs, plot_pareto, reference_points, write_search_section
from ..search import Architecture, fix_blocks, pareto_front, parse_budget, search, with_metric
from ._context import Context, StageInputError
from .rate import ratings_done

__all__ = ["run_search_stage", "load_tables", "stage_search", "search_done", "found_architecture"]

READS_DATA = False


def load_tables(run_dir: str | os.PathLike) -> list[Any]:
    """The rating tables ``ratings/block0.parquet``, ``block1.parquet``, ... of a run, in block order."""
    from .._io import read_table

    rdir = Path(run_dir) / "ratings"
    paths = []
    while (rdir / f"block{len(paths)}.parquet").exists():
        paths.append(rdir / f"block{len(paths)}.parquet")
    if not paths:
        raise FileNotFoundError(f"no rating tables in {rdir} (expected block0.parquet, ...): run the 'rate' stage "
                                "first")
    return [read_table(p, what="rating table", fix="delete it and run the rate stage again") for p in paths]


def _run_config(run_dir: Path) -> dict[str, Any]:
    cfg = run_dir / "config.yaml"
    if not cfg.exists():
        return {}
    import yaml

    with open(cfg) as f:
        d = yaml.safe_load(f)
    return d if isinstance(d, dict) else {}


def _load_space(space: Any, cfg: Mapping[str, Any]):
    from ..space import SearchSpace

    if space is None:
        space = cfg.get("space")
        if space is None:
            return None
    return space if isinstance(space, SearchSpace) else SearchSpace.load(space)


def _default_base_cost(space, tables, image_size, num_classes) -> tuple[dict[str, float], list[Any]]:
    """Costs outside the blocks; with a last block of several widths its head cost goes into the last table."""
    from ..cost import base_cost

    last = space.blocks[-1]
    if len(last.widths) == 1:
        return {k: float(v) for k, v in base_cost(space, image_size, num_classes).items()}, tables
    t = tables[-1].copy()
    width = t["out_width"].to_numpy() if "out_width" in t.columns else None
    if width is None:
        raise ValueError("the last block has cells of several widths but its table has no out_width column")
    for w in np.unique(width):
        c = base_cost(space, image_size, num_classes, last_width=int(w))
        for k in ("params", "macs"):
            t.loc[width == w, k] = t.loc[width == w, k] + c[k]
    return {}, tables[:-1] + [t]


def _random_sample(tables, weights, base_cost, cost, n=2000, seed=0):
    if any("in_width" in t.columns or "out_width" in t.columns for t in tables):
        return None
    rng = np.random.default_rng(seed)
    loss = np.zeros(n)
    c = np.full(n, float((base_cost or {}).get(cost, 0.0)))
    for i, t in enumerate(tables):
        j = rng.integers(0, len(t), n)
        loss += t["loss"].to_numpy()[j] * (1.0 if weights is None else weights[i])
        c += t[cost].to_numpy(dtype=float)[j]
    return c, loss


def run_search_stage(
    run_dir: str | os.PathLike,
    budgets: Sequence[Mapping[str, float] | str],
    *,
    top_k: int = 5,
    space: Any = None,
    weights: Sequence[float] | None = None,
    base_cost: Mapping[str, float] | None = None,
    latency: Any = None,
    image_size: Any = None,
    num_classes: int | None = None,
    pareto_cost: str | None = None,
    metric: str = "loss",
    fixed_blocks: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Search stage: exact top-k per budget, the Pareto front, and the files under ``run_dir/search/``.

    Args:
        run_dir: the run directory (reads ``ratings/``, writes ``search/``).
        budgets: one or more budgets, each a mapping (``{"macs": 4e8}``) or a string (``"macs=400M,params=5e6"``).
        top_k: architectures per budget.
        space: the search space (object, name or YAML path); default: ``space`` of ``run_dir/config.yaml``.
            Without a space the results carry no arch_def and no DNA-a..d points.
        weights: per-block loss weights.
        base_cost: fixed costs outside the blocks; default (with a space): stem + head + classifier from
            :func:`dna_fast.cost.base_cost` at ``image_size`` / ``num_classes``.
        latency: a :class:`dna_fast._latency.LatencyTable` (or its JSON path) adding a ``latency_ms`` column to
            tables that lack one.
        image_size: image side for the base cost (default: ``data.image_size`` of the run's config, else the
            space's); it must be the size the rating tables' costs were computed at.
        num_classes: classifier outputs for the base cost (default: the run config's ``num_classes``, else 1000).
        pareto_cost: cost of the front and the plot (default: the first budget's first cost, else ``macs``).
        metric: the rating column summed: ``loss`` (MSE), ``rel_loss`` or ``rel_l1`` (the authors'); recorded in
            ``results.json`` (:func:`dna_fast.search.with_metric`).
        fixed_blocks: block index -> candidate string taken out of the search, its cost counted in the base cost
            (:func:`dna_fast.search.fix_blocks`; the authors fixed the last block); recorded in ``results.json``.

    Returns:
        The content of ``search/results.json``.

    Raises:
        ValueError: a budget nothing fits (naming the smallest achievable cost); FileNotFoundError: no ratings.
    """
    import time

    run_dir = Path(run_dir)
    tables = load_tables(run_dir)
    budgets = [parse_budget(b) if isinstance(b, str) else {k: float(v) for k, v in b.items()} for b in budgets]
    if not budgets:
        raise ValueError("run_search_stage needs at least one budget, e.g. 'macs=400M'")
    cfg = _run_config(run_dir)
    space = _load_space(space, cfg)
    if image_size is None:
        image_size = (cfg.get("data") or {}).get("image_size")
    if num_classes is None:
        num_classes = cfg.get("num_classes") or 1000
    if space is not None and space.num_blocks != len(tables):
        raise ValueError(f"{len(tables)} rating tables in {run_dir / 'ratings'} but space {space.name} has "
                         f"{space.num_blocks} blocks")
    if latency is not None:
        from .._latency import LatencyTable, add_latency

        lat = latency if isinstance(latency, LatencyTable) else LatencyTable.load(latency)
        if space is None:
            raise ValueError("a latency table needs the search space")
        tables = add_latency(tables, lat, space)
    if base_cost is None and space is not None:
        base_cost, tables = _default_base_cost(space, tables, image_size, num_classes)
    base_cost = dict(base_cost or {})
    tables = with_metric(tables, metric)
    fixed = {}
    for i, c in (fixed_blocks or {}).items():
        fixed[int(i)] = space.format(int(i), space.parse(int(i), c)) if space is not None else c
    if fixed:
        tables, base_cost = fix_blocks(tables, fixed, base_cost)
    arch_def = None
    if space is not None:
        from ..models import arch_def

    def arch_json(a: Architecture, rank: int) -> dict[str, Any]:
        d = {"rank": rank, **a.to_dict()}
        if arch_def is not None:
            d["arch_def"] = arch_def(space, [space.parse(i, c) for i, c in enumerate(a.choices)])
        return d

    out: dict[str, Any] = {
        "space": getattr(space, "name", None),
        "num_candidates": [len(t) for t in tables],
        "top_k": top_k,
        "metric": metric,
        "fixed_blocks": {str(i): c for i, c in sorted(fixed.items())},
        "weights": list(weights) if weights is not None else None,
        "base_cost": base_cost,
        "budgets": [],
    }
    chosen = {}
    for b in budgets:
        t0 = time.perf_counter()
        archs = search(tables, b, top_k=top_k, weights=weights, base_cost=base_cost)
        dt = time.perf_counter() - t0
        out["budgets"].append({"budget": b, "seconds": dt, "results": [arch_json(a, r + 1) for r, a in
                                                                       enumerate(archs)]})
        chosen[_fmt_costs(b)] = archs
    cost = pareto_cost or next(iter(budgets[0]), "macs")
    t0 = time.perf_counter()
    front = pareto_front(tables, cost, weights=weights, base_cost=base_cost)
    out["pareto"] = {"cost": cost, "seconds": time.perf_counter() - t0,
                     "points": [{"loss": a.loss, **a.costs, "choices": [str(c) for c in a.choices]} for a in front]}
    refs = reference_points(space, tables, weights, base_cost) if space is not None else {}
    out["references"] = {k: a.to_dict() for k, a in refs.items()}
    sdir = run_dir / "search"
    sdir.mkdir(parents=True, exist_ok=True)
    plot_pareto(sdir / "pareto.png", front, cost, chosen, refs, _random_sample(tables, weights, base_cost, cost))
    atomic_write_json(sdir / "results.json", out, indent=1, default=_json_default)
    write_search_section(out, sdir / "report.md")
    return out


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


# ---------------------------------------------------------------------------------------------- the pipeline stage
def search_done(ctx: Context) -> bool:
    return ctx.path("search", "results.json").is_file()


def check_inputs(ctx: Context) -> None:
    if "rate" not in ctx.stages and not ratings_done(ctx):
        raise StageInputError(f"stage search needs {ctx.run_dir}/ratings/block{{0..{ctx.space.num_blocks - 1}}}"
                              ".parquet: run --stages rate first")


def input_present(ctx: Context) -> bool:
    return ratings_done(ctx)


def stage_search(ctx: Context) -> dict:
    """Exact search under ``search.budget`` (skipped when ``search/results.json`` has the same budget and top-k).

    A new result whose best architecture differs from the one already retrained moves ``retrain/`` aside to
    ``retrain.stale-<time>`` (kept, not deleted), so retraining never resumes another architecture's checkpoint.
    """
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
    from .. import cost, models

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
