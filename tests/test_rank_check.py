"""Ranking check: the rank statistics against SciPy and plain loops, the seeded bootstrap, candidate / network
selection, stand-alone block training, the analysis of a made-up study, found vs random, and resuming unit by unit.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from scipy import stats

from dna_fast import rank_check as rk
from dna_fast.space import SearchSpace


@pytest.fixture(scope="module")
def space():
    return SearchSpace.load("dna_mini")


# ---------------------------------------------------------------------------------------------- statistics
def _data(n, seed, ties=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 0.6 * x + rng.normal(size=n)
    if ties:
        x, y = np.round(x), np.round(y * 2) / 2
    return x, y


@pytest.mark.parametrize("n,ties", [(5, False), (17, False), (30, True), (64, True)])
def test_tau_and_rho_match_scipy(n, ties):
    for seed in range(5):
        x, y = _data(n, seed, ties)
        assert rk.kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert rk.spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert rk.stratified_tau(x, y) == pytest.approx(rk.kendall_tau(x, y), abs=1e-15)


def test_constant_sample_gives_nan():
    assert math.isnan(rk.kendall_tau([1, 1, 1], [1, 2, 3]))
    assert math.isnan(rk.spearman_rho([1, 2, 3], [5, 5, 5]))
    assert rk.bootstrap_ci([1, 1, 1], [1, 2, 3], n_boot=50) == (pytest.approx(float("nan"), nan_ok=True),) * 2


def _plain_stratified_tau(x, y, g):
    s = nx = ny = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            if g[i] != g[j]:
                continue
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            s, nx, ny = s + dx * dy, nx + (dx != 0), ny + (dy != 0)
    return s / math.sqrt(nx * ny)


def test_stratified_statistics_match_plain_loops():
    x, y = _data(40, 3, ties=True)
    g = np.repeat(["a", "b", "c", "d"], [5, 15, 12, 8])
    y = y + (g == "b") * 100.0  # a shift between groups: must not count, pairs across groups are left out
    assert rk.stratified_tau(x, y, g) == pytest.approx(_plain_stratified_tau(x, y, g), abs=1e-12)
    w = [(np.sum(g == k) - 1, stats.spearmanr(x[g == k], y[g == k]).statistic) for k in "abcd"]
    assert rk.stratified_rho(x, y, g) == pytest.approx(sum(a * r for a, r in w) / sum(a for a, _ in w), abs=1e-12)
    # across groups the shift dominates: the unstratified tau differs
    assert abs(rk.kendall_tau(x, y) - rk.stratified_tau(x, y, g)) > 0.05


def test_bootstrap_matches_plain_resampling_and_is_seeded():
    x, y = _data(20, 7, ties=True)
    n_boot, seed = 300, 11
    lo, hi = rk.bootstrap_ci(x, y, "tau", n_boot=n_boot, seed=seed)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 20, size=(n_boot, 20))
    vals = np.array([stats.kendalltau(x[b], y[b]).statistic for b in idx])
    vals = vals[~np.isnan(vals)]
    assert (lo, hi) == pytest.approx((np.quantile(vals, 0.025), np.quantile(vals, 0.975)), abs=1e-12)
    rlo, rhi = rk.bootstrap_ci(x, y, "rho", n_boot=n_boot, seed=seed)
    rv = np.array([stats.spearmanr(x[b], y[b]).statistic for b in idx])
    rv = rv[~np.isnan(rv)]
    assert (rlo, rhi) == pytest.approx((np.quantile(rv, 0.025), np.quantile(rv, 0.975)), abs=1e-12)
    assert rk.bootstrap_ci(x, y, "tau", n_boot=n_boot, seed=seed) == (lo, hi)
    assert rk.bootstrap_ci(x, y, "tau", n_boot=n_boot, seed=seed + 1) != (lo, hi)
    assert lo < rk.kendall_tau(x, y) < hi
    assert rk.bootstrap_ci(np.arange(10), np.arange(10) ** 2, n_boot=100) == (1.0, 1.0)
    # too few points (no group of 5) for a bootstrap to mean anything: no interval
    assert all(math.isnan(v) for v in rk.bootstrap_ci(np.arange(4), np.arange(4), n_boot=100))
    assert all(math.isnan(v) for v in rk.bootstrap_ci(np.arange(8), np.arange(8), groups=[0] * 4 + [1] * 4))
    # a small group next to a big one is resampled with it (pooled within cells of 8 and 4)
    g = np.array([0] * 8 + [1] * 4)
    xs, ys = _data(12, 3)
    lo, hi = rk.bootstrap_ci(xs, ys, groups=g, n_boot=200, seed=2)
    rng = np.random.default_rng(2)
    draws = [idx[rng.integers(0, len(idx), size=(200, len(idx)))] for idx in (np.arange(8), np.arange(8, 12))]
    plain = []
    for r in range(200):  # plain loop: each group resampled within itself, the pairs of both groups pooled
        b = np.concatenate([d[r] for d in draws])
        with np.errstate(invalid="ignore", divide="ignore"):
            plain.append(_plain_stratified_tau(xs[b], ys[b], g))
    plain = np.array(plain)[~np.isnan(plain)]
    assert (lo, hi) == pytest.approx((np.quantile(plain, 0.025), np.quantile(plain, 0.975)), abs=1e-12)
    assert lo <= rk.stratified_tau(xs, ys, g) <= hi
    with pytest.raises(ValueError, match="tau' or 'rho"):
        rk.bootstrap_ci(x, y, "pearson", n_boot=10)


def test_paired_difference_interval_matches_plain_resampling():
    """tau(x1, y) - tau(x2, y) on the same resamples: x1 ranks y better than a noisier x2 beyond the noise."""
    rng = np.random.default_rng(4)
    y = rng.normal(size=24)
    x1, x2 = y + 0.2 * rng.normal(size=24), y + 2.0 * rng.normal(size=24)
    g = np.repeat([0, 1], 12)
    lo, hi = rk.bootstrap_diff_ci(x1, x2, y, "tau", groups=g, n_boot=300, seed=5)
    r = np.random.default_rng(5)
    draws = [idx[r.integers(0, len(idx), size=(300, len(idx)))] for idx in (np.arange(12), np.arange(12, 24))]
    plain = []
    for k in range(300):
        b = np.concatenate([d[k] for d in draws])
        plain.append(_plain_stratified_tau(x1[b], y[b], g) - _plain_stratified_tau(x2[b], y[b], g))
    assert (lo, hi) == pytest.approx((np.quantile(plain, 0.025), np.quantile(plain, 0.975)), abs=1e-12)
    assert lo > 0  # the better predictor wins beyond the noise
    lo2, hi2 = rk.bootstrap_diff_ci(x1, x1.copy(), y, n_boot=100)
    assert lo2 == hi2 == 0.0  # the same predictor: no difference in any resample
    assert all(math.isnan(v) for v in rk.bootstrap_diff_ci(x1[:4], x2[:4], y[:4], n_boot=50))
    # the stats of a study carry it for every rating, next to MACs
    rows = [{"loss": -a, "macs": b} for a, b in zip(x1, x2)]
    st = rk._metric_stats(rows, ["loss", "macs"], y, g, 300, 0)
    assert st["loss"]["minus_macs"]["tau"] == pytest.approx(st["loss"]["tau"] - st["macs"]["tau"], abs=1e-12)
    assert st["loss"]["minus_macs"]["tau_ci"][0] > 0 and "minus_macs" not in st["macs"]


def test_stratified_bootstrap_resamples_within_groups():
    x, y = _data(30, 5)
    g = np.repeat([0, 1], 15)
    y = y + g * 50
    lo, hi = rk.bootstrap_ci(x, y, "tau", groups=g, n_boot=400, seed=0)
    assert lo <= rk.stratified_tau(x, y, g) <= hi
    s = rk.rank_stats(x, y, g, n_boot=200, seed=1)
    assert s["n"] == 30 and s["tau"] == pytest.approx(rk.stratified_tau(x, y, g), abs=1e-6)
    assert s["tau_ci"][0] <= s["tau"] <= s["tau_ci"][1] and s["rho_ci"][0] <= s["rho"] <= s["rho_ci"][1]


def test_seed_noise_pooled_std():
    r = rk.seed_noise({"a": [1.0, 2.0, 3.0], "b": [5.0, 5.0], "c": [4.0]})
    assert set(r["units"]) == {"a", "b"}
    assert r["pooled_std"] == pytest.approx(math.sqrt((1.0 + 0.0) / 2))


def test_found_vs_random_verdicts():
    clear = rk.found_vs_random([90.0, 90.2, 90.1], {"r1": [85.0, 85.3], "r2": [84.8, 85.1], "r3": [85.5, 85.2]})
    assert clear["beats_random"] is True and clear["diff"] > 4 and "beats random" in clear["verdict"]
    tied = rk.found_vs_random([85.0, 86.0], {"r1": [85.5, 84.9], "r2": [86.1, 85.0], "r3": [85.2, 85.8]})
    assert tied["beats_random"] is False and "does NOT beat" in tied["verdict"]
    few = rk.found_vs_random([85.0], {"r1": [85.5]})
    assert few["beats_random"] is None and "not enough" in few["verdict"]


# ---------------------------------------------------------------------------------------------- selection
def _table(space, i, seed=0):
    import pandas as pd

    from dna_fast.cost import candidate_costs

    rng = np.random.default_rng(seed + i)
    n = space.num_candidates(i)
    c = candidate_costs(space, i)
    loss = rng.uniform(0.5, 2.0, size=n)
    return pd.DataFrame({"loss": loss, "rel_loss": loss / 3.0, "params": c["params"], "macs": c["macs"]},
                        index=pd.Index([str(x) for x in space.candidates(i)], name="candidate"))


def test_block_candidates_spread_over_each_cell(space):
    t = _table(space, 0)  # cells of 4 and 16 candidates
    chosen = rk.select_block_candidates(space, 0, t, 12)
    assert len(chosen) == len(set(chosen)) == 12
    cells = [space.parse(0, c).cell for c in chosen]
    assert cells.count(0) == 4 and cells.count(1) == 8  # the small cell gives what it cannot use
    for cell in (0, 1):
        names = [str(c) for c in space.candidates(0) if c.cell == cell]
        sub = t.loc[names, "loss"]
        picked = [c for c in chosen if space.parse(0, c).cell == cell]
        assert sub.idxmin() in picked and sub.idxmax() in picked
    assert len(rk.select_block_candidates(space, 0, t, 500)) == space.num_candidates(0)


def test_networks_spread_and_matched_groups(space):
    tables = [_table(space, i) for i in range(space.num_blocks)]
    model = rk._CostModel(space, tables, 32, 10)
    nets = rk.select_networks(model, 10, 2, 3, 0.05, seed=0, pool=3000)
    assert len(nets) == 10 and len({tuple(e["choices"]) for e in nets.values()}) == 10
    from dna_fast.cost import network_cost

    for e in nets.values():  # the vectorized costs equal the plain per-network cost
        c = network_cost(space, e["choices"], 32, 10)
        assert e["macs"] == c["macs"] and e["params"] == c["params"]
    for g in ("g1", "g2"):
        m = [e["macs"] for e in nets.values() if e["group"] == g]
        assert len(m) == 3 and (max(m) - min(m)) <= 0.1 * min(m)
    spread = sorted(e["macs"] for e in nets.values() if e["group"] is None)
    assert len(spread) == 4 and spread[-1] > 1.5 * spread[0]


# ---------------------------------------------------------------------------------------------- block training
def test_train_block_candidate_learns_and_is_seeded(space):
    torch.set_num_threads(1)
    i = 3  # 4x4 features: fast
    cand = str(space.candidates(i)[5])
    torch.manual_seed(0)
    x = torch.randn(96, space.blocks[i].in_chs, 4, 4)
    w = torch.randn(space.blocks[i].out_chs, space.blocks[i].in_chs, 1, 1) / space.blocks[i].in_chs ** 0.5
    t = torch.nn.functional.conv2d(x, w)  # a learnable target of unit scale
    tr, va = (x[:64], t[:64]), (x[64:], t[64:])
    init = rk.train_block_candidate(space, i, cand, tr, va, steps=1, lr=1e-9, batch_size=16, seed=0)
    a = rk.train_block_candidate(space, i, cand, tr, va, steps=30, lr=0.01, batch_size=16, seed=0)
    b = rk.train_block_candidate(space, i, cand, tr, va, steps=30, lr=0.01, batch_size=16, seed=0)
    c = rk.train_block_candidate(space, i, cand, tr, va, steps=30, lr=0.01, batch_size=16, seed=1)
    assert a["val_loss"] == b["val_loss"] and a["val_loss"] != c["val_loss"]
    assert a["val_loss"] < 0.7 * init["val_loss"]
    # val loss = per-element MSE of the trained block in eval mode, as the rating defines it
    assert a["block"] == i and a["candidate"] == cand and a["cell"] == space.parse(i, cand).cell


# ---------------------------------------------------------------------------------------------- analysis, resume
def _plan(space, seed=0):
    tables = [_table(space, i, seed) for i in range(space.num_blocks)]

    class Cfg:
        block_candidates, noise_candidates, networks, matched_groups, matched_size = 6, 2, 5, 1, 3
        macs_tolerance, noise_networks, found_seeds, found_random = 0.05, 1, 2, 3

    found = {"choices": [str(space.candidates(i)[0]) for i in range(space.num_blocks)]}
    from dna_fast.cost import network_cost

    found.update({k: int(v) for k, v in network_cost(space, found["choices"], 32, 10).items()})
    ctl = {}
    for k in range(3):
        ch = [str(space.candidates(i)[k + 1]) for i in range(space.num_blocks)]
        ctl[f"random_{k + 1}"] = {"choices": ch, **{a: int(v) for a, v in network_cost(space, ch, 32, 10).items()}}
    return rk.build_plan(space, tables, Cfg, seed=seed, image_size=32, num_classes=10, found=found, controls=ctl)


def _other(space):
    return {"other": [_table(space, i, 99) for i in range(space.num_blocks)]}


def _fake_units(plan, rng):
    """Stand-alone results made up: val loss = rating + small noise (the rating ranks well), acc = - summed loss."""
    by = {(int(b), e["candidate"]): e for b, es in plan["blocks"].items() for e in es}

    def train_block(b, c, s):
        return {"block": b, "candidate": c, "cell": by[(b, c)]["cell"], "seed": s,
                "val_loss": by[(b, c)]["loss"] + 0.01 * rng.normal()}

    def train_net(name, entry, s):
        return {"acc": 90.0 - entry["loss"] + 0.01 * rng.normal()}

    return train_block, train_net


def test_analysis_of_a_made_up_study_and_resume(space, tmp_path):
    plan = _plan(space)
    assert plan["block_metrics"] == ["loss", "rel_loss", "macs", "params"]
    with_other = rk.attach_compare(plan, _other(space))
    assert with_other["block_metrics"] == ["loss", "rel_loss", "other:loss", "other:rel_loss", "macs", "params"]
    e = with_other["blocks"]["1"][0]
    assert e["other:loss"] == _other(space)["other"][1].at[e["candidate"], "loss"] and "other:loss" not in \
        plan["blocks"]["1"][0]
    rng = np.random.default_rng(0)
    train_block, train_net = _fake_units(plan, rng)
    calls = {"block": 0, "net": 0}
    nets_done = {}

    def tb(b, c, s):
        calls["block"] += 1
        return train_block(b, c, s)

    def tn(name, entry, s):
        calls["net"] += 1
        r = train_net(name, entry, s)
        p = tmp_path / "networks" / f"{name}_s{s}" / "metrics.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps(r))
        nets_done[f"{name}_s{s}"] = r
        return r

    todo = rk.units(plan, noise_seeds=2)
    n_blocks = sum(1 for k, _ in todo if k == "block")
    n_nets = len(todo) - n_blocks
    assert n_blocks == 4 * 6 + 4 * 2 and n_nets == (1 + 3) * 2 + 5 + 1
    # a study stopped after the block units: partial results, honest status
    for kind, spec in todo:
        if kind == "block":
            r = tb(*spec)
            p = tmp_path / "blocks" / f"block{spec[0]}" / rk._unit_name(spec[1], spec[2])
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(r))
    res = rk.refresh(tmp_path, plan, 2, 100, 0, compare=_other(space))
    assert (tmp_path / "blocks.png").is_file() and (tmp_path / "results.json").is_file()
    assert res["complete"] is False and res["status"] == {"done": n_blocks, "total": len(todo),
                                                          "remaining": f"0 block units, {n_nets} networks"}
    pooled = res["block_level"]["pooled"]
    assert pooled["loss"]["tau"] > 0.9 and pooled["loss"]["tau_ci"][0] > 0.8
    assert pooled["other:loss"]["tau"] < 0.5  # unrelated ratings
    # the pooled statistic is the stratified one over blocks, computed from the unit files
    blocks, _ = rk.collect_units(tmp_path)
    first = [u for u in blocks if u["seed"] == 0]
    rating = {(int(b), e["candidate"]): e["loss"] for b, es in plan["blocks"].items() for e in es}
    xs = [-rating[(u["block"], u["candidate"])] for u in first]
    ys = [-u["val_loss"] for u in first]
    assert pooled["loss"]["tau"] == pytest.approx(rk.stratified_tau(xs, ys, [u["block"] for u in first]), abs=1e-6)
    assert res["block_level"]["per_block"]["0"]["seed_noise"]["pooled_std"] is not None
    assert "network_level" in res and res["network_level"]["done"] == 0
    assert "PARTIAL" in (tmp_path / "report.md").read_text()
    # resume: only the networks run now
    res = rk.run_units(tmp_path, plan, 2, train_block=tb, train_net=tn, n_boot=100, seed=0, log=lambda s: None,
                       plots=False)
    assert calls == {"block": n_blocks, "net": n_nets} and res["complete"] is True
    assert res["network_level"]["all"]["loss"]["tau"] > 0.9
    assert res["found_vs_random"]["beats_random"] is not None
    again = rk.run_units(tmp_path, plan, 2, train_block=tb, train_net=tn, n_boot=100, seed=0, log=lambda s: None,
                         plots=False)
    assert calls == {"block": n_blocks, "net": n_nets} and again["complete"] is True
    text = rk.write_section(again)
    assert "Block level" in text and "Network level" in text and "Found vs random" in text
    assert any("block level" in ln for ln in rk.closing_lines(again))


def test_workers_share_a_study_without_training_a_unit_twice(space, tmp_path):
    """Two processes run one study at once: every unit trained exactly once (claims), the results complete."""
    import multiprocessing as mp
    import time

    plan = _plan(space)
    train_block, train_net = _fake_units(plan, np.random.default_rng(0))
    log = tmp_path / "trained.log"

    def record(what):
        with open(log, "a") as f:  # one short append per unit: atomic on a local file system
            f.write(f"{what} {os.getpid()}\n")
        time.sleep(0.01)

    def tb(b, c, s):
        record(f"block{b}/{c}/{s}")
        return train_block(b, c, s)

    def tn(name, entry, s):
        record(f"net/{name}/{s}")
        r = train_net(name, entry, s)
        q = tmp_path / "networks" / f"{name}_s{s}" / "metrics.json"
        q.parent.mkdir(parents=True)
        q.write_text(json.dumps(r))
        return r

    def work():
        rk.run_units(tmp_path, plan, 2, train_block=tb, train_net=tn, n_boot=20, seed=0, log=lambda s: None,
                     plots=False)

    procs = [mp.get_context("fork").Process(target=work) for _ in range(2)]
    for q in procs:
        q.start()
    for q in procs:
        q.join()
    assert [q.exitcode for q in procs] == [0, 0]
    lines = log.read_text().split()
    names, pids = lines[0::2], set(lines[1::2])
    todo = rk.units(plan, noise_seeds=2)
    assert sorted(names) == sorted({n for n in names}) and len(names) == len(todo)  # each unit once, all of them
    assert len(pids) == 2  # both worked
    assert not list((tmp_path / "claims").iterdir())  # every claim released
    res = rk.run_units(tmp_path, plan, 2, train_block=tb, train_net=tn, n_boot=20, seed=0, log=lambda s: None,
                       plots=False)
    assert res["complete"] is True and len(log.read_text().split()) == 2 * len(todo)  # nothing left to train


def test_claims_of_live_dead_and_foreign_processes(space, tmp_path):
    import socket
    import subprocess
    import sys

    spec = ("block", (0, "d1w16:ir_k3_e3_se0.25", 0))
    first = rk.claim_unit(tmp_path, *spec)
    assert first is not None and first.read_text() == f"{os.getpid()}@{socket.gethostname()}"
    assert rk.claim_unit(tmp_path, *spec) is None  # held by a live process (this one)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    first.write_text(f"{int(dead.stdout)}@{socket.gethostname()}")  # its process has exited: stale
    again = rk.claim_unit(tmp_path, *spec)
    assert again == first and again.read_text().startswith(f"{os.getpid()}@")
    again.write_text("12345@another-host")  # cannot tell whether it lives: left alone
    assert rk.claim_unit(tmp_path, *spec) is None
    again.write_text("")  # being written by its owner: left alone
    assert rk.claim_unit(tmp_path, *spec) is None
    net = ("net", ("random_1", {}, 3))
    assert rk.claim_unit(tmp_path, *net).name == "net_random_1_s3.claim"


# ---------------------------------------------------------------------------------------------- the stage
TINY_STUDY = [
    "threads=1", "data.backend=fashion_mnist", "data.fallback=null", "data.batch_size=20", "data.val_batch_size=40",
    "teacher.epochs=1", "distill.epochs=1", "rate.batch_size=10", "rate.num_batches=2", "rate.calib_batches=1",
    "search.budget=macs=3M", "search.top_k=2", "retrain.epochs=1", "retrain.max_steps=2", "control.num_random=0",
    "rank_check.enabled=true", "rank_check.block_candidates=3", "rank_check.block_steps=3",
    "rank_check.block_batch_size=10", "rank_check.block_train_images=40", "rank_check.block_val_images=20",
    "rank_check.noise_candidates=1", "rank_check.noise_seeds=2", "rank_check.networks=2",
    "rank_check.matched_groups=0", "rank_check.noise_networks=0", "rank_check.found_random=2",
    "rank_check.found_seeds=2", "rank_check.bootstrap=50",
]


def _tiny_fashion(root):
    """A Fashion-MNIST-shaped data set of random images (240 train = 200 train + 40 val, 30 test), written here."""
    from dna_fast.data import fashion_mnist as fm

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for part, n in (("train", 240), ("test", 30)):
        fm.write_idx(root / f"{fm.FILES[part][0]}.gz", rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        fm.write_idx(root / f"{fm.FILES[part][1]}.gz", (np.arange(n) % 10).astype(np.uint8))


@pytest.mark.slow
def test_stage_runs_resumes_and_reanalyzes(tmp_path, capsys):
    """The whole tiny pipeline with the ranking check (small local data), then a rerun that trains nothing, a rerun
    with other settings (refused), and ``dna-fast rank-check --analyze-only``."""
    from dna_fast import cli, train

    _tiny_fashion(tmp_path / "data")
    run_dir = tmp_path / "run"
    tiny = [*TINY_STUDY, f"data.root={tmp_path / 'data'}"]
    assert train.main(["--run-dir", str(run_dir), "--stages", "teacher,distill,rate,search,rank_check", *tiny,
                       "threads=2", "rank_check.workers=2"]) == 0  # two forked workers share the units
    out = capsys.readouterr().out
    assert "Ranking check (rank_check/results.json" in out
    rc_dir = run_dir / "rank_check"
    res = json.loads((rc_dir / "results.json").read_text())
    total = 4 * 3 + 4 * 1 + 2 + (1 + 2) * 2  # blocks, block noise, networks, found + random
    assert res["complete"] is True and res["status"]["done"] == res["status"]["total"] == total
    assert set(res["block_level"]["per_block"]) == {"0", "1", "2", "3"}
    assert {"loss", "macs", "params"} <= set(res["block_level"]["pooled"])
    assert res["network_level"]["done"] == 2 and res["found_vs_random"]["verdict"]
    assert res["machine"] and res["date"] and res["block_steps"] == 3 and res["workers"] == 2
    assert not list((rc_dir / "claims").iterdir())
    plan = json.loads((rc_dir / "plan.json").read_text())
    assert all(len(v) == 3 for v in plan["blocks"].values())
    for name, e in plan["networks"].items():  # the plan's costs are the networks' real costs
        m = json.loads((rc_dir / "networks" / f"{name}_s0" / "metrics.json").read_text())
        assert m["macs"] == e["macs"] and m["eval_split"] == "test" and m["n_val"] == 30
    stamps = {p: p.stat().st_mtime_ns for p in rc_dir.rglob("*") if p.suffix in (".json", ".pth")
              and p.name not in ("results.json",)}
    assert train.main(["--run-dir", str(run_dir), "--stages", "rank_check", *tiny]) == 0  # workers=1: same plan
    assert "0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # other settings than the plan's: refused, nothing changed
    assert train.main(["--run-dir", str(run_dir), "--stages", "rank_check", *tiny,
                       "rank_check.block_candidates=4"]) == 2
    assert "other rank_check settings" in capsys.readouterr().err
    (rc_dir / "results.json").unlink()
    assert cli.main(["rank-check", "--run-dir", str(run_dir), "--analyze-only"]) == 0
    assert json.loads((rc_dir / "results.json").read_text())["status"]["done"] == total
    assert "## Ranking check" in (rc_dir / "report.md").read_text()


def test_closing_lines_say_what_the_run_left_out_and_judge_by_the_paired_difference():
    none = {"complete": True, "status": {}, "block_level": {}, "network_level": {"planned": 0, "done": 0}}
    assert any("network level: not part of this run" in ln for ln in rk.closing_lines(none))
    later = {**none, "network_level": {"planned": 12, "done": 0}}
    assert any("network level, summed rating vs accuracy: not measured yet" in ln for ln in rk.closing_lines(later))
    st = {"n": 64, "tau": 0.68, "tau_ci": [0.53, 0.80], "rho": 0.8, "rho_ci": [0.6, 0.9],
          "minus_macs": {"tau": 0.07, "tau_ci": [-0.08, 0.21]}}
    macs = {"n": 64, "tau": 0.61, "tau_ci": [0.46, 0.74], "rho": 0.7, "rho_ci": [0.5, 0.8]}
    res = {**none, "block_level": {"pooled": {"loss": st, "macs": macs}}}
    line = next(ln for ln in rk.closing_lines(res) if "pooled over blocks" in ln)
    assert "does NOT beat MACs" in line and "difference +0.07 [-0.08, +0.21]" in line
    st["minus_macs"]["tau_ci"] = [0.02, 0.2]
    line = next(ln for ln in rk.closing_lines(res) if "pooled over blocks" in ln)
    assert "; beats MACs" in line


# ---------------------------------------------------------------------------------------------- held-out, equal MACs
def _plain_near_tau(x, y, m, g, tol):
    s = nx = ny = 0
    for a in range(len(x)):
        for b in range(a + 1, len(x)):
            if g[a] != g[b] or abs(m[a] - m[b]) > tol * max(abs(m[a]), abs(m[b])):
                continue
            dx, dy = np.sign(x[a] - x[b]), np.sign(y[a] - y[b])
            s, nx, ny = s + dx * dy, nx + (dx != 0), ny + (dy != 0)
    return s / math.sqrt(nx * ny)


def test_equal_macs_tau_counts_only_pairs_of_near_macs():
    rng = np.random.default_rng(3)
    x, y = _data(40, 5)
    m = rng.choice([100.0, 104.0, 111.0, 150.0, 200.0], size=40)
    g = np.repeat([0, 1], 20)
    want = _plain_near_tau(x, y, m, g, 0.1)
    assert rk.stratified_tau(x, y, g, near=m, tol=0.1) == pytest.approx(want, abs=1e-12)
    assert rk.stratified_tau(x, y, g, near=m, tol=1e9) == pytest.approx(rk.stratified_tau(x, y, g), abs=1e-12)
    pairs = sum(1 for a in range(40) for b in range(a + 1, 40)
                if g[a] == g[b] and abs(m[a] - m[b]) <= 0.1 * max(m[a], m[b]))
    assert rk.count_near_pairs(m, g, 0.1) == pairs
    # the interval resamples candidates within groups and keeps only their near pairs: a plain loop agrees
    lo, hi = rk.bootstrap_ci(x, y, "tau", g, n_boot=50, seed=4, near=m, tol=0.1)
    idx = rk._boot_indices(rk._groups(g, 40), 50, 4)
    vals = []
    for r in range(50):
        sel = np.concatenate([b[r] for b in idx])
        vals.append(_plain_near_tau(x[sel], y[sel], m[sel], g[sel], 0.1))
    assert (lo, hi) == pytest.approx((np.quantile(vals, 0.025), np.quantile(vals, 0.975)), abs=1e-12)
    with pytest.raises(ValueError, match="only tau"):
        rk._boot_values(x, y, "rho", idx, near=m)


def test_random_selection_is_uniform_within_cells_and_blind_to_ratings(space):
    a = rk.select_random_candidates(space, 1, 16, seed=7)
    assert a == rk.select_random_candidates(space, 1, 16, seed=7) != rk.select_random_candidates(space, 1, 16, 8)
    assert len(set(a)) == 16 and [space.parse(1, c).cell for c in a].count(0) == 8
    assert rk.select_random_candidates(space, 0, 12, seed=7).__len__() == 12  # the 4-candidate cell gives up the rest
    # no rating is read: it takes no table; every candidate of a cell is drawn about equally often
    counts: dict[str, int] = {}
    for s in range(400):
        for c in rk.select_random_candidates(space, 3, 4, seed=s):
            counts[c] = counts.get(c, 0) + 1
    cell1 = [str(c) for c in space.candidates(3) if c.cell == 1]
    assert min(counts.get(c, 0) for c in cell1) > 0.5 * 400 * 2 / 16


def test_block_found_picks_the_best_rated_under_each_budget_and_random_ones_of_its_macs(space):
    t = _table(space, 1)
    cases = rk.select_block_found(space, 1, t, budgets=3, n_random=4, tolerance=0.05, seed=0)
    assert len(cases) == 3 and [c["quantile"] for c in cases] == [0.25, 0.5, 0.75]
    for c in cases:
        under = t[t["macs"] <= c["budget"]]
        assert c["found"] == under["loss"].idxmin()
        fm = t.at[c["found"], "macs"]
        assert len(c["random"]) == 4 and c["found"] not in c["random"] and len(set(c["random"])) == 4
        near = [n for n in t.index if n != c["found"] and abs(t.at[n, "macs"] - fm) <= 0.05 * fm]
        if len(near) >= 4:
            assert set(c["random"]) <= set(near) and c["tolerance_used"] <= 0.05
        else:  # all the near ones, then the nearest others
            assert set(near) <= set(c["random"])


def test_plan_with_random_selection_block_found_and_units_table(space, tmp_path):
    import pandas as pd

    tables = [_table(space, i) for i in range(space.num_blocks)]

    class Cfg:
        block_candidates, noise_candidates, networks, matched_groups, matched_size = 6, 1, 0, 0, 3
        macs_tolerance, noise_networks, found_seeds, found_random = 0.05, 0, 2, 0
        block_selection, block_found_budgets, block_found_random, block_found_seeds = "random", 2, 3, 2

    plan = rk.build_plan(space, tables, Cfg, seed=100, image_size=32, num_classes=10, found=None, controls=None)
    assert plan["selection"] == "random"
    for i in range(space.num_blocks):
        assert [e["candidate"] for e in plan["blocks"][str(i)]] == rk.select_random_candidates(space, i, 6, 100)
    todo = rk.units(plan, noise_seeds=2)
    specs = [s for k, s in todo if k == "block"]
    assert len(specs) == len(set(specs))  # a candidate both planned and found / random runs once per seed
    want = {(int(b), c, s) for b, cases in plan["block_found"].items() for case in cases
            for c in [case["found"], *case["random"]] for s in (100, 101)}
    assert want <= set(specs)
    # taking another plan's candidates: the same units, another seed / step count
    again = rk.build_plan(space, tables, Cfg, seed=0, image_size=32, num_classes=10, found=None, controls=None,
                          candidates_from={**plan, "source": "x/plan.json"})
    assert [e["candidate"] for e in again["blocks"]["2"]] == [e["candidate"] for e in plan["blocks"]["2"]]
    assert again["noise"] == plan["noise"] and again["selection"] == "from x/plan.json"
    entries = rk.plan_entries(plan)
    rng = np.random.default_rng(0)
    for b, c, s in specs:
        r = {"block": b, "candidate": c, "cell": space.parse(b, c).cell, "seed": s, "steps": 10,
             "val_loss": entries[(b, c)]["loss"] + 0.01 * rng.normal()}
        p = tmp_path / "blocks" / f"block{b}" / rk._unit_name(c, s)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(r))
    res = rk.refresh(tmp_path, plan, 2, 200, 0, plots=False)
    assert res["complete"] is True
    bf = res["block_found_vs_random"]
    assert bf["cases"] == 2 * space.num_blocks and bf["mean_gain"]["found_better_in"] >= bf["cases"] - 1
    eq = res["block_level"]["pooled_equal_macs"]
    assert eq["pairs"] > 0 and eq["loss"]["tau"] > 0.8
    # units.csv holds every unit with its ratings and costs; the pooled taus are recomputed from it alone
    table = pd.read_csv(tmp_path / "units.csv")
    assert len(table) == len(specs) and {"block", "cell", "candidate", "seed", "steps", "val_loss", "roles", "macs",
                                         "params", "loss", "rel_loss"} <= set(table.columns)
    main = table[table["roles"].str.contains("planned")]
    assert len(main) == 6 * space.num_blocks
    tau = rk.stratified_tau(-main["loss"], -main["val_loss"], main["block"])
    assert tau == pytest.approx(res["block_level"]["pooled"]["loss"]["tau"], abs=1e-6)
    near = rk.stratified_tau(-main["loss"], -main["val_loss"], main["block"], near=main["macs"], tol=0.1)
    assert near == pytest.approx(eq["loss"]["tau"], abs=1e-6)
    text = rk.write_section(res)
    assert "found vs random at equal MACs" in text and "Equal-MACs pairs" in text
    for b, cases in plan["block_found"].items():  # each row: the found candidate (pipes escaped), its mean loss
        case = cases[0]
        cell = case["found"].replace("|", "\\|")
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| {b} | {case['budget']} | {cell} |"))
        found_loss = np.mean([json.loads((tmp_path / "blocks" / f"block{b}" / rk._unit_name(case["found"], s))
                                         .read_text())["val_loss"] for s in (100, 101)])
        cols = [c.strip() for c in row.replace("\\|", "").split("|")]
        assert len(cols) == 8 and float(cols[4]) == pytest.approx(found_loss, rel=1e-3)
    assert any("|" in cases[0]["found"] for cases in plan["block_found"].values())  # a multi-layer one among them
    assert any("about equal MACs" in ln for ln in rk.closing_lines(res))


def test_cell_calibration_fits_each_cell_and_keeps_its_order(space):
    import pandas as pd

    t = _table(space, 1)  # cells d2w24 (16 candidates) and d3w24 (64)
    cells = np.array([space.parse(1, c).cell for c in t.index])
    truth = np.where(cells == 0, 0.2 + 0.1 * t["loss"], 0.1 + 0.3 * t["loss"])  # each cell its own scale
    units = pd.DataFrame({"block": 1, "cell": cells, "candidate": t.index, "loss": t["loss"], "val_loss": truth})
    units = units.groupby("cell").head(5)  # a few units per cell
    fit = rk.fit_cell_calibration(units)
    assert fit[(1, 0)] == pytest.approx((0.1, 0.2)) and fit[(1, 1)] == pytest.approx((0.3, 0.1))
    tables = [_table(space, i) for i in range(space.num_blocks)]
    with pytest.raises(ValueError, match="block 0: no calibration"):
        rk.calibrate_ratings(space, tables, fit)
    full = {**fit, **{(b, c): (1.0, 0.0) for b in (0, 2, 3) for c in range(len(space.blocks[b].cells))}}
    cal = rk.calibrate_ratings(space, tables, full)
    np.testing.assert_allclose(cal[1]["loss"], truth)  # the cells now share the stand-alone scale
    np.testing.assert_allclose(cal[1]["macs"], tables[1]["macs"])
    assert (tables[1]["loss"] == _table(space, 1)["loss"]).all()  # the input tables are not changed
    # an uninformative cell (slope <= 0) keeps its order with a tiny positive slope
    flipped = units.assign(val_loss=np.where(units["cell"] == 0, 1.0 - units["loss"], units["val_loss"]))
    a, _ = rk.fit_cell_calibration(flipped)[(1, 0)]
    assert 0 < a < 1e-2
    with pytest.raises(ValueError, match="at least 2"):
        rk.fit_cell_calibration(units.groupby("cell").head(1))


def test_loo_calibration_fits_without_the_candidate_itself():
    """Leave-one-candidate-out: each candidate's rating mapped by lines fitted on the others (its seed duplicates
    left out too), against a plain refit per candidate; exact where each cell is an affine map of the truth."""
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for b in (0, 1):
        for cell, (a, c) in enumerate(((0.1, 0.2), (0.3, 0.1))):
            for j in range(4):
                r = float(rng.uniform(1, 2))
                for seed in ((0, 1) if j == 0 else (0,)):
                    rows.append({"block": b, "cell": cell, "candidate": f"b{b}c{cell}n{j}", "seed": seed, "loss": r,
                                 "val_loss": a * r + c + (0.01 * seed if b == 1 else 0.0)})
    units = pd.DataFrame(rows)
    loo = rk.loo_calibrated(units)
    exact = units["block"] == 0
    np.testing.assert_allclose(loo[exact], units["val_loss"][exact])
    for j in np.flatnonzero(~exact):
        u = units.iloc[j]
        rest = units[(units["block"] == u["block"]) & (units["candidate"] != u["candidate"])]
        a, c = rk.fit_cell_calibration(rest)[(int(u["block"]), int(u["cell"]))]
        assert loo[j] == pytest.approx(a * u["loss"] + c)
    assert rk.stratified_tau(-loo, -units["val_loss"], units["block"]) > rk.stratified_tau(
        -units["loss"], -units["val_loss"], units["block"])  # the cells now share one scale


def test_train_block_candidate_channels_last_matches_nchw(space):
    torch.set_num_threads(1)
    i = 3
    cand = str(space.candidates(i)[7])
    torch.manual_seed(1)
    x = torch.randn(48, space.blocks[i].in_chs, 4, 4)
    t = torch.randn(48, space.blocks[i].out_chs, 4, 4)
    tr, va = (x[:32], t[:32]), (x[32:], t[32:])
    a = rk.train_block_candidate(space, i, cand, tr, va, steps=10, lr=0.01, batch_size=16, seed=0)
    b = rk.train_block_candidate(space, i, cand, tr, va, steps=10, lr=0.01, batch_size=16, seed=0, channels_last=False)
    assert a["channels_last"] and not b["channels_last"]
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)  # the same training up to float rounding


def test_calibration_candidates_spread_over_each_cell(space):
    t = _table(space, 1)
    chosen = rk.calibration_candidates(space, 1, t, 3)
    cells = {c: space.parse(1, c).cell for c in chosen}
    assert sorted(cells.values()) == [0, 0, 0, 1, 1, 1]
    for cell in (0, 1):
        mine = t[[space.parse(1, str(c)).cell == cell for c in t.index]]["loss"]
        picked = sorted(t.at[c, "loss"] for c in chosen if cells[c] == cell)
        assert picked[0] == mine.min() and picked[-1] == mine.max()  # the best and the worst of the cell
    assert rk.calibration_candidates(space, 0, _table(space, 0), 50) == [str(c) for c in _table(space, 0).sort_values(
        "loss").index if space.parse(0, str(c)).cell == 0] + [str(c) for c in _table(space, 0).sort_values(
            "loss").index if space.parse(0, str(c)).cell == 1]  # fewer than asked: all of them, best first


@pytest.mark.slow
def test_rate_stage_calibrates_cells_and_resumes(tmp_path, capsys):
    """rate.cell_calibration=2: two stand-alone units per cell, the raw tables kept, each cell's ratings mapped by its
    line (order within a cell unchanged); a rerun after a lost unit trains only that one; search runs on the result."""
    import pandas as pd

    from dna_fast import train
    from dna_fast.config import ConfigError, load_config

    _tiny_fashion(tmp_path / "data")
    run_dir = tmp_path / "run"
    tiny = [*TINY_STUDY, f"data.root={tmp_path / 'data'}", "rate.cell_calibration=2"]
    assert train.main(["--run-dir", str(run_dir), "--stages", "teacher,distill,rate,search", *tiny]) == 0
    assert "per-cell calibration: 14 of 14 stand-alone units" in capsys.readouterr().out
    cal = json.loads((run_dir / "ratings" / "calibration.json").read_text())
    assert len(cal["lines"]) == 7 and len(cal["units"]) == 14 and cal["steps"] == 3  # dna_mini: 7 cells
    sp = SearchSpace.load("dna_mini")
    for i in range(sp.num_blocks):
        raw = pd.read_parquet(run_dir / "ratings" / "raw" / f"block{i}.parquet")
        new = pd.read_parquet(run_dir / "ratings" / f"block{i}.parquet")
        cells = np.array([sp.parse(i, str(c)).cell for c in raw.index])
        a = np.array([cal["lines"][f"{i}.{c}"][0] for c in cells])
        b = np.array([cal["lines"][f"{i}.{c}"][1] for c in cells])
        np.testing.assert_allclose(new["loss"], a * raw["loss"] + b)
        assert (a > 0).all() and (new["macs"] == raw["macs"]).all()
    assert (run_dir / "search" / "results.json").is_file()
    # a lost unit: the rerun trains only it and calibrates again
    unit = next((run_dir / "ratings" / "calibration" / "units" / "block1").glob("*.json"))
    unit.unlink()
    (run_dir / "ratings" / "calibration.json").unlink()
    assert train.main(["--run-dir", str(run_dir), "--stages", "rate", *tiny]) == 0
    assert "1 of 14 stand-alone units" in capsys.readouterr().out
    again = json.loads((run_dir / "ratings" / "calibration.json").read_text())
    assert again["lines"].keys() == cal["lines"].keys() and unit.is_file()
    with pytest.raises(ConfigError, match="cell_calibration"):
        load_config(None, ["rate.cell_calibration=1"])
