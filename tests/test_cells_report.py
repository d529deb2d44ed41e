"""tools/cells_report.py: the pre-registered held-out tests read off a unit set's table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

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


def _losses(root: Path, name: str, seed: int, losses: dict) -> Path:
    d = root / name
    (d / "rank_check").mkdir(parents=True)
    rows = [{"block": b, "cell": 0, "candidate": f"c{j}", "seed": seed, "roles": "planned", "val_loss": v}
            for b, vs in losses.items() for j, v in enumerate(vs)]
    pd.DataFrame(rows).to_csv(d / "rank_check" / "units.csv", index=False)
    (d / "rank_check" / "plan.json").write_text(json.dumps({"seed": seed}))
    return d


def test_seed_rule_compares_fewer_steps_with_the_seed_noise_ceiling(tmp_path):
    """The convergence rule of 2026-12-03 21:07 UTC, on losses whose taus are known."""
    truth = np.linspace(0.1, 0.3, 8)
    swapped = truth.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # one discordant pair of 28: tau (27 - 1) / 28
    reversed_ = truth[::-1].copy()
    long = _losses(tmp_path, "long", 0, {0: truth, 1: truth})
    other = _losses(tmp_path, "other", 1, {0: swapped, 1: truth})  # seeds disagree on one pair in block 0
    short = _losses(tmp_path, "short", 0, {0: truth, 1: reversed_})  # block 1: fewer steps reverse the order
    r = cr.seed_rule(short, long, other, n_boot=100)
    assert r["per_block"]["0"]["seeds_tau"] == r["per_block"]["0"]["steps_tau"] == pytest.approx(26 / 28)
    assert r["per_block"]["0"]["passes"]
    assert r["per_block"]["1"]["seeds_tau"] == 1.0 and r["per_block"]["1"]["steps_tau"] == -1.0
    assert not r["per_block"]["1"]["passes"] and not r["passes"]
    assert cr.seed_rule(short, long, tmp_path / "missing") is None  # not run yet: no verdict


def test_seed_mean_rows_score_ratings_against_the_mean_of_two_seeds(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for b in range(2):
        for j in range(8):
            v = 0.1 + 0.02 * j
            rows.append({"block": b, "cell": j % 2, "candidate": f"c{j}", "seed": 0, "roles": "planned",
                         "val_loss": v, "macs": float(rng.uniform(1e5, 1e6)), "v:loss": v})  # a perfect rating
    long, other = tmp_path / "long", tmp_path / "other"
    for d, seed in ((long, 0), (other, 1)):
        (d / "rank_check").mkdir(parents=True)
        t = pd.DataFrame(rows).assign(seed=seed)
        if seed == 1:  # the other seed reverses block 1, ten times as large: the mean is reversed there
            t.loc[t["block"] == 1, "val_loss"] = 10 * t.loc[t["block"] == 1, "val_loss"].to_numpy()[::-1]
        t.to_csv(d / "rank_check" / "units.csv", index=False)
        (d / "rank_check" / "plan.json").write_text(json.dumps({"seed": seed}))
    lines = cr.seed_mean_rows(long, other, n_boot=100)
    assert lines[0].startswith("## long + other: the mean of two seeds") and "(16 candidates)" in lines[0]
    v = next(ln for ln in lines if ln.startswith("| v:loss |"))
    assert "| macs |" in "\n".join(lines)
    assert any("per-cell calibrated" in ln for ln in lines)
    # block 0 ranked perfectly (+1), block 1 exactly backwards (-1), as many pairs each: pooled tau 0
    assert float(v.split("|")[3].split()[0]) == 0.0
    assert cr.seed_mean_rows(long, tmp_path / "missing") == []


def test_save_drops_a_blind_marker_the_study_root_no_longer_has(tmp_path):
    root = tmp_path / "root"
    d = _unit_set(root, "random")
    plan = d / "rank_check" / "plan.json"
    plan.write_text(json.dumps({**json.loads(plan.read_text()), "blocks": {"0": [{"candidate": "c0"}]}}))
    (d / "BLIND").write_text("until the recipe is settled\n")
    out = tmp_path / "record"
    cr.save(root, out)
    assert (out / "units" / "heldout" / "BLIND").is_file()  # blinded: the record keeps it blinded
    (d / "BLIND").unlink()  # unblinded in the study root
    cr.save(root, out)
    assert not (out / "units" / "heldout" / "BLIND").exists()
    assert "blinded" not in (out / "summary.md").read_text()
