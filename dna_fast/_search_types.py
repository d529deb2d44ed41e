"""The search's vocabulary: an ``Architecture`` (its result), the cost columns, budget strings.

Shared by the exact search (:mod:`dna_fast.search`) and its plain references, below both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

COST_COLUMNS = ("macs", "params", "latency_ms")


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


def _cost_columns(tables: Sequence[Any]) -> list[str]:
    cols = [c for c in COST_COLUMNS if all(c in t.columns for t in tables)]
    return cols


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    return x


# ---------------------------------------------------------------------------------------------------------------
# budgets


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
