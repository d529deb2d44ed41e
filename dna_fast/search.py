"""Exact constrained architecture search over per-block rating tables.

DNA (Li et al., CVPR 2020, arXiv:1911.13053) scores a network by the sum of its blocks' losses; its costs
(MACs, params, latency) are additive over blocks too. Picking one candidate per block under budgets is a
multiple-choice knapsack. This module solves it exactly:

* every table is first cut to the candidates that can matter (the first ``top_k`` non-dominated layers of
  (costs, loss) inside each width group),
* blocks are merged one by one, keeping for each width state the first ``top_k`` non-dominated layers of the
  partial sums (a partial sum dominated by ``top_k`` others can never reach the top-k),
* partial sums that cannot fit the budget (cost plus the cheapest completion) or cannot beat a known feasible
  answer (a Lagrangian lower bound, exact for any multiplier) are dropped before they are even formed,
* back-pointers give the choices.

The problem's arrays are built in ``_search_problem``, the dominance layers in ``_search_layers`` and the bounds
in ``_search_bounds``; this module holds the dynamic program and the two entry points. The plain references
(``search_reference``, ``pareto_front_reference``: enumeration, the oracles of the tests) are in
``_search_reference``, random tables in ``_search_synthetic``, the authors' metric and fixed blocks in
``_search_protocol``, fitted block weights in ``_search_calibrate``; all are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._search_bounds import _bound_cut, _heuristic, _upper_bound
from ._search_calibrate import calibrate_weights
from ._search_layers import _layers, _layers_1d
from ._search_problem import _REL_EPS, _chain_argmin, _min_costs, _prepare, _subset, _suffix_min
from ._search_protocol import SCORE_COLUMNS, fix_blocks, with_metric
from ._search_reference import pareto_front_reference, search_reference
from ._search_synthetic import synthetic_tables
from ._search_types import COST_COLUMNS, Architecture, _cost_columns, format_cost, parse_budget

__all__ = [
    "Architecture",
    "search",
    "pareto_front",
    "search_reference",
    "pareto_front_reference",
    "parse_budget",
    "format_cost",
    "synthetic_tables",
    "calibrate_weights",
    "COST_COLUMNS",
    "SCORE_COLUMNS",
    "with_metric",
    "fix_blocks",
]

_PAIR_CHUNK = 2_000_000  # (state, candidate) pairs formed at once in the DP


# ---------------------------------------------------------------------------------------------------------------
# the dynamic program


@dataclass
class _States:
    loss: np.ndarray
    cost: np.ndarray
    wid: np.ndarray
    parent: np.ndarray
    choice: np.ndarray


def _pairs(ks: np.ndarray, kc: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """All (state, candidate) index pairs with ks[s] + kc[c] <= limit, without forming the full product."""
    order = np.argsort(kc, kind="stable")
    counts = np.searchsorted(kc[order], limit - ks, side="right")
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    s = np.repeat(np.arange(len(ks)), counts)
    starts = np.cumsum(counts) - counts
    c = order[np.arange(total) - np.repeat(starts, counts)]
    return s, c


def _run_dp(blocks, n_ids, budget, base, k, ub, lams) -> tuple[_States, list] | None:
    """Forward DP over blocks; returns the final states and the back-pointers of every step (None: no state)."""
    dims = blocks[0].cost.shape[1]
    cap = budget - base  # budget left for the blocks
    slack_c = _REL_EPS * (np.abs(cap) + 1.0)
    slack_l = _REL_EPS * (abs(ub) + 1.0) if math.isfinite(ub) else math.inf
    # per-dim cheapest completion given the width state, and Lagrangian completions
    rem_cost = [_suffix_min(blocks, [b.cost[:, d] for b in blocks], n_ids) for d in range(dims)]
    if math.isfinite(ub):
        lams = [np.zeros(dims)] + list(lams)  # lambda = 0 is the plain loss bound
    else:
        lams = []
    rem_lag = [_suffix_min(blocks, [b.loss + b.cost @ lam for b in blocks], n_ids) for lam in lams]
    use_lag = len(lams) > 0

    states = _States(np.zeros(1), np.zeros((1, dims)), np.zeros(1, np.int64), np.zeros(1, np.int64),
                     np.zeros(1, np.int64))
    history = []
    for i, b in enumerate(blocks):
        parts = []
        n_parts = 0
        for w in np.unique(states.wid):
            sidx_w = np.flatnonzero(states.wid == w)
            cidx = np.flatnonzero((b.in_id == w) | (b.in_id == 0)) if i > 0 else np.arange(len(b.loss))
            if len(cidx) == 0 or len(sidx_w) == 0:
                continue
            step = max(1, _PAIR_CHUNK // len(cidx))  # bounded memory: states in chunks
            for s0 in range(0, len(sidx_w), step):
                sidx = sidx_w[s0 : s0 + step]
                # pair generation under the first bound (Lagrangian if known); without a bound, the full product
                if use_lag:
                    lam, g = lams[-1], rem_lag[-1][i + 1]  # the boundary multiplier prunes the most
                    ks = states.loss[sidx] + states.cost[sidx] @ lam
                    kc = b.loss[cidx] + b.cost[cidx] @ lam + g[b.out_id[cidx]]
                    s, c = _pairs(ks, kc, ub + slack_l + float(lam @ cap))
                else:
                    s = np.repeat(np.arange(len(sidx)), len(cidx))
                    c = np.tile(np.arange(len(cidx)), len(sidx))
                s, c = sidx[s], cidx[c]
                loss = states.loss[s] + b.loss[c]
                cost = states.cost[s] + b.cost[c]
                out = b.out_id[c]
                ok = np.ones(len(loss), dtype=bool)
                for d in range(dims):
                    ok &= cost[:, d] + rem_cost[d][i + 1][out] <= cap[d] + slack_c[d]
                if use_lag:
                    for lam, g in zip(lams[:-1], rem_lag[:-1]):
                        ok &= loss + cost @ lam + g[i + 1][out] <= ub + slack_l + float(lam @ cap)
                parts.append((loss[ok], cost[ok], out[ok], s[ok], c[ok]))
                n_parts += int(ok.sum())
                if n_parts > 2 * _PAIR_CHUNK and len(parts) > 1:
                    # compact: the first k layers of a subset contain every point of the first k layers of the
                    # whole set that lies in it (a subset's dominance chains are no longer), so this is exact
                    merged = [np.concatenate(x) for x in zip(*parts)]
                    keep = _layers(merged[1], merged[0], merged[2], k)
                    parts = [tuple(x[keep] for x in merged)]
                    n_parts = int(keep.sum())
        if not parts:
            return None
        loss, cost, wid, parent, choice = (np.concatenate(x) for x in zip(*parts))
        keep = _layers(cost, loss, wid, k)
        states = _States(loss[keep], cost[keep], wid[keep], parent[keep], choice[keep])
        history.append((states.parent, states.choice))
        if len(loss) == 0 or not keep.any():
            return None
    return states, history


def _backtrack_all(blocks, history, final_idx: np.ndarray) -> np.ndarray:
    """Row positions (n, blocks) of many final states at once."""
    out = np.empty((len(final_idx), len(blocks)), dtype=np.int64)
    j = np.asarray(final_idx, dtype=np.int64)
    for i in range(len(blocks) - 1, -1, -1):
        parent, choice = history[i]
        out[:, i] = blocks[i].index[choice[j]]
        j = parent[j]
    return out


def _architectures(tables, picks: np.ndarray, weights, base_cost, cost_cols) -> list[Architecture]:
    """Vectorized :func:`_architecture` (same sums in the same order, so the same floats)."""
    n = len(picks)
    loss = np.zeros(n)
    for i, t in enumerate(tables):
        w = 1.0 if weights is None else float(weights[i])
        loss = loss + t["loss"].to_numpy(dtype=np.float64)[picks[:, i]] * w
    costs = {}
    for col in cost_cols:
        tot = np.zeros(n)
        for i, t in enumerate(tables):
            tot = tot + t[col].to_numpy(dtype=np.float64)[picks[:, i]]
        costs[col] = float((base_cost or {}).get(col, 0.0)) + tot
    labels = [t.index[picks[:, i]] for i, t in enumerate(tables)]
    return [Architecture(tuple(lab[r] for lab in labels), float(loss[r]), {c: float(v[r]) for c, v in costs.items()},
                         tuple(int(x) for x in picks[r])) for r in range(n)]


def search(
    tables: Sequence[Any],
    budget: Mapping[str, float] | None = None,
    *,
    top_k: int = 1,
    weights: Sequence[float] | None = None,
    base_cost: Mapping[str, float] | None = None,
) -> list[Architecture]:
    """The ``top_k`` best architectures under ``budget``, exactly.

    Args:
        tables: One pandas DataFrame per block, in order, with a ``loss`` column and cost columns (``macs``,
            ``params``, optionally ``latency_ms``); the index holds candidate labels. With ``in_width`` /
            ``out_width`` columns, block i's out_width must equal block i+1's in_width.
        budget: Upper bounds per cost column, e.g. ``{"macs": 400e6, "params": 5e6}``. The total is
            ``base_cost + sum of the blocks' costs``. Empty or None: no constraint.
        top_k: How many architectures to return (fewer if fewer exist).
        weights: Optional per-block loss weights (total loss is ``sum(weights[i] * loss[i])``).
        base_cost: Fixed costs outside the blocks (stem, head), added to every architecture.

    Returns:
        Architectures sorted by loss ascending (ties by costs, then by choice positions).

    Raises:
        ValueError: if no architecture fits the budget (the message names the smallest achievable costs), or the
            tables are malformed.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    budget = dict(budget or {})
    dims = list(budget)
    cost_cols = _cost_columns(tables)
    for d in dims:
        if d not in cost_cols and all(d in t.columns for t in tables):
            cost_cols.append(d)
    blocks, n_ids, base = _prepare(tables, dims, weights, base_cost)
    bvec = np.array([float(budget[d]) for d in dims])
    # an architecture needs a chain of widths and must fit every budget
    if _chain_argmin(blocks, [b.loss for b in blocks], n_ids) is None:
        raise ValueError("no architecture exists: the tables' in_width/out_width columns never chain through all "
                         "blocks")
    if dims:
        mins = _min_costs(blocks, n_ids) + base
        bad = [d for d, m, bud in zip(dims, mins, bvec) if m > bud]
        if bad:
            raise ValueError(
                "budget is infeasible: "
                + "; ".join(f"{d} <= {format_cost(bvec[dims.index(d)])} but the smallest achievable {d} is "
                            f"{format_cost(mins[dims.index(d)])}" for d in bad)
            )
    cap = bvec - base
    groups = lambda b: b.in_id * (n_ids + 1) + b.out_id  # noqa: E731
    # 1. drop candidates that cannot fit next to the cheapest other blocks (widths ignored: a valid lower bound)
    if dims:
        mins = np.stack([b.cost.min(0) for b in blocks])
        slack = _REL_EPS * (np.abs(cap) + 1)
        cut = [_subset(b, (b.cost <= cap - (mins.sum(0) - mins[i]) + slack).all(1)) for i, b in enumerate(blocks)]
        if any(len(b.loss) == 0 for b in cut):
            raise ValueError("no architecture meets all budgets at once: " + _min_cost_message(dims, bvec, blocks,
                                                                                                 n_ids, base))
        blocks = cut
    # 2. dominated candidates go (per width group, keeping the first top_k layers)
    blocks = [_subset(b, _layers(b.cost, b.loss, groups(b), top_k)) for b in blocks]
    # 3. a good feasible answer (Lagrangian + swaps) bounds the loss: candidates whose best completion cannot beat
    #    the k-th known loss go, and the DP prunes partial sums with the same bounds
    res, used = None, blocks
    if dims:
        picks, lams = _heuristic(blocks, n_ids, bvec, base)
        ub = _upper_bound(blocks, picks, cap, top_k)
        if math.isfinite(ub):
            used = _bound_cut(blocks, n_ids, cap, ub, [np.zeros(len(dims))] + lams)
            res = _run_dp(used, n_ids, bvec, base, top_k, ub, lams)
            if res is not None and int(((res[0].cost <= cap).all(1) & (res[0].loss <= ub)).sum()) < top_k:
                res = None  # the bound was too tight (not expected): redo without it
    if res is None:
        used = blocks
        res = _run_dp(used, n_ids, bvec, base, top_k, math.inf, [])
    blocks = used
    if res is None:
        raise ValueError("no architecture meets all budgets at once: " + _min_cost_message(dims, bvec, blocks,
                                                                                             n_ids, base))
    states, history = res
    feas = np.flatnonzero((states.cost <= cap).all(1)) if dims else np.arange(len(states.loss))
    if len(feas) == 0:
        raise ValueError("no architecture meets all budgets at once: " + _min_cost_message(dims, bvec, blocks,
                                                                                             n_ids, base))
    keys = [states.cost[feas, d] for d in range(len(dims) - 1, -1, -1)]
    order = feas[np.lexsort(keys + [states.loss[feas]])] if keys else feas[np.argsort(states.loss[feas], kind="stable")]
    return _architectures(tables, _backtrack_all(blocks, history, order[:top_k]), weights, base_cost, cost_cols)


def _min_cost_message(dims, bvec, blocks, n_ids, base) -> str:
    mins = _min_costs(blocks, n_ids) + base
    return ", ".join(f"{d} <= {format_cost(b)} (smallest achievable alone: {format_cost(m)})"
                     for d, b, m in zip(dims, bvec, mins))


def pareto_front(
    tables: Sequence[Any],
    cost: str = "macs",
    *,
    weights: Sequence[float] | None = None,
    base_cost: Mapping[str, float] | None = None,
    budget: Mapping[str, float] | None = None,
) -> list[Architecture]:
    """Every non-dominated (``cost``, loss) architecture, sorted by cost ascending (so loss descending).

    Args:
        tables: As for :func:`search`.
        cost: The cost column the front is over.
        weights: Optional per-block loss weights.
        base_cost: Fixed costs outside the blocks.
        budget: Optional upper bounds; only architectures within them are considered.

    Returns:
        One architecture per distinct non-dominated (cost, loss) point.
    """
    budget = dict(budget or {})
    dims = [cost] + [d for d in budget if d != cost]
    bvec = np.array([float(budget.get(d, math.inf)) for d in dims])
    cost_cols = _cost_columns(tables)
    for d in dims:
        if d not in cost_cols:
            cost_cols.append(d)
    blocks, n_ids, base = _prepare(tables, dims, weights, base_cost)
    cap = bvec - base
    # for the front only `cost` counts as an objective; other budgets only filter. With other budgets present the
    # dominance must include them too (a cheaper-in-macs partial may be over the params budget).
    cut = []
    for b in blocks:
        ok = (b.cost <= cap + _REL_EPS * (np.abs(np.where(np.isfinite(cap), cap, 0)) + 1)).all(1)
        bb = _subset(b, ok)
        cut.append(_subset(bb, _layers(bb.cost, bb.loss, bb.in_id * (n_ids + 1) + bb.out_id, 1)))
    res = _run_dp(cut, n_ids, bvec, base, 1, math.inf, [])
    if res is None:
        return []
    states, history = res
    feas = np.flatnonzero((states.cost <= cap).all(1))
    c0 = states.cost[feas, 0]
    keep = feas[_layers_1d(c0, states.loss[feas], 1)]
    keep = keep[np.lexsort((states.loss[keep], states.cost[keep, 0]))]
    return _architectures(tables, _backtrack_all(cut, history, keep), weights, base_cost, cost_cols)
