"""Exact search against plain enumeration on many small random instances."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pandas as pd
import pytest

from dna_fast.search import (
    Architecture,
    format_cost,
    pareto_front,
    pareto_front_reference,
    parse_budget,
    search,
    search_reference,
    synthetic_tables,
)

search_mod = importlib.import_module("dna_fast.search")  # the module (dna_fast.search is also the function)


def _random_tables(rng, n_blocks, *, ties=False, widths=False, latency=False):
    tables = []
    for i in range(n_blocks):
        n = int(rng.integers(1, 7))
        hi = 4 if ties else 100
        cols = {
            "loss": rng.integers(0, hi, n) / 8.0 if ties else rng.random(n),
            "macs": rng.integers(0, hi, n),
            "params": rng.integers(0, hi, n),
        }
        if latency:
            cols["latency_ms"] = rng.integers(0, hi, n) / 4.0
        df = pd.DataFrame(cols, index=[f"b{i}c{j}" for j in range(n)])
        if widths:
            df["in_width"] = rng.integers(0, 2, n) * 8
            df["out_width"] = rng.integers(0, 2, n) * 8
        tables.append(df)
    return tables


def _budget(rng, tables, dims, ties):
    out = {}
    for d in dims:
        lo = sum(int(t[d].min()) for t in tables)
        hi = sum(int(t[d].max()) for t in tables)
        # mostly in the upper half (several budgets at once are rarely all feasible otherwise), sometimes anywhere
        out[d] = float(rng.integers(lo - 2, hi + 2) if rng.random() < 0.3 else rng.integers((lo + hi) // 2, hi + 2))
    return out


def _check_same(tables, budget, k, weights=None, base_cost=None):
    try:
        ref = search_reference(tables, budget, top_k=k, weights=weights, base_cost=base_cost)
    except ValueError:
        with pytest.raises(ValueError, match="smallest achievable|never chain|at once"):
            search(tables, budget, top_k=k, weights=weights, base_cost=base_cost)
        return False
    got = search(tables, budget, top_k=k, weights=weights, base_cost=base_cost)
    assert [a.loss for a in got] == [a.loss for a in ref]  # exact: both sum in block order
    assert len({a.choices for a in got}) == len(got)
    for a in got:
        assert isinstance(a, Architecture)
        pos = [t.index.get_loc(c) for t, c in zip(tables, a.choices)]
        assert list(a.indices) == pos
        w = weights or [1.0] * len(tables)
        assert a.loss == pytest.approx(sum(wi * t["loss"].iloc[j] for wi, t, j in zip(w, tables, pos)))
        for d, b in budget.items():
            assert a.costs[d] <= b + 1e-9
        for i in range(len(tables) - 1):
            if "out_width" in tables[i].columns:
                assert tables[i]["out_width"].iloc[pos[i]] == tables[i + 1]["in_width"].iloc[pos[i + 1]]
    return True


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("widths", [False, True])
@pytest.mark.parametrize("n_dims", [0, 1, 2, 3])
def test_search_matches_brute_force(ties, widths, n_dims):
    rng = np.random.default_rng(1000 * ties + 100 * widths + n_dims)
    dims = ["macs", "params", "latency_ms"][:n_dims]
    feasible = 0
    for trial in range(40):
        tables = _random_tables(rng, int(rng.integers(1, 5)), ties=ties, widths=widths, latency=n_dims == 3)
        budget = _budget(rng, tables, dims, ties)
        k = int(rng.integers(1, 6))
        weights = rng.random(len(tables)).round(3).tolist() if trial % 4 == 0 else None
        base = {"macs": 3, "params": 1} if trial % 5 == 0 else None
        feasible += _check_same(tables, budget, k, weights, base)
    assert feasible >= 8  # the instances are not all infeasible


def test_search_without_heuristic_bound(monkeypatch):
    """A bound that is too tight must be detected and the search redone without it."""
    monkeypatch.setattr(search_mod, "_upper_bound", lambda *a, **k: -1e9)
    rng = np.random.default_rng(7)
    for _ in range(30):
        tables = _random_tables(rng, 3, ties=True, widths=bool(rng.integers(2)))
        _check_same(tables, _budget(rng, tables, ["macs", "params"], True), int(rng.integers(1, 4)))


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(3)
    for trial in range(60):
        tables = _random_tables(rng, int(rng.integers(1, 5)), ties=trial % 2 == 0, widths=trial % 3 == 0)
        budget = _budget(rng, tables, ["params"], False) if trial % 4 == 0 else None
        base = {"macs": 5} if trial % 5 == 0 else None
        ref = pareto_front_reference(tables, "macs", base_cost=base, budget=budget)
        got = pareto_front(tables, "macs", base_cost=base, budget=budget)
        assert [(a.costs["macs"], a.loss) for a in got] == ref


def test_top_k_larger_than_count_and_ties():
    t = pd.DataFrame({"loss": [1.0, 1.0, 1.0], "macs": [1, 1, 1], "params": [0, 0, 0]}, index=list("abc"))
    got = search([t, t], {"macs": 2}, top_k=20)
    assert len(got) == 9 and {a.choices for a in got} == {(x, y) for x in "abc" for y in "abc"}


def test_infeasible_budget_names_smallest_cost():
    tables = synthetic_tables(layers=[1, 2], seed=0)
    smallest = sum(int(t["macs"].min()) for t in tables)
    with pytest.raises(ValueError, match=f"smallest achievable macs is {format_cost(smallest)}"):
        search(tables, {"macs": smallest - 1})
    assert search(tables, {"macs": smallest})[0].costs["macs"] == smallest
    with pytest.raises(ValueError, match="smallest achievable macs is"):
        search(tables, {"macs": smallest + 10}, base_cost={"macs": 11})


def test_unchainable_widths_raise():
    a = pd.DataFrame({"loss": [0.1], "macs": [1], "params": [1], "in_width": [3], "out_width": [8]})
    b = pd.DataFrame({"loss": [0.1], "macs": [1], "params": [1], "in_width": [16], "out_width": [8]})
    with pytest.raises(ValueError, match="never chain"):
        search([a, b], {"macs": 10})


def test_bad_tables_raise():
    t = pd.DataFrame({"loss": [0.1], "macs": [1]})
    with pytest.raises(ValueError, match="'params'"):
        search([t], {"params": 1})
    with pytest.raises(ValueError, match="weights"):
        search([t], {"macs": 1}, weights=[1, 2])
    with pytest.raises(ValueError, match="top_k"):
        search([t], {"macs": 1}, top_k=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("col", ["loss", "macs"])
def test_non_finite_table_is_refused_naming_block_and_candidate(bad, col):
    rng = np.random.default_rng(0)
    tables = _random_tables(rng, 3)
    tables[1] = pd.DataFrame({"loss": [0.5, 0.25, 0.125], "macs": [1.0, 2.0, 3.0], "params": [1, 1, 1]},
                             index=["ir_k3_e3", "ir_k5_e6", "ir_k7_e6"])
    tables[1].loc["ir_k5_e6", col] = bad
    with pytest.raises(ValueError, match=rf"block 1: {col} of candidate 'ir_k5_e6' is {bad}"):
        search(tables, {"macs": 1e9})
    with pytest.raises(ValueError, match="block 1"):
        pareto_front(tables, "macs")
    tables[1].loc["ir_k5_e6", col] = 0.5  # the same tables once finite: searched
    assert search(tables, {"macs": 1e9})[0].loss == pytest.approx(search_reference(tables, {"macs": 1e9})[0].loss)


def test_medium_instance_against_brute_force():
    """Realistic shapes (many equal integer costs) on 3 blocks of 36 candidates (46656 combinations)."""
    tables = synthetic_tables(layers=[2, 2, 2], seed=5, noise=0.05)
    macs = sum(t["macs"].median() for t in tables)
    ref = _vectorized_reference(tables, {"macs": macs, "params": sum(t["params"].median() for t in tables)}, 10)
    got = search(tables, {"macs": macs, "params": sum(t["params"].median() for t in tables)}, top_k=10)
    np.testing.assert_array_equal([a.loss for a in got], ref)


def _vectorized_reference(tables, budget, k, weights=None):
    """All combinations through broadcasting (summing in block order, as the search does)."""
    loss = np.zeros(1)
    cost = {d: np.zeros(1) for d in budget}
    for i, t in enumerate(tables):
        w = 1.0 if weights is None else float(weights[i])
        loss = (loss[:, None] + t["loss"].to_numpy() * w).ravel()
        for d in budget:
            cost[d] = (cost[d][:, None] + t[d].to_numpy(dtype=float)[None, :]).ravel()
    ok = np.all([cost[d] <= b for d, b in budget.items()], axis=0)
    return np.sort(loss[ok])[:k]


def test_parse_budget():
    assert parse_budget("macs=400M") == {"macs": 400e6}
    assert parse_budget("macs=400M, params=5e6") == {"macs": 400e6, "params": 5e6}
    assert parse_budget("flops=1.5G,latency=12.5") == {"macs": 1.5e9, "latency_ms": 12.5}
    assert parse_budget("params<=4.2m") == {"params": 4.2e6}
    assert parse_budget("macs=10k") == {"macs": 1e4}
    for bad in ["", "macs", "macs=abc", "macs=1X", "macs=1,macs=2"]:
        with pytest.raises(ValueError):
            parse_budget(bad)


def test_format_cost():
    assert format_cost(400e6) == "400M"
    assert format_cost(4.2e6) == "4.2M"
    assert format_cost(1.5e9) == "1.5G"
    assert format_cost(12.5) == "12.5"
    assert format_cost(math.inf) == "inf"


def test_architecture_to_dict_is_json():
    tables = synthetic_tables(layers=[1, 1], seed=0)
    a = search(tables, {"macs": 1e12})[0]
    d = json.loads(json.dumps(a.to_dict()))
    assert d["choices"] == list(a.choices) and d["loss"] == a.loss and set(d["costs"]) == {"macs", "params"}


def test_dna_sized_search_is_optimal_under_swaps():
    """Optimality certificate on a dna-sized instance: no single-block swap is feasible and better."""
    tables = synthetic_tables(layers=[2, 4, 4, 4, 4, 1], seed=2, noise=0.05)
    budget = {"macs": sum(float(t["macs"].median()) for t in tables)}
    best = search(tables, budget)[0]
    for i, t in enumerate(tables):
        new_cost = best.costs["macs"] - t["macs"].iloc[best.indices[i]] + t["macs"].to_numpy()
        new_loss = best.loss - t["loss"].iloc[best.indices[i]] + t["loss"].to_numpy()
        assert not np.any((new_cost <= budget["macs"]) & (new_loss < best.loss - 1e-12))


# ---------------------------------------------------------------------------------------------------------------
# search stage (results.json, pareto.png, report.md)


def _write_ratings(run_dir, space_name, seed=0):
    from dna_fast.rating import rating_table
    from dna_fast.space import SearchSpace

    space = SearchSpace.load(space_name)
    rng = np.random.default_rng(seed)
    (run_dir / "ratings").mkdir(parents=True)
    size = (space.default_image_size,) * 2
    for i in range(space.num_blocks):
        t = rating_table(space, i, rng.random(space.num_candidates(i)) * 10, 10, 1.0, size)
        t.to_parquet(run_dir / "ratings" / f"block{i}.parquet")
    return space


@pytest.mark.parametrize("space_name", ["dna_mini", "dna_cells"])
def test_run_search_stage(tmp_path, space_name):
    pytest.importorskip("dna_fast.models")
    from dna_fast.cost import base_cost, network_cost
    from dna_fast.models import choices_from_arch_def
    from dna_fast.stages.search import load_tables, run_search_stage

    space = _write_ratings(tmp_path, space_name)
    budget = "macs=5M" if space_name == "dna_mini" else "macs=400M,params=5e6"
    out = run_search_stage(tmp_path, [budget, {"params": 4e6}], top_k=3, space=space)
    saved = json.loads((tmp_path / "search" / "results.json").read_text())
    assert saved["budgets"][0]["budget"] == parse_budget(budget)
    assert (tmp_path / "search" / "pareto.png").stat().st_size > 10_000
    md = (tmp_path / "search" / "report.md").read_text()
    assert md.startswith("## Search") and "search/pareto.png" in md
    tables = load_tables(tmp_path)
    for entry, b in zip(saved["budgets"], [parse_budget(budget), {"params": 4e6}]):
        assert len(entry["results"]) == 3
        for r in entry["results"]:
            # costs are the whole child network's (stem and head included), exactly as cost.network_cost counts
            assert r["costs"]["macs"] == network_cost(space, r["choices"])["macs"]
            assert r["costs"]["params"] == network_cost(space, r["choices"])["params"]
            assert all(r["costs"][d] <= v for d, v in b.items())
            back = choices_from_arch_def(space, r["arch_def"])
            assert [str(c) for c in back] == r["choices"]
    if len(space.blocks[-1].widths) == 1:  # same answer as search() with the base cost by hand
        base = {k: float(v) for k, v in base_cost(space).items()}
        ref = search(tables, parse_budget(budget), top_k=3, base_cost=base)
        assert [r["loss"] for r in saved["budgets"][0]["results"]] == [a.loss for a in ref]
    front = saved["pareto"]["points"]
    assert all(a["macs"] < b["macs"] and a["loss"] > b["loss"] for a, b in zip(front, front[1:]))
    if space_name == "dna_cells":
        assert set(out["references"]) == {"dna_a", "dna_b", "dna_c", "dna_d"}
        assert "dna_a" in md


def test_run_search_stage_errors(tmp_path):
    from dna_fast.stages.search import run_search_stage

    with pytest.raises(FileNotFoundError, match="rate"):
        run_search_stage(tmp_path, ["macs=1M"])
    pytest.importorskip("dna_fast.models")
    _write_ratings(tmp_path, "dna_mini")
    with pytest.raises(ValueError, match="smallest achievable macs"):
        run_search_stage(tmp_path, ["macs=1K"], space="dna_mini")
    assert not (tmp_path / "search" / "results.json").exists()


def test_synthetic_width_tables_against_brute_force():
    tables = synthetic_tables(layers=[1, 1, 1], seed=4, noise=0.05, widths=[[8, 16], [24, 32], [40]])
    assert [len(t) for t in tables] == [12, 24, 12]
    for frac in (0.3, 0.6, 1.0):
        lo = sum(int(t["macs"].min()) for t in tables)
        hi = sum(int(t["macs"].max()) for t in tables)
        _check_same(tables, {"macs": lo + frac * (hi - lo)}, 4)


def test_calibrate_weights_recovers_true_weights():
    from dna_fast.search import calibrate_weights

    tables = synthetic_tables(layers=[2, 2, 1, 1], seed=6, noise=0.05)
    rng = np.random.default_rng(0)
    true_w = np.array([0.5, 2.0, 1.0, 0.5])
    archs = [[t.index[int(rng.integers(len(t)))] for t in tables] for _ in range(12)]
    losses = np.array([[t["loss"].loc[c] for t, c in zip(tables, a)] for a in archs])
    acc = 75.0 - losses @ true_w
    w = calibrate_weights(tables, archs, acc)
    np.testing.assert_allclose(w, true_w / true_w.mean(), rtol=1e-6)
    np.testing.assert_allclose(calibrate_weights(tables, archs, acc, nonnegative=False), w, rtol=1e-6)
    # the fitted weights rank architectures by predicted accuracy
    budget = {"macs": sum(float(t["macs"].median()) for t in tables)}
    got = [a.loss for a in search(tables, budget, weights=w, top_k=3)]
    np.testing.assert_array_equal(got, _vectorized_reference(tables, budget, 3, weights=w))
    with pytest.raises(ValueError, match="do not decrease"):
        calibrate_weights(tables, archs, 75.0 + losses @ true_w)
    with pytest.raises(ValueError, match="at least 2"):
        calibrate_weights(tables, archs[:1], acc[:1])


def test_run_search_stage_with_latency(tmp_path):
    pytest.importorskip("dna_fast.models")
    import torch

    from dna_fast._latency import latency_table
    from dna_fast.stages.search import run_search_stage

    space = _write_ratings(tmp_path, "dna_mini")
    lat = latency_table(space, "cpu", 1, torch.float32, warmup=0, repeats=1, num_threads=1)
    lat.save(tmp_path / "latency.json")
    free = run_search_stage(tmp_path, ["macs=1G"], top_k=20, space=space, latency=tmp_path / "latency.json")
    lats = sorted(r["costs"]["latency_ms"] for r in free["budgets"][0]["results"])
    for r in free["budgets"][0]["results"]:
        assert r["costs"]["latency_ms"] == pytest.approx(lat.network_ms(space, r["choices"]))
    cap = lats[len(lats) // 2]
    out = run_search_stage(tmp_path, [{"latency_ms": cap}], top_k=3, space=space, latency=lat)
    assert all(r["costs"]["latency_ms"] <= cap for r in out["budgets"][0]["results"])
    assert out["budgets"][0]["results"][0]["loss"] >= free["budgets"][0]["results"][0]["loss"]


def test_run_search_stage_reads_run_config(tmp_path):
    pytest.importorskip("dna_fast.models")
    import yaml

    from dna_fast.cost import base_cost
    from dna_fast.stages.search import run_search_stage

    space = _write_ratings(tmp_path, "dna_mini")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"space": "dna_mini", "num_classes": 10,
                                                          "data": {"image_size": 32}}))
    out = run_search_stage(tmp_path, ["macs=5M"], top_k=1)
    assert out["space"] == "dna_mini"
    assert out["base_cost"] == {k: float(v) for k, v in base_cost(space, 32, 10).items()}
    assert "arch_def" in out["budgets"][0]["results"][0]


def test_chunked_pairs_and_compaction(monkeypatch):
    """Tiny pair chunks force the chunked product and the in-step compaction: still exact."""
    monkeypatch.setattr(search_mod, "_PAIR_CHUNK", 5)
    rng = np.random.default_rng(11)
    for trial in range(40):
        tables = _random_tables(rng, int(rng.integers(2, 5)), ties=trial % 2 == 0, widths=trial % 3 == 0)
        _check_same(tables, _budget(rng, tables, ["macs", "params"][: 1 + trial % 2], False), int(rng.integers(1, 5)))
        assert [(a.costs["macs"], a.loss) for a in pareto_front(tables, "macs")] == pareto_front_reference(tables)


def _dominator_counts(cost, loss):
    """Brute force: how many points dominate each point (ties broken by position, as the search does)."""
    n = len(loss)
    counts = np.zeros(n, dtype=np.int64)
    pos = np.arange(n)
    for j in range(n):
        le = (cost <= cost[j]).all(1) & (loss <= loss[j])
        strict = (cost < cost[j]).any(1) | (loss < loss[j]) | (pos < j)
        counts[j] = int((le & strict).sum())
    return counts


@pytest.mark.parametrize("n_costs", [2, 3])
def test_dominance_filter_on_many_points(n_costs):
    """Above 2048 points the multi-cost filter runs a pre-filter first; what it keeps must be a superset of the
    points with fewer than k dominators, and everything it drops must have at least k."""
    rng = np.random.default_rng(n_costs)
    n = 3000
    cost = rng.integers(0, 40, size=(n, n_costs)).astype(float)
    loss = (rng.integers(0, 40, size=n) - cost.sum(1) / 4).astype(float)
    counts = _dominator_counts(cost, loss)
    for k in (1, 2, 4):
        keep = search_mod._layers(cost, loss, np.zeros(n, dtype=np.int64), k)
        assert keep[counts < k].all()
        assert (counts[~keep] >= k).all()
        assert keep.sum() < n // 2  # it does filter


def test_big_block_two_budgets_against_brute_force():
    tables = synthetic_tables(layers=[5, 1, 1], seed=9, noise=0.05)  # 7776 x 6 x 6
    budget = {"macs": sum(float(t["macs"].median()) for t in tables),
              "params": sum(float(t["params"].quantile(0.4)) for t in tables)}
    got = [a.loss for a in search(tables, budget, top_k=5)]
    np.testing.assert_array_equal(got, _vectorized_reference(tables, budget, 5))
