"""tools/cells_report.py: the pre-registered held-out tests read off a unit set's table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import cells_report as cr  # noqa: E402


def _unit_set(root: Path, selection: str) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for b in range(4):
        for j in range(16):
            v = float(rng.uniform(0.1, 0.3))
            rows.append({"block": b, "cell": j % 2, "candidate": f"c{j}", "seed": 100, "roles": "planned",
                         "val_loss": v, "loss": 2 * v + 0.01 * rng.standard_normal(),  # the rating ranks well
                         "macs": float(rng.uniform(1e5, 1e6))})  # MACs say nothing here
    d = root / "heldout"
    (d / "rank_check").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(d / "rank_check" / "units.csv", index=False)
    (d / "rank_check" / "plan.json").write_text(json.dumps({"seed": 100, "selection": selection}))
    return d


def test_heldout_tests_report_the_preregistered_statistics(tmp_path):
    d = _unit_set(tmp_path, "random")
    res = {"block_found_vs_random": {"cases": 12, "mean_gain": {"value": 0.05, "ci": [0.01, 0.09],
                                                                "found_better_in": 9}}}
    lines = cr.heldout_tests(d, res, n_boot=200)
    text = "\n".join(lines)
    assert "64 planned units at seed 100" in text
    primary = next(ln for ln in lines if ln.startswith("| primary"))
    assert primary.endswith("| yes |")  # a rating that ranks well beats MACs that do not
    assert next(ln for ln in lines if ln.startswith("| blocks 1 and 2")).endswith("| yes |")
    assert next(ln for ln in lines if "found vs random" in ln).endswith("| yes |")
    res["block_found_vs_random"]["mean_gain"]["found_better_in"] = 7  # fewer than 8 of 12: fails
    assert next(ln for ln in cr.heldout_tests(d, res, n_boot=200) if "found vs random" in ln).endswith("| no |")
    assert cr.heldout_tests(_unit_set(tmp_path / "dev", "spread"), res) == []  # development sets: not these tests
