"""The authors' protocol on top of the rating tables: the summed metric, fixed blocks.

DNA (Li et al., CVPR 2020) sums the mean |s - t| / std(t) of each block and fixes the last block; both are table
transforms applied before :func:`dna_fast.search.search`, so the search itself stays one algorithm.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from ._search_types import COST_COLUMNS

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
