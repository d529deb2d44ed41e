"""``rank_check/results.json`` from the plan and the finished units: per block, per cell and pooled rank statistics of
every predictor (the ratings, and the proxies MACs / params) against stand-alone training, the equal-MACs pairs,
block- and network-level found vs random, seed noise. NumPy / SciPy only (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._stats import (
    MIN_BOOTSTRAP_N,
    _interval,
    _num,
    bootstrap_ci,
    bootstrap_diff_ci,
    count_near_pairs,
    found_vs_random,
    rank_stats,
    seed_noise,
    stratified_tau,
)

COST_METRICS = ("macs", "params")  # the cost proxies scored next to the ratings (bigger predicted better)


def _orient(metric: str, values: Sequence[float]) -> np.ndarray:
    """Predicted quality: minus a rating (lower is better), plus a cost (bigger is better)."""
    v = np.asarray(values, float)
    return v if metric.split(":")[-1] in COST_METRICS else -v


def equal_macs_stats(rows: list[dict], metrics: list[str], truth: np.ndarray, groups: Any, n_boot: int, seed: int,
                     tol: float = 0.1) -> dict[str, Any]:
    """Kendall tau over the pairs of candidates (within one group) whose MACs lie within ``tol`` of each other, for
    every metric, with its bootstrap interval and, for a rating, ``minus_macs`` (paired): the order among
    candidates of about the same cost, which is what a search under a budget needs from a rating."""
    macs = np.array([r["macs"] for r in rows], float)
    return {"pairs": count_near_pairs(macs, groups, tol), "tolerance": tol,
            **_metric_stats(rows, metrics, truth, groups, n_boot, seed, near_tol=tol)}


def block_found_vs_random(plan: dict, blocks: list[dict], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Block-level found vs random (``plan["block_found"]``): per block and budget the found candidate's stand-alone
    losses over seeds against the random candidates' (:func:`found_vs_random`, lower loss = better), and pooled
    over all cases: the mean relative gain ``(random mean - found mean) / random mean`` with a bootstrap interval
    over the cases, and how many cases the found one wins beyond seed noise."""
    bf = plan.get("block_found") or {}
    seeds = plan.get("block_found_seeds", [])
    loss = {(u["block"], u["candidate"], u["seed"]): u["val_loss"] for u in blocks}
    out: dict[str, Any] = {"per_block": {}}
    gains, wins, cases = [], 0, 0
    for b, bcases in bf.items():
        rows = []
        for case in bcases:
            f = [loss[(int(b), case["found"], s)] for s in seeds if (int(b), case["found"], s) in loss]
            rnd = {}
            for c in case["random"]:
                v = [loss[(int(b), c, s)] for s in seeds if (int(b), c, s) in loss]
                if v:
                    rnd[c] = v
            res = found_vs_random([-x for x in f], {c: [-x for x in v] for c, v in rnd.items()}, unit="loss")
            res.update(budget=case["budget"], found_candidate=case["found"], tolerance_used=case["tolerance_used"])
            if res["diff"] is not None:
                cases += 1
                wins += bool(res["beats_random"])
                gains.append(res["diff"] / -res["random_mean"])  # (random loss - found loss) / random loss
            rows.append(res)
        out["per_block"][b] = rows
    out["cases"], out["found_wins"] = cases, wins
    if gains:
        g = np.array(gains)
        lo = hi = float("nan")
        if n_boot > 0 and len(g) >= MIN_BOOTSTRAP_N:
            rng = np.random.default_rng(seed)
            means = g[rng.integers(0, len(g), size=(n_boot, len(g)))].mean(1)
            lo, hi = _interval(means, 0.95)
        out["mean_gain"] = {"value": _num(float(g.mean())), "ci": [_num(lo), _num(hi)],
                            "found_better_in": int((g > 0).sum())}
    return out


def _metric_stats(rows: list[dict], metrics: list[str], truth: np.ndarray, groups: Any, n_boot: int, seed: int,
                  near_tol: float | None = None) -> dict[str, Any]:
    """rank_stats of every metric the rows hold; for a rating also ``minus_macs``: its tau minus the MACs proxy's,
    with a paired bootstrap interval (:func:`bootstrap_diff_ci`, same resamples for both). With ``near_tol``: tau
    only, over the pairs whose MACs lie within ``near_tol`` of each other (:func:`equal_macs_stats`)."""
    near = None if near_tol is None else np.array([r["macs"] for r in rows], float)
    tol = 0.1 if near_tol is None else near_tol
    out = {}
    pred = {}
    for j, m in enumerate(metrics):
        vals = [r.get(m) for r in rows]
        if any(v is None for v in vals):
            continue
        pred[m] = _orient(m, vals)
        if near is None:
            out[m] = rank_stats(pred[m], truth, groups, n_boot, seed + 10 * j)
        else:
            lo, hi = bootstrap_ci(pred[m], truth, "tau", groups, n_boot, seed + 10 * j, near=near, tol=tol)
            out[m] = {"n": len(rows), "tau": _num(stratified_tau(pred[m], truth, groups, near=near, tol=tol)),
                      "tau_ci": [_num(lo), _num(hi)]}
    if "macs" in out:
        for m in out:
            if m in COST_METRICS or out[m]["tau"] is None or out["macs"]["tau"] is None:
                continue
            lo, hi = bootstrap_diff_ci(pred[m], pred["macs"], truth, "tau", groups, n_boot, seed + 7, near=near,
                                       tol=tol)
            out[m]["minus_macs"] = {"tau": _num(out[m]["tau"] - out["macs"]["tau"]), "tau_ci": [_num(lo), _num(hi)]}
    return out


def analyze(plan: dict, blocks: list[dict], networks: dict[str, dict], n_boot: int = 2000, seed: int = 0,
            equal_macs_tolerance: float = 0.1) -> dict[str, Any]:
    """results.json from the plan and the finished units (any subset; ``complete`` says whether all are done).

    Args:
        plan: ``rank_check/plan.json`` (candidates with their ratings and costs, networks with theirs).
        blocks: finished block units (:func:`train_block_candidate` results).
        networks: name -> ``{"acc": ..., "seed": ...}`` of finished network units.
        equal_macs_tolerance: the equal-MACs tau counts pairs whose MACs are within this fraction of each other.
    """
    res: dict[str, Any] = {"orientation": "positive tau / rho = the predictor ranks like stand-alone training "
                                          "(low rating -> low stand-alone loss / high accuracy; proxies: bigger "
                                          "MACs / params -> better)"}
    metrics = plan["block_metrics"]
    # --- block level: primary seed
    first = {(u["block"], u["candidate"]): u for u in blocks if u["seed"] == plan["seed"]}
    per_block: dict[str, Any] = {}
    pooled_rows, pooled_truth, pooled_block, pooled_cell = [], [], [], []
    for b, entries in plan["blocks"].items():
        rows = [{**e, "val_loss": first[(int(b), e["candidate"])]["val_loss"]} for e in entries
                if (int(b), e["candidate"]) in first]
        info: dict[str, Any] = {"planned": len(entries), "done": len(rows)}
        if len(rows) >= 3:
            truth = -np.array([r["val_loss"] for r in rows])
            info["all"] = _metric_stats(rows, metrics, truth, None, n_boot, seed)
            cells = [r["cell"] for r in rows]
            info["within_cells"] = _metric_stats(rows, metrics, truth, cells, n_boot, seed + 1)
            info["equal_macs"] = equal_macs_stats(rows, metrics, truth, None, n_boot, seed + 8, equal_macs_tolerance)
            info["cells"] = {}
            for c in sorted(set(cells)) if len(set(cells)) > 1 else ():
                sub = [r for r in rows if r["cell"] == c]
                if len(sub) >= 3:
                    info["cells"][str(c)] = _metric_stats(sub, metrics, -np.array([r["val_loss"] for r in sub]),
                                                          None, n_boot, seed + 2)
            info["standalone_range"] = [float(min(r["val_loss"] for r in rows)),
                                        float(max(r["val_loss"] for r in rows))]
        noise = {}
        for u in blocks:
            if u["block"] == int(b) and u["candidate"] in plan["noise"].get(b, []):
                noise.setdefault(u["candidate"], []).append(u["val_loss"])
        info["seed_noise"] = seed_noise(noise)
        if info["seed_noise"]["pooled_std"] and len(rows) >= 3:
            sd = float(np.std([r["val_loss"] for r in rows], ddof=1))
            info["spread_over_noise"] = _num(sd / info["seed_noise"]["pooled_std"])
        per_block[b] = info
        pooled_rows += rows
        pooled_truth += [-r["val_loss"] for r in rows]
        pooled_block += [b] * len(rows)
        pooled_cell += [f"{b}.{r['cell']}" for r in rows]
    res["block_level"] = {"per_block": per_block}
    if len(pooled_rows) >= 3:
        t = np.array(pooled_truth)
        res["block_level"]["pooled"] = _metric_stats(pooled_rows, metrics, t, pooled_block, n_boot, seed + 3)
        res["block_level"]["pooled_within_cells"] = _metric_stats(pooled_rows, metrics, t, pooled_cell, n_boot,
                                                                  seed + 4)
        res["block_level"]["pooled_equal_macs"] = equal_macs_stats(pooled_rows, metrics, t, pooled_block, n_boot,
                                                                   seed + 9, equal_macs_tolerance)
    if plan.get("block_found"):
        res["block_found_vs_random"] = block_found_vs_random(plan, blocks, n_boot, seed + 11)
    # --- network level
    net_metrics = plan["network_metrics"]
    nets = plan["networks"]
    rows = [{**nets[n], "acc": networks[f"{n}_s{plan['seed']}"]["acc"]} for n in nets
            if f"{n}_s{plan['seed']}" in networks]
    nl: dict[str, Any] = {"planned": len(nets), "done": len(rows)}
    if len(rows) >= 3:
        acc = np.array([r["acc"] for r in rows])
        nl["all"] = _metric_stats(rows, net_metrics, acc, None, n_boot, seed + 5)
        grouped = [r for r in rows if r.get("group")]
        if len(grouped) >= 2:
            nl["within_matched_groups"] = _metric_stats(grouped, net_metrics, np.array([r["acc"] for r in grouped]),
                                                        [r["group"] for r in grouped], n_boot, seed + 6)
        nl["acc_range"] = [float(acc.min()), float(acc.max())]
    noise = {}
    for name in plan["noise_networks"]:
        vals = [networks[f"{name}_s{s}"]["acc"] for s in plan["noise_seeds_net"] if f"{name}_s{s}" in networks]
        noise[name] = vals
    nl["seed_noise"] = seed_noise(noise)
    res["network_level"] = nl
    # --- found vs random
    fv = plan.get("found_vs_random")
    if fv:
        f = [networks[f"found_s{s}"]["acc"] for s in fv["seeds"] if f"found_s{s}" in networks]
        rnd = {}
        for name in fv["random"]:
            v = [networks[f"{name}_s{s}"]["acc"] for s in fv["seeds"] if f"{name}_s{s}" in networks]
            if v:
                rnd[name] = v
        res["found_vs_random"] = found_vs_random(f, rnd)
        res["found_vs_random"]["macs"] = {"found": fv["found"]["macs"],
                                          **{k: plan["controls"][k]["macs"] for k in fv["random"]}}
    return res
