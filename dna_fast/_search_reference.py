"""Plain references of the exact search: enumerate every combination (tiny tables only).

:func:`search_reference` and :func:`pareto_front_reference` have the contracts of :func:`dna_fast.search.search`
and :func:`dna_fast.search.pareto_front`; they are the oracles of ``tests/test_search.py``. Keep them simple and
obviously right.
"""

from __future__ import annotations

import itertools
import math

from ._search_types import Architecture, _cost_columns


def _architecture(tables, picks, weights, base_cost, cost_cols) -> Architecture:
    loss = 0.0
    for i, (t, j) in enumerate(zip(tables, picks)):
        loss = loss + float(t["loss"].iloc[j]) * (1.0 if weights is None else float(weights[i]))
    costs = {}
    for col in cost_cols:
        v = float((base_cost or {}).get(col, 0.0))
        tot = 0.0
        for t, j in zip(tables, picks):
            tot = tot + float(t[col].iloc[j])
        costs[col] = v + tot
    return Architecture(tuple(t.index[j] for t, j in zip(tables, picks)), float(loss), costs, tuple(picks))


def _chains(tables, combo) -> bool:
    for i in range(len(tables) - 1):
        a, b = tables[i], tables[i + 1]
        if "out_width" in a.columns and "in_width" in b.columns:
            if a["out_width"].iloc[combo[i]] != b["in_width"].iloc[combo[i + 1]]:
                return False
    return True


def _enumerate(tables, budget, weights, base_cost):
    budget = dict(budget or {})
    cost_cols = _cost_columns(tables)
    for d in budget:
        if d not in cost_cols:
            cost_cols.append(d)
    out = []
    for combo in itertools.product(*(range(len(t)) for t in tables)):
        if not _chains(tables, combo):
            continue
        arch = _architecture(tables, list(combo), weights, base_cost, cost_cols)
        # feasibility exactly as search defines it: the blocks' sum within budget - base
        ok = True
        for d, bud in budget.items():
            tot = 0.0
            for t, j in zip(tables, combo):
                tot = tot + float(t[d].iloc[j])
            ok &= tot <= float(bud) - float((base_cost or {}).get(d, 0.0))
        if ok:
            out.append(arch)
    return out


def search_reference(tables, budget=None, *, top_k=1, weights=None, base_cost=None) -> list[Architecture]:
    """Plain enumeration of every combination (tiny tables only); same contract as :func:`search`."""
    archs = _enumerate(tables, budget, weights, base_cost)
    if not archs:
        raise ValueError("no architecture fits the budget")
    archs.sort(key=lambda a: a.loss)
    return archs[:top_k]


def pareto_front_reference(tables, cost="macs", *, weights=None, base_cost=None, budget=None) -> list[tuple]:
    """(cost, loss) points of the front by enumeration (tiny tables only), sorted by cost."""
    pts = sorted({(a.costs[cost], a.loss) for a in _enumerate(tables, budget, weights, base_cost)})
    front, best = [], math.inf
    for c, lo in pts:
        if lo < best:
            front.append((c, lo))
            best = lo
    return front
