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

``search_reference`` (plain enumeration) is the oracle the tests compare against.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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

COST_COLUMNS = ("macs", "params", "latency_ms")
_WIDTH_COLUMNS = ("in_width", "out_width")
_PAIR_CHUNK = 2_000_000  # (state, candidate) pairs formed at once in the DP
_REL_EPS = 1e-9  # slack of the pruning bounds (pruning less is always safe; the final check is exact)


@dataclass(frozen=True)
class Architecture:
    """One architecture: a candidate per block, its total (weighted) loss and its total costs.

    Attributes:
        choices: One index label per block (the rating tables' index values).
        loss: Sum over blocks of ``weight[i] * loss[i]``.
        costs: Total of every cost column shared by all tables, ``base_cost`` included.
        indices: Row positions of the choices in their tables.
    """

    choices: tuple[Hashable, ...]
    loss: float
    costs: dict[str, float] = field(default_factory=dict)
    indices: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"choices": [_jsonable(c) for c in self.choices], "loss": self.loss, "costs": dict(self.costs)}


# ---------------------------------------------------------------------------------------------------------------
# problem setup


@dataclass
class _Block:
    loss: np.ndarray  # (n,) weighted loss
    cost: np.ndarray  # (n, D) budgeted costs
    in_id: np.ndarray  # (n,) width-state id the candidate needs (0 = no constraint)
    out_id: np.ndarray  # (n,) width-state id it leaves
    index: np.ndarray  # (n,) row positions in the original table


def _cost_columns(tables: Sequence[Any]) -> list[str]:
    cols = [c for c in COST_COLUMNS if all(c in t.columns for t in tables)]
    return cols


def _prepare(tables, dims: Sequence[str], weights, base_cost) -> tuple[list[_Block], int, np.ndarray]:
    """Validates the tables and turns them into arrays. Returns (blocks, number of width states, base vector)."""
    if len(tables) == 0:
        raise ValueError("search needs at least one rating table")
    if weights is None:
        weights = [1.0] * len(tables)
    weights = [float(w) for w in weights]
    if len(weights) != len(tables):
        raise ValueError(f"weights has {len(weights)} entries but there are {len(tables)} tables")
    for i, t in enumerate(tables):
        if "loss" not in t.columns:
            raise ValueError(f"table {i} has no 'loss' column (columns: {list(t.columns)})")
        if len(t) == 0:
            raise ValueError(f"table {i} is empty")
        for d in dims:
            if d not in t.columns:
                raise ValueError(f"table {i} has no {d!r} column, needed by the budget (columns: {list(t.columns)})")
        for col in ("loss", *dims):
            bad = np.flatnonzero(~np.isfinite(t[col].to_numpy(dtype=np.float64)))
            if len(bad):
                raise ValueError(f"rating table of block {i}: {col} of candidate {t.index[bad[0]]!r} is "
                                 f"{t[col].iloc[bad[0]]} ({len(bad)} of {len(t)} rows not finite): rate the block "
                                 "again (a diverged supernet gives NaN; check its distillation losses)")
    has_in = ["in_width" in t.columns for t in tables]
    has_out = ["out_width" in t.columns for t in tables]
    chain = [has_out[i] and has_in[i + 1] for i in range(len(tables) - 1)]
    ids: dict[int, int] = {}

    def width_ids(values: np.ndarray) -> np.ndarray:
        out = np.empty(len(values), dtype=np.int64)
        for j, v in enumerate(values.tolist()):
            out[j] = ids.setdefault(int(v), len(ids) + 1)
        return out

    blocks = []
    for i, t in enumerate(tables):
        n = len(t)
        loss = t["loss"].to_numpy(dtype=np.float64) * weights[i]
        cost = np.stack([t[d].to_numpy(dtype=np.float64) for d in dims], axis=1) if dims else np.zeros((n, 0))
        in_id = width_ids(t["in_width"].to_numpy()) if i > 0 and chain[i - 1] else np.zeros(n, np.int64)
        out_id = width_ids(t["out_width"].to_numpy()) if i < len(tables) - 1 and chain[i] else np.zeros(n, np.int64)
        blocks.append(_Block(loss, cost, in_id, out_id, np.arange(n)))
    base = np.zeros(len(dims))
    if base_cost:
        base = np.array([float(base_cost.get(d, 0.0)) for d in dims])
    return blocks, len(ids) + 1, base


def _subset(b: _Block, keep: np.ndarray) -> _Block:
    return _Block(b.loss[keep], b.cost[keep], b.in_id[keep], b.out_id[keep], b.index[keep])


# ---------------------------------------------------------------------------------------------------------------
# dominance layers


def _layers_1d(cost: np.ndarray, loss: np.ndarray, k: int) -> np.ndarray:
    """Mask of the points in the first ``k`` non-dominated layers of (cost, loss), both minimized.

    Ties are broken by position so that equal points are ordered (the first one dominates the second). Every point
    outside the first k layers is dominated by at least k others (one in each earlier layer).
    """
    n = len(loss)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    order = np.lexsort((np.arange(n), loss, cost))
    rest = order
    for _ in range(k):
        if len(rest) == 0:
            break
        lo = loss[rest]
        prev_min = np.empty_like(lo)
        prev_min[0] = np.inf
        np.minimum.accumulate(lo[:-1], out=prev_min[1:])
        rec = lo < prev_min
        keep[rest[rec]] = True
        rest = rest[~rec]
    return keep


def _layers_nd(cost: np.ndarray, loss: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """Like :func:`_layers_1d` for several cost columns (blocked pairwise dominance checks)."""
    n = len(loss)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    cols = [np.arange(n)] + [cost[:, d] for d in range(cost.shape[1] - 1, -1, -1)] + [loss]
    rest = np.lexsort(cols)  # by loss, then costs, then position: dominators come first
    for _ in range(k):
        if len(rest) == 0:
            break
        front = np.zeros((0, cost.shape[1]))
        rec_mask = np.zeros(len(rest), dtype=bool)
        for s in range(0, len(rest), chunk):
            c = cost[rest[s : s + chunk]]
            dom = np.zeros(len(c), dtype=bool)
            if len(front):
                for f in range(0, len(front), 4096):
                    dom |= (front[None, f : f + 4096, :] <= c[:, None, :]).all(-1).any(1)
            # within the chunk: any earlier point with all costs <= dominates (transitivity makes it enough that it
            # is earlier, whether or not it is itself dominated)
            le = (c[None, :, :] <= c[:, None, :]).all(-1)  # le[j, p]: p's costs <= j's
            dom |= (le & np.tri(len(c), k=-1, dtype=bool)).any(1)
            rec_mask[s : s + chunk] = ~dom
            front = np.concatenate([front, c[~dom]])
        keep[rest[rec_mask]] = True
        rest = rest[~rec_mask]
    return keep


def _dominated_2d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For points given in the strict dominance order: is point j dominated by an earlier p (a_p <= a_j, b_p <= b_j)?

    Bottom-up divide and conquer over the order (each earlier/later pair meets at exactly one level, as left and
    right half of one segment); every level is one sort plus a segmented running minimum, all vectorized.
    """
    n = len(a)
    dom = np.zeros(n, dtype=bool)
    if n < 2:
        return dom
    ra = np.unique(a, return_inverse=True)[1].astype(np.int64)
    rb = np.unique(b, return_inverse=True)[1].astype(np.float64)
    m = int(ra.max()) + 1
    big = float(rb.max()) + 2.0
    pos = np.arange(n)
    o = pos
    s = 1
    while s < n:
        pair = pos // (2 * s)
        right = (pos // s) & 1
        key = (pair * m + ra) * 2 + right  # left points first on equal `a` (a_p <= a_j includes equality)
        o = o[np.argsort(key[o], kind="stable")]  # the previous order is nearly sorted: merges of runs
        ro = right[o] == 1
        # segmented running min of b over left points: offsets make every earlier segment's values larger
        vals = np.where(ro, np.inf, rb[o] - pair[o] * big)
        cm = np.minimum.accumulate(vals)
        j = o[ro]
        dom[j] |= cm[ro] + pair[j] * big <= rb[j]
        s *= 2
    return dom


def _layers_2d(cost: np.ndarray, loss: np.ndarray, k: int) -> np.ndarray:
    """Like :func:`_layers_1d` for two cost columns."""
    n = len(loss)
    keep = np.zeros(n, dtype=bool)
    rest = np.lexsort((np.arange(n), cost[:, 1], cost[:, 0], loss))
    for _ in range(k):
        if len(rest) == 0:
            break
        dom = _dominated_2d(cost[rest, 0], cost[rest, 1])
        keep[rest[~dom]] = True
        rest = rest[dom]
    return keep


def _few_dominators(cost: np.ndarray, loss: np.ndarray, k: int) -> np.ndarray:
    """Cheap exact pre-filter for several costs: False for points that have >= k dominators among a small set of
    strong points (the first k layers of each single cost against the loss). Such points can go: every point
    with >= k dominators has >= k dominators with fewer than k dominators of their own."""
    n = len(loss)
    strong = np.flatnonzero(np.any([_layers_1d(cost[:, d], loss, k) for d in range(cost.shape[1])], axis=0))
    count = np.zeros(n, dtype=np.int64)
    pos = np.arange(n)
    for s0 in range(0, len(strong), 64):
        sp = strong[s0 : s0 + 64]
        ls = loss[sp][:, None]
        le = ls <= loss[None]
        strict = (ls < loss[None]) | (sp[:, None] < pos[None])  # the strict order breaks exact ties by position
        for d in range(cost.shape[1]):  # per column: cheaper than reducing a trailing axis of length 2
            cs, cd = cost[sp, d][:, None], cost[None, :, d]
            le &= cs <= cd
            strict |= cs < cd
        count += (le & strict).sum(0)
    return count < k


def _layers_group(cost: np.ndarray, loss: np.ndarray, k: int) -> np.ndarray:
    if cost.shape[1] == 0:
        return _layers_1d(np.zeros(len(loss)), loss, k)
    if cost.shape[1] == 1:
        return _layers_1d(cost[:, 0], loss, k)
    keep = np.zeros(len(loss), dtype=bool)
    idx = np.flatnonzero(_few_dominators(cost, loss, k)) if len(loss) > 2048 else np.arange(len(loss))
    fn = _layers_2d if cost.shape[1] == 2 else _layers_nd
    keep[idx[fn(cost[idx], loss[idx], k)]] = True
    return keep


def _layers(cost: np.ndarray, loss: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """First ``k`` non-dominated layers inside each group (width state); for several costs and many points, of the
    points left by an exact pre-filter. Either way a superset of the points with fewer than ``k`` dominators,
    which is all that top-k needs."""
    uniq = np.unique(groups)
    if len(uniq) <= 1:
        return _layers_group(cost, loss, k)
    keep = np.zeros(len(loss), dtype=bool)
    for g in uniq:
        idx = np.flatnonzero(groups == g)
        keep[idx] = _layers_group(cost[idx], loss[idx], k)
    return keep


# ---------------------------------------------------------------------------------------------------------------
# chained minimum (backward DP over width states), used for bounds and heuristics


def _suffix_min(blocks: Sequence[_Block], values: Sequence[np.ndarray], n_ids: int) -> list[np.ndarray]:
    """G[i][w]: the smallest sum of ``values`` over blocks i.. given the incoming width state w (inf if none)."""
    out = [np.zeros(n_ids)]
    for b, v in zip(reversed(blocks), reversed(values)):
        tot = v + out[-1][b.out_id]
        if b.in_id.max(initial=0) == 0:  # unconstrained block: any incoming state works
            g = np.full(n_ids, tot.min(initial=np.inf))
        else:
            g = np.full(n_ids, np.inf)
            np.minimum.at(g, b.in_id, tot)
        out.append(g)
    return out[::-1]


def _chain_argmin(blocks: Sequence[_Block], values: Sequence[np.ndarray], n_ids: int) -> list[int] | None:
    """Positions (into each block) of a chain minimizing the sum of ``values``; None if no chain exists."""
    g = _suffix_min(blocks, values, n_ids)
    picks, state = [], 0
    for i, (b, v) in enumerate(zip(blocks, values)):
        tot = v + g[i + 1][b.out_id]
        ok = (b.in_id == state) | (i == 0) | (b.in_id == 0)
        if not ok.any():
            return None
        tot = np.where(ok, tot, np.inf)
        j = int(np.argmin(tot))
        if not np.isfinite(tot[j]):
            return None
        picks.append(j)
        state = int(b.out_id[j])
    return picks


# ---------------------------------------------------------------------------------------------------------------
# heuristic upper bound (Lagrangian + single-block swaps)


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


def _prefix_min(blocks: Sequence[_Block], values: Sequence[np.ndarray], n_ids: int) -> list[np.ndarray]:
    """P[i][w]: the smallest sum of ``values`` over blocks ..i-1 whose last out-state is w (mirror of _suffix_min)."""
    out = [np.zeros(n_ids)]
    for b, v in zip(blocks, values):
        tot = v + out[-1][b.in_id]
        if b.out_id.max(initial=0) == 0:
            p = np.full(n_ids, tot.min(initial=np.inf))
        else:
            p = np.full(n_ids, np.inf)
            np.minimum.at(p, b.out_id, tot)
        out.append(p)
    return out


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


def _min_costs(blocks, n_ids) -> np.ndarray:
    dims = blocks[0].cost.shape[1]
    return np.array([_suffix_min(blocks, [b.cost[:, d] for b in blocks], n_ids)[0][0] for d in range(dims)])


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


# ---------------------------------------------------------------------------------------------------------------
# plain references (the oracles of the tests)


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


# ---------------------------------------------------------------------------------------------------------------
# budgets and helpers

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_ALIASES = {"flops": "macs", "mac": "macs", "latency": "latency_ms", "param": "params"}


def parse_budget(s: str) -> dict[str, float]:
    """Parses ``"macs=400M,params=5e6"`` into ``{"macs": 4e8, "params": 5e6}``.

    Suffixes K, M, G, T (case-insensitive) multiply by 1e3, 1e6, 1e9, 1e12. ``flops`` is read as ``macs`` (the
    paper's "FLOPs" are multiply-adds) and ``latency`` as ``latency_ms``.
    """
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in s.split(","))):
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:<=|=|:)\s*([0-9.eE+-]+)\s*([kKmMgGtT]?)", part)
        if not m:
            raise ValueError(f"cannot parse budget {part!r}: expected NAME=VALUE[K|M|G], e.g. 'macs=400M,params=5e6'")
        name = _ALIASES.get(m.group(1).lower(), m.group(1).lower())
        try:
            value = float(m.group(2)) * _SUFFIX[m.group(3).lower()]
        except ValueError:
            raise ValueError(f"cannot parse the number in budget {part!r}") from None
        if name in out:
            raise ValueError(f"budget {name!r} given twice in {s!r}")
        out[name] = value
    if not out:
        raise ValueError(f"empty budget {s!r}: expected e.g. 'macs=400M'")
    return out


def format_cost(v: float) -> str:
    """400000000.0 -> '400M'; 4.2e6 -> '4.2M'; 3.5 -> '3.5'."""
    if not math.isfinite(v):
        return str(v)
    for suf, mul in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= mul:
            return f"{v / mul:.4g}{suf}"
    return f"{v:.4g}"


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    return x


def synthetic_tables(
    sizes: Sequence[int] | None = None,
    *,
    layers: Sequence[int] | None = None,
    n_ops: int = 6,
    seed: int = 0,
    noise: float = 0.02,
    widths: Sequence[Sequence[int]] | None = None,
):
    """Random rating tables shaped like real ones: integer MACs / params summed over layers, loss decreasing with
    cost plus noise. Either ``layers`` (layers per block; n_ops ** layers candidates) or ``sizes`` (candidates per
    block, random op codes). ``widths``: optional width options per block (a candidate for each width choice,
    with in_width equal to the previous block's width).
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    if layers is None:
        if sizes is None:
            raise ValueError("give sizes or layers")
        layers = [max(1, round(math.log(s, n_ops))) for s in sizes]
    tables = []
    for i, n_layers in enumerate(layers):
        op_macs = rng.integers(2_000_000, 12_000_000, size=(n_layers, n_ops))
        op_params = rng.integers(5_000, 60_000, size=(n_layers, n_ops)) * (i + 1)
        op_gain = rng.normal(0, noise, size=(n_layers, n_ops))
        codes = np.array(list(itertools.product(range(n_ops), repeat=n_layers)), dtype=np.int64)
        if sizes is not None and sizes[i] != len(codes):
            codes = codes[rng.choice(len(codes), size=min(sizes[i], len(codes)), replace=False)]
        lidx = np.arange(n_layers)
        macs = op_macs[lidx, codes].sum(1)
        params = op_params[lidx, codes].sum(1)
        scale = float(op_macs.mean() * n_layers)
        loss = 0.3 * np.exp(-macs / scale) + op_gain[lidx, codes].sum(1) + rng.normal(0, noise, len(codes))
        labels = ["-".join(map(str, c)) for c in codes]
        df = pd.DataFrame({"loss": loss, "macs": macs.astype(np.int64), "params": params.astype(np.int64)},
                          index=pd.Index(labels, name="candidate"))
        if widths is not None:
            rows = []
            prev = widths[i - 1] if i > 0 else [0]
            for wi in prev:
                for wo in widths[i]:
                    f = wo / max(widths[i])
                    d = pd.DataFrame({"loss": df["loss"].to_numpy() + 0.05 * (1 - f),
                                      "macs": (df["macs"].to_numpy() * f * (1 + wi / 1000)).astype(np.int64),
                                      "params": (df["params"].to_numpy() * f).astype(np.int64)},
                                     index=[f"{lab}@{wi}>{wo}" for lab in df.index])
                    d["in_width"], d["out_width"] = wi, wo
                    rows.append(d)
            df = pd.concat(rows)
        tables.append(df)
    return tables


# ---------------------------------------------------------------------------------------------------------------
# the authors' protocol on top of the tables: the summed metric, fixed blocks


SCORE_COLUMNS = ("loss", "rel_loss", "rel_l1")


def with_metric(tables: Sequence[Any], metric: str = "loss") -> list[Any]:
    """The tables with their ``loss`` column (what the search sums) replaced by the ``metric`` column.

    Every rating table carries ``loss`` (MSE), ``rel_loss`` (MSE / var(target)) and ``rel_l1`` (the authors' mean
    |s - t| / std(t)), so the summed score changes without re-rating. The original MSE stays as ``mse``.

    Raises:
        ValueError: an unknown metric, or a table without finite values in that column (rated before the column
            existed: rate again).
    """
    if metric not in SCORE_COLUMNS:
        raise ValueError(f"unknown metric {metric!r}: one of {', '.join(SCORE_COLUMNS)}")
    if metric == "loss":
        return list(tables)
    out = []
    for i, t in enumerate(tables):
        if metric not in t.columns or not np.isfinite(t[metric].to_numpy(dtype=np.float64)).all():
            raise ValueError(f"rating table {i} has no finite {metric!r} column (rated by an older version, or "
                             "rel_loss of a constant target): delete the run's ratings/ and run the rate stage again, "
                             "or search with metric 'loss'")
        t = t.copy()
        t["mse"] = t["loss"]
        t["loss"] = t[metric]
        out.append(t)
    return out


def fix_blocks(tables: Sequence[Any], fixed: Mapping[int, Hashable],
               base_cost: Mapping[str, float] | None = None) -> tuple[list[Any], dict[str, float]]:
    """Take blocks out of the search, as the authors fixed the last block (MB6 3x3).

    Block ``i`` of ``fixed`` keeps only the rows of its fixed candidate (its index label) with loss 0, so its score
    is not in the sum; with a single row its costs move into the base cost (the table's costs become 0), with
    several rows (one per input width) they stay in the table, where the width chain picks one. Either way every
    architecture's total cost is unchanged and its choices still name every block.

    Returns:
        (tables, base_cost) to pass to :func:`search` / :func:`pareto_front`.

    Raises:
        ValueError: a block index out of range or a label that is not a row of its table (naming a few valid ones).
    """
    tables = list(tables)
    base = {k: float(v) for k, v in (base_cost or {}).items()}
    for i, label in sorted(fixed.items()):
        i = int(i)
        if not 0 <= i < len(tables):
            raise ValueError(f"fixed block {i} is out of range: the tables cover blocks 0..{len(tables) - 1}")
        t = tables[i]
        rows = np.flatnonzero(t.index == label)
        if len(rows) == 0:
            some = ", ".join(map(str, list(dict.fromkeys(t.index))[:3]))
            raise ValueError(f"fixed block {i}: {label!r} is not a candidate of its rating table (e.g. {some})")
        t = t.iloc[rows].copy()
        t["loss"] = 0.0
        if len(t) == 1:
            for col in COST_COLUMNS:
                if col in t.columns:
                    base[col] = base.get(col, 0.0) + float(t[col].iloc[0])
                    t[col] = 0
        tables[i] = t
    return tables, base


def _block_losses(tables, arch) -> list[float]:
    """Per-block losses of an architecture (an ``Architecture`` or one label per block, chained by widths)."""
    if isinstance(arch, Architecture) and arch.indices:
        return [float(t["loss"].iloc[j]) for t, j in zip(tables, arch.indices)]
    choices = arch.choices if isinstance(arch, Architecture) else list(arch)
    if len(choices) != len(tables):
        raise ValueError(f"{len(choices)} choices for {len(tables)} blocks")
    out, prev = [], None
    for i, (t, c) in enumerate(zip(tables, choices)):
        pos = np.flatnonzero(np.asarray(t.index == c))
        if prev is not None and "in_width" in t.columns:
            pos = pos[t["in_width"].to_numpy()[pos] == prev]
        if len(pos) == 0:
            raise ValueError(f"block {i}: {c!r} is not in the table" + (" at that input width" if prev else ""))
        out.append(float(t["loss"].iloc[pos[0]]))
        prev = int(t["out_width"].iloc[pos[0]]) if "out_width" in t.columns else None
    return out


def calibrate_weights(tables: Sequence[Any], architectures: Sequence[Any], accuracies: Sequence[float], *,
                      nonnegative: bool = True) -> np.ndarray:
    """DONNA-style per-block loss weights fitted to the accuracies of a few retrained architectures.

    Fits ``accuracy ~ c - sum_i w_i * loss_i`` by least squares (with an intercept; ``w >= 0`` by default, so a
    lower block loss never predicts a lower accuracy) and returns ``w`` scaled to mean 1, ready for
    ``search(..., weights=w)``.

    Args:
        tables: the rating tables.
        architectures: ``Architecture`` objects or one candidate label per block, for each retrained network.
        accuracies: their measured accuracies (any scale; higher is better).
        nonnegative: constrain the weights to be >= 0 (non-negative least squares).

    Raises:
        ValueError: fewer than 2 architectures, mismatched lengths, or accuracies that do not depend on the losses
            (all fitted weights 0).
    """
    if len(architectures) != len(accuracies):
        raise ValueError(f"{len(architectures)} architectures but {len(accuracies)} accuracies")
    if len(architectures) < 2:
        raise ValueError("calibration needs at least 2 retrained architectures (better: more than the blocks)")
    x = np.array([_block_losses(tables, a) for a in architectures])
    y = np.asarray(accuracies, dtype=np.float64)
    a = -(x - x.mean(0))
    b = y - y.mean()
    if nonnegative:
        from scipy.optimize import nnls

        w = nnls(a, b)[0]
    else:
        w = np.linalg.lstsq(a, b, rcond=None)[0]
    if not np.any(w > 0) or w.mean() <= 0:
        raise ValueError("the accuracies do not decrease with any block's loss: no weights fit")
    return w / w.mean()
