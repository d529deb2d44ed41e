"""Non-dominated layers of (costs, loss): what the exact search keeps of every table and of every partial sum.

A point outside the first ``k`` non-dominated layers has ``k`` dominators that can replace it, so it can never be
in the top-k. One cost: a prefix minimum; two costs: a vectorized divide and conquer; more: blocked pairwise
checks, behind an exact pre-filter for many points.
"""

from __future__ import annotations

import numpy as np


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
