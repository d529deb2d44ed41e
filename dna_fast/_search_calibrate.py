"""Per-block loss weights fitted to the accuracies of a few retrained architectures (DONNA-style, optional)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._search_types import Architecture


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
