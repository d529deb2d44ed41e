"""Random rating tables shaped like real ones, for tests, benchmarks and examples of the search."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np


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
