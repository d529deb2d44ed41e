"""The search results as a report: the Pareto plot, the search section of report.md, DNA-a..d on the tables.

The search stage (:func:`dna_fast.stages.search.run_search_stage`) calls these to write ``search/pareto.png`` and
``search/report.md`` beside ``search/results.json``; :func:`reference_points` places the published DNA-a..d on a
run's rating tables when they belong to its space.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._io import atomic_write, atomic_write_text
from .search import Architecture, format_cost

__all__ = ["write_search_section", "plot_pareto", "reference_points"]


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
