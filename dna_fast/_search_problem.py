"""The search problem as arrays: one ``_Block`` per rating table, width states, the cheapest chains.

:func:`_prepare` validates the rating tables and turns each into arrays (weighted loss, budgeted costs, the width
state a candidate needs and the one it leaves). The chained minima (a DP over width states, backward or forward)
give the cheapest completion of a partial architecture: the exact search's bounds and its heuristic use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_REL_EPS = 1e-9  # slack of the pruning bounds (pruning less is always safe; the final check is exact)


@dataclass
class _Block:
    loss: np.ndarray  # (n,) weighted loss
    cost: np.ndarray  # (n, D) budgeted costs
    in_id: np.ndarray  # (n,) width-state id the candidate needs (0 = no constraint)
    out_id: np.ndarray  # (n,) width-state id it leaves
    index: np.ndarray  # (n,) row positions in the original table


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
# chained minimum (a DP over width states), used for bounds and heuristics


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


def _min_costs(blocks, n_ids) -> np.ndarray:
    dims = blocks[0].cost.shape[1]
    return np.array([_suffix_min(blocks, [b.cost[:, d] for b in blocks], n_ids)[0][0] for d in range(dims)])
