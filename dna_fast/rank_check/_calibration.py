"""Per-cell calibration of a rating onto the stand-alone loss scale: a least-squares line per (block, cell), fitted
on stand-alone units, and the rating tables mapped through it. NumPy only (the tables are pandas DataFrames).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def fit_cell_calibration(units: Any, metric: str = "loss", min_units: int = 2) -> dict[tuple[int, int], tuple]:
    """A per-cell affine map of a rating onto the stand-alone loss scale, fitted on stand-alone units.

    Ratings rank well within a cell but the cells of one block can sit on different scales (a depth-2 cell rated
    far above a depth-3 one whose stand-alone losses overlap). For each (block, cell) the least-squares line
    ``val_loss ~ a * rating + b`` over the units of that cell; ``a`` is kept positive (at least 1e-3 of the spread
    ratio) so the order within the cell never changes: only the cells move against each other.

    Args:
        units: a table with columns ``block``, ``cell``, ``val_loss`` and ``metric`` (``units.csv``), one row per
            unit; give only units the evaluation does not contain.
        metric: the rating column.
        min_units: cells with fewer units (or constant ratings) raise.

    Returns:
        ``{(block, cell): (a, b)}``.
    """
    out = {}
    for (b, c), g in units.groupby(["block", "cell"]):
        x, y = g[metric].to_numpy(float), g["val_loss"].to_numpy(float)
        if len(g) < min_units or np.ptp(x) == 0:
            raise ValueError(f"block {b} cell {c}: {len(g)} unit(s) with distinct {metric!r}; the per-cell "
                             f"calibration needs at least {min_units}")
        sx, sy = float(np.std(x)), float(np.std(y))
        a = float(np.cov(x, y, bias=True)[0, 1] / sx ** 2)
        a = max(a, 1e-3 * (sy / sx if sy > 0 else 1.0))
        out[(int(b), int(c))] = (a, float(y.mean() - a * x.mean()))
    return out


def calibrate_ratings(space: Any, tables: Sequence[Any], fit: dict[tuple[int, int], tuple], metric: str = "loss"
                      ) -> list[Any]:
    """Rating tables with ``metric`` mapped cell by cell by :func:`fit_cell_calibration`'s lines (the other columns
    as they were); a block whose cells were not all fitted raises."""
    out = []
    for i, t in enumerate(tables):
        t = t.copy()
        cells = np.array([space.parse(i, str(c)).cell for c in t.index])
        missing = sorted({int(c) for c in cells} - {c for (b, c) in fit if b == i})
        if missing:
            raise ValueError(f"block {i}: no calibration for cell(s) {missing}")
        a = np.array([fit[(i, int(c))][0] for c in cells])
        b = np.array([fit[(i, int(c))][1] for c in cells])
        t[metric] = a * t[metric].to_numpy(float) + b
        out.append(t)
    return out


def loo_calibrated(units: Any, metric: str = "loss", min_units: int = 2) -> np.ndarray:
    """Each unit's ``metric`` mapped by the per-cell lines of :func:`fit_cell_calibration` fitted on the units of the
    *other* candidates (every unit of its own candidate, all seeds, left out): what the calibration does to
    candidates it was not fitted on, estimated on one unit set (leave-one-candidate-out). Returns the calibrated
    values in the row order of ``units``."""
    out = np.empty(len(units))
    keys = list(zip(units["block"], units["candidate"]))
    for key in dict.fromkeys(keys):
        mine = np.array([k == key for k in keys])
        rest = units[~mine]
        fit = fit_cell_calibration(rest[(rest["block"] == key[0])], metric, min_units)
        for j in np.flatnonzero(mine):
            a, b = fit[(int(units["block"].iloc[j]), int(units["cell"].iloc[j]))]
            out[j] = a * float(units[metric].iloc[j]) + b
    return out


def calibration_candidates(space: Any, i: int, table: Any, k: int, metric: str = "loss") -> list[str]:
    """``k`` candidates of every cell of block ``i`` spread over the cell's ``metric`` range (the best, the worst and
    evenly between, by rank), for the per-cell calibration; a cell with fewer candidates gives all of them. A pure
    function of the table."""
    t = table[~table.index.duplicated()]
    by_cell: dict[int, list[str]] = {}
    for c in t.index:
        by_cell.setdefault(space.parse(i, str(c)).cell, []).append(str(c))
    out = []
    for cell in sorted(by_cell):
        names = sorted(by_cell[cell], key=lambda n: (float(t.at[n, metric]), n))
        pos = np.unique(np.round(np.linspace(0, len(names) - 1, min(k, len(names)))).astype(int))
        out += [names[p] for p in pos]
    return out
