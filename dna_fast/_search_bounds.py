"""The bounds that let the exact search prune: a good feasible answer (an upper bound on the k-th loss) and a
Lagrangian lower bound on every architecture through a candidate (valid for any multiplier).

:func:`_heuristic` finds a feasible answer by bisection on a Lagrange multiplier, polished by single-block swaps;
:func:`_upper_bound` takes the k-th loss among it and its feasible neighbours; :func:`_bound_cut` drops the
candidates that cannot beat it. Pruning less is always safe: the search's final check is exact.
"""

from __future__ import annotations

import math

import numpy as np

from ._search_problem import _REL_EPS, _Block, _chain_argmin, _prefix_min, _subset, _suffix_min


def _totals(blocks, picks) -> tuple[float, np.ndarray]:
    loss = 0.0
    cost = np.zeros(blocks[0].cost.shape[1])
    for b, j in zip(blocks, picks):
        loss = loss + b.loss[j]
        cost = cost + b.cost[j]
    return float(loss), cost


def _swap_ok(blocks, picks, i) -> np.ndarray:
    """Candidates of block i that chain with the current neighbors."""
    b = blocks[i]
    ok = np.ones(len(b.loss), dtype=bool)
    if i > 0 and b.in_id.max(initial=0) > 0:
        ok &= b.in_id == blocks[i - 1].out_id[picks[i - 1]]
    if i < len(blocks) - 1 and blocks[i + 1].in_id.max(initial=0) > 0:
        ok &= b.out_id == blocks[i + 1].in_id[picks[i + 1]]
    return ok


def _local_search(blocks, picks, budget, max_rounds=200) -> list[int]:
    """Best-improvement single-block swaps that keep the budget and the width chain."""
    picks = list(picks)
    for _ in range(max_rounds):
        loss, cost = _totals(blocks, picks)
        best = (0.0, -1, -1)
        for i, b in enumerate(blocks):
            new_cost = cost - b.cost[picks[i]] + b.cost
            gain = b.loss[picks[i]] - b.loss
            ok = _swap_ok(blocks, picks, i) & (new_cost <= budget).all(1) & (gain > 0)
            if ok.any():
                j = int(np.argmax(np.where(ok, gain, -np.inf)))
                if gain[j] > best[0]:
                    best = (float(gain[j]), i, j)
        if best[1] < 0:
            break
        picks[best[1]] = best[2]
    return picks


def _heuristic(blocks, n_ids, budget, base) -> tuple[list[int] | None, list[np.ndarray]]:
    """A good feasible solution (or None) and Lagrange multipliers found around the budget boundary.

    Bisection on the multiplier of a scalarized cost (all budgets, relative to their size); with several budgets
    and no success, each budget's direction alone is tried too. The answer is polished by single-block swaps.
    """
    dims = len(budget)
    cap = budget - base
    scale = np.where(cap > 0, 1.0 / np.maximum(np.abs(cap), 1e-300), 1.0)
    loss_scale = max(sum(float(np.ptp(b.loss)) for b in blocks), 1e-12)

    def solve(lam):
        picks = _chain_argmin(blocks, [b.loss + b.cost @ lam for b in blocks], n_ids)
        if picks is None:
            return None, False
        return picks, bool((_totals(blocks, picks)[1] <= cap).all())

    picks, ok = solve(np.zeros(dims))
    if picks is None:
        return None, []
    if ok or dims == 0:
        return picks, []
    directions = [np.ones(dims)] + ([np.eye(dims)[d] for d in range(dims)] if dims > 1 else [])
    found, lams = [], []
    for u in directions:
        unit = loss_scale * scale * u
        lo, hi, best = 0.0, 1.0, None
        for _ in range(60):
            p, ok = solve(hi * unit)
            if ok:
                best = p
                break
            lo, hi = hi, hi * 4
        if best is None:
            continue
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            p, ok = solve(mid * unit)
            if ok:
                hi, best = mid, p
            else:
                lo = mid
            if hi - lo <= 1e-4 * hi:  # the multiplier only needs to be close: the bounds are valid for any
                break
        lams += [lo * unit, hi * unit]
        best = _local_search(blocks, best, cap)
        found.append((_totals(blocks, best)[0], best))
        if len(found) == 1 and u is directions[0]:
            break  # the joint direction worked: good enough
    if not found:
        return None, []
    return min(found, key=lambda f: f[0])[1], lams


def _upper_bound(blocks, picks, budget, k) -> float:
    """k-th smallest loss among the heuristic solution and its feasible single-block neighbors (inf if < k)."""
    if picks is None:
        return math.inf
    loss, cost = _totals(blocks, picks)
    found = [loss]
    for i, b in enumerate(blocks):
        if len(found) >= 4 * k + 64:
            break
        new_cost = cost - b.cost[picks[i]] + b.cost
        ok = _swap_ok(blocks, picks, i) & (new_cost <= budget).all(1)
        ok[picks[i]] = False
        found.extend((loss - b.loss[picks[i]] + b.loss[ok]).tolist())
    if len(found) < k:
        return math.inf
    return float(np.partition(np.asarray(found), k - 1)[k - 1])


def _bound_cut(blocks, n_ids, cap, ub, lams) -> list[_Block]:
    """Keeps the candidates x whose Lagrangian lower bound on any architecture through x is <= ub."""
    slack = _REL_EPS * (abs(ub) + 1.0)
    keep = [np.ones(len(b.loss), dtype=bool) for b in blocks]
    for lam in lams:
        vals = [b.loss + b.cost @ lam for b in blocks]
        pre, suf = _prefix_min(blocks, vals, n_ids), _suffix_min(blocks, vals, n_ids)
        for i, b in enumerate(blocks):
            keep[i] &= vals[i] + pre[i][b.in_id] + suf[i + 1][b.out_id] - float(lam @ cap) <= ub + slack
    return [_subset(b, k) for b, k in zip(blocks, keep)]
