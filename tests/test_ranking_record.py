"""The committed ranking studies recompute from their per-unit tables: every pooled tau in a unit set's
results.json (docs/ranking_study/cells/units/*/) equals the tau computed here from its units.csv alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dna_fast import rank_check as rk

RECORD = Path(__file__).resolve().parents[1] / "docs" / "ranking_study" / "cells" / "units"
UNIT_SETS = sorted(p for p in RECORD.glob("*") if (p / "units.csv").is_file() and (p / "results.json").is_file())


def test_the_record_is_there():
    assert UNIT_SETS, f"no unit set with units.csv and results.json under {RECORD}"


def _planned(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    return table[table["roles"].fillna("").str.contains("planned") & (table["seed"] == seed)]


@pytest.mark.parametrize("unit_set", UNIT_SETS, ids=[p.name for p in UNIT_SETS])
def test_pooled_taus_recompute_from_the_unit_table(unit_set):
    res = json.loads((unit_set / "results.json").read_text())
    plan = json.loads((unit_set / "plan.json").read_text())
    table = _planned(pd.read_csv(unit_set / "units.csv"), plan["seed"])
    pooled = res["block_level"].get("pooled") or {}
    if len(table) < 3 or table.groupby("block").size().max() < 2:  # a set just begun: no pair within a block yet
        assert all(v.get("tau") is None for v in pooled.values())
        return
    truth = -table["val_loss"].to_numpy(float)
    checked = 0
    for m, s in pooled.items():
        if m not in table.columns or s.get("tau") is None:
            continue
        x = table[m].to_numpy(float)
        pred = x if m.split(":")[-1] in ("macs", "params") else -x
        assert rk.stratified_tau(pred, truth, table["block"]) == pytest.approx(s["tau"], abs=1e-6), m
        eq = (res["block_level"].get("pooled_equal_macs") or {}).get(m)
        if eq and eq.get("tau") is not None:
            tol = res["block_level"]["pooled_equal_macs"]["tolerance"]
            near = rk.stratified_tau(pred, truth, table["block"], near=table["macs"], tol=tol)
            assert near == pytest.approx(eq["tau"], abs=1e-6), m
        checked += 1
    assert checked >= 3  # at least the rating, MACs and params
    assert np.isfinite(truth).all() and (table["steps"] == res["block_steps"]).all()
