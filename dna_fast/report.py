"""The search stage's outputs: ``search/results.json``, ``search/pareto.png`` and the search section of report.md.

``run_search_stage`` reads ``run_dir/ratings/block{i}.parquet`` (index: canonical candidate strings; columns
``loss``, ``rel_loss``, ``params``, ``macs``, optionally ``latency_ms``, ``in_width``, ``out_width``), runs the
exact search (:func:`dna_fast.search.search`) for every budget asked, computes the whole loss-vs-cost Pareto
front, places the published DNA-a..d on it when they belong to the space, and writes the three files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write, atomic_write_json, atomic_write_text
from .search import Architecture, fix_blocks, format_cost, pareto_front, parse_budget, search, with_metric

__all__ = ["run_search_stage", "load_tables", "write_search_section", "plot_pareto", "reference_points"]


def load_tables(run_dir: str | os.PathLike) -> list[Any]:
    """The rating tables ``ratings/block0.parquet``, ``block1.parquet``, ... of a run, in block order."""
    from ._io import read_table

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
    from .space import SearchSpace

    if space is None:
        space = cfg.get("space")
        if space is None:
            return None
    return space if isinstance(space, SearchSpace) else SearchSpace.load(space)


def _default_base_cost(space, tables, image_size, num_classes) -> tuple[dict[str, float], list[Any]]:
    """Costs outside the blocks; with a last block of several widths its head cost goes into the last table."""
    from .cost import base_cost

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


def reference_points(space, tables, weights=None, base_cost=None) -> dict[str, Architecture]:
    """DNA-a..d as points of this run's tables (only those whose every block is a candidate of the space)."""
    from .models import DNA_ARCH_DEFS, dna_choices

    out = {}
    for name in DNA_ARCH_DEFS:
        try:
            choices = [str(c) for c in dna_choices(name, space)]
        except ValueError:
            continue  # not in this space
        rows, prev_w = [], None
        for t, c in zip(tables, choices):
            pos = np.flatnonzero(t.index == c)
            if "in_width" in t.columns and prev_w is not None:
                pos = pos[t["in_width"].to_numpy()[pos] == prev_w]
            if len(pos) == 0:
                break
            rows.append(int(pos[0]))
            prev_w = int(t["out_width"].iloc[pos[0]]) if "out_width" in t.columns else None
        if len(rows) != len(tables):
            continue
        loss, costs = 0.0, {}
        for i, (t, j) in enumerate(zip(tables, rows)):
            loss = loss + float(t["loss"].iloc[j]) * (1.0 if weights is None else float(weights[i]))
        for col in ("macs", "params", "latency_ms"):
            if all(col in t.columns for t in tables):
                costs[col] = float((base_cost or {}).get(col, 0.0)) + sum(float(t[col].iloc[j])
                                                                          for t, j in zip(tables, rows))
        out[name] = Architecture(tuple(choices), float(loss), costs, tuple(rows))
    return out


def plot_pareto(path: str | os.PathLike, front: Sequence[Architecture], cost: str,
                chosen: Mapping[str, Sequence[Architecture]] | None = None,
                references: Mapping[str, Architecture] | None = None, sample: tuple | None = None) -> None:
    """Loss vs ``cost`` plot: the exact front as a staircase, chosen architectures and DNA-a..d marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    scale, unit = (1e6, "M") if max((a.costs[cost] for a in front), default=0) >= 1e6 else (1.0, "")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if sample is not None and len(sample[0]):
        ax.scatter(np.asarray(sample[0]) / scale, sample[1], s=3, c="0.8", label="random architectures")
    if front:
        ax.step([a.costs[cost] / scale for a in front], [a.loss for a in front], where="post", c="C0", lw=1.2,
                label=f"exact Pareto front ({len(front)})")
    for n, (label, archs) in enumerate((chosen or {}).items()):
        xs = [a.costs[cost] / scale for a in archs]
        ys = [a.loss for a in archs]
        ax.scatter(xs, ys, marker="*", s=[120] + [40] * (len(xs) - 1), c=f"C{(n + 1) % 10}", zorder=3,
                   label=f"top-{len(archs)} @ {label}")
    for name, a in (references or {}).items():
        ax.scatter([a.costs[cost] / scale], [a.loss], marker="^", s=50, c="k", zorder=4)
        ax.annotate(f"DNA-{name.split('_')[-1]}", (a.costs[cost] / scale, a.loss),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"{cost} ({unit})" if unit else cost)
    ax.set_ylabel("sum of block losses")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def _fmt_costs(costs: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {format_cost(v)}" for k, v in costs.items())


def write_search_section(results: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Markdown of the search results (``results`` as in results.json); written to ``path`` and returned."""
    lines = ["## Search", ""]
    lines.append(f"Exact constrained search over {len(results['num_candidates'])} blocks "
                 f"({' x '.join(map(str, results['num_candidates']))} candidates); loss = sum of block losses"
                 + (" (weighted)" if results.get("weights") else "") + ".")
    if results.get("base_cost"):
        lines.append(f"Costs include the fixed stem/head costs ({_fmt_costs(results['base_cost'])}).")
    lines.append("")
    for entry in results["budgets"]:
        lines.append(f"### Budget {_fmt_costs(entry['budget'])}")
        lines.append("")
        cols = list(entry["results"][0]["costs"]) if entry["results"] else []
        lines.append("| rank | loss | " + " | ".join(cols) + " | choices |")
        lines.append("|---:|---:|" + "---:|" * len(cols) + "---|")
        for r in entry["results"]:
            lines.append(f"| {r['rank']} | {r['loss']:.6g} | " + " | ".join(format_cost(r["costs"][c]) for c in cols)
                         + " | " + "<br>".join(f"`{c}`" for c in r["choices"]) + " |")
        lines.append("")
    refs = results.get("references") or {}
    if refs:
        lines.append("Published DNA models on this run's tables:")
        lines.append("")
        lines.append("| model | loss | " + " | ".join(next(iter(refs.values()))["costs"]) + " |")
        lines.append("|---|---:|" + "---:|" * len(next(iter(refs.values()))["costs"]))
        for name, r in refs.items():
            lines.append(f"| {name} | {r['loss']:.6g} | " + " | ".join(format_cost(v) for v in r["costs"].values())
                         + " |")
        lines.append("")
    pf = results.get("pareto") or {}
    if pf:
        lines.append(f"Pareto front over {pf['cost']}: {len(pf['points'])} architectures "
                     f"(computed in {pf['seconds']:.3g} s).")
        lines.append("")
    lines.append("![loss vs cost](search/pareto.png)")
    lines.append("")
    text = "\n".join(lines)
    atomic_write_text(path, text)
    return text


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
        from ._latency import LatencyTable, add_latency

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
        from .models import arch_def

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
