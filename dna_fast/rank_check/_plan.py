"""What the ranking check trains (``rank_check/plan.json``): candidates of each block spread over each cell's rating
range (or drawn at random, or taken from another plan), the seed-noise repeats, block-level found vs random at MACs
budgets, networks spread over MACs plus MACs-matched groups, found vs random controls; each with its predictors
(ratings, MACs, params) from the rating tables.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._analysis import COST_METRICS

_NOT_METRICS = {"macs", "params", "latency_ms", "in_width", "out_width"}


def rating_metrics(table: Any) -> list[str]:
    """The rating columns of a rating table (``loss``, ``rel_loss``, ``rel_l1``, ...: everything but costs)."""
    return [c for c in table.columns if c not in _NOT_METRICS and np.issubdtype(table[c].dtype, np.floating)]


def _unique_rows(table: Any) -> Any:
    """One row per candidate (tables of blocks after cells of several widths repeat each candidate per width)."""
    return table[~table.index.duplicated(keep="first")]


def _cell_shares(space: Any, i: int, m: int) -> tuple[dict[int, list[str]], dict[int, int]]:
    """Block ``i``'s candidates by cell, and how ``m`` of them are shared among the cells: as evenly as they can (a
    cell with fewer candidates than its share gives the rest to the others)."""
    by_cell: dict[int, list[str]] = {}
    for c in space.candidates(i):
        by_cell.setdefault(c.cell, []).append(str(c))
    sizes = {c: len(v) for c, v in by_cell.items()}
    share = dict.fromkeys(sizes, 0)
    left = min(m, sum(sizes.values()))
    while left:  # round robin over cells with room
        for c in sorted(sizes, key=lambda c: (share[c], -sizes[c])):
            if share[c] < sizes[c]:
                share[c] += 1
                left -= 1
                break
    return by_cell, share


def select_random_candidates(space: Any, i: int, m: int, seed: int) -> list[str]:
    """``m`` candidates of block ``i`` drawn uniformly at random (without replacement) within each cell, the cells
    sharing ``m`` as in :func:`select_block_candidates`; no predictor is looked at. A pure function of the seed."""
    import random

    by_cell, share = _cell_shares(space, i, m)
    out = []
    for c, names in by_cell.items():
        rng = random.Random(f"rank-check-random-{seed}-{i}-{c}")
        out += sorted(rng.sample(names, share[c]), key=names.index)
    return out


def select_block_found(space: Any, i: int, table: Any, budgets: int, n_random: int, tolerance: float, seed: int,
                       metric: str = "loss") -> list[dict[str, Any]]:
    """Block-level found vs random: at ``budgets`` MACs budgets of block ``i`` (the quantiles 1/(B+1) .. B/(B+1) of
    its candidates' MACs), the best-rated candidate under the budget (``found``) and ``n_random`` others drawn at
    random among those within ``tolerance`` of its MACs; where fewer are that close, all of them and then the
    nearest in MACs (``tolerance_used`` says how far the farthest one is)."""
    import random

    t = _unique_rows(table)
    macs = t["macs"].astype(float)
    out = []
    for k in range(budgets):
        q = (k + 1) / (budgets + 1)
        budget = float(np.quantile(macs.to_numpy(), q))
        found = str(t.loc[macs <= budget, metric].sort_values(kind="mergesort").index[0])
        fm = float(macs[found])
        others = [str(n) for n in t.index if str(n) != found]
        near = [n for n in others if abs(macs[n] - fm) <= tolerance * fm]
        rng = random.Random(f"rank-check-found-{seed}-{i}-{k}")
        if len(near) >= n_random:
            pick = rng.sample(near, n_random)
        else:
            rest = sorted((n for n in others if n not in near), key=lambda n: (abs(macs[n] - fm), n))
            pick = near + rest[: n_random - len(near)]
        out.append({"budget": int(budget), "quantile": q, "found": found, "random": pick,
                    "tolerance_used": max((abs(macs[n] - fm) / fm for n in pick), default=0.0)})
    return out


def select_block_candidates(space: Any, i: int, table: Any, m: int, metric: str = "loss") -> list[str]:
    """``m`` candidates of block ``i`` spread over each cell's rating range (lowest and highest rated included).

    The cells share ``m`` as evenly as they can (a cell with fewer candidates than its share gives the rest to the
    others); within a cell, the candidates at evenly spaced ranks of ``metric``.
    """
    t = _unique_rows(table)
    by_cell, share = _cell_shares(space, i, m)
    out = []
    for c, names in by_cell.items():
        if not share[c]:
            continue
        ranked = t.loc[names, metric].sort_values(kind="mergesort").index.tolist()
        pos = np.unique(np.round(np.linspace(0, len(ranked) - 1, share[c])).astype(int))
        out += [ranked[p] for p in pos]
    return out


class _CostModel:
    """Summed ratings and MACs / params of whole architectures from the per-block tables (vectorized over a pool)."""

    def __init__(self, space: Any, tables: Sequence[Any], image_size: int, num_classes: int) -> None:
        from .. import cost

        self.space, self.image_size, self.num_classes = space, image_size, num_classes
        self.tables = [_unique_rows(t) for t in tables]
        self.metrics = [m for m in rating_metrics(self.tables[0]) if all(m in t.columns for t in self.tables)]
        self.cands = [space.candidates(i) for i in range(space.num_blocks)]
        self._costs: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self._base: dict[int, Any] = {}
        self._cost = cost

    def costs(self, i: int, in_width: int) -> dict[str, np.ndarray]:
        key = (i, in_width)
        if key not in self._costs:
            self._costs[key] = self._cost.candidate_costs(self.space, i, self.image_size, child_in_chs=in_width)
        return self._costs[key]

    def evaluate(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Rows of candidate indices (P, num_blocks) -> ``macs``, ``params`` and every summed rating metric."""
        p = len(idx)
        out = {k: np.zeros(p) for k in (*COST_METRICS, *self.metrics)}
        width = np.full(p, self.space.stem_out_chs)
        for i in range(self.space.num_blocks):
            col = idx[:, i]
            for w in np.unique(width):
                sel = width == w
                c = self.costs(i, int(w))
                for k in COST_METRICS:
                    out[k][sel] += c[k][col[sel]]
            for m in self.metrics:
                out[m] += self.tables[i][m].to_numpy()[col]
            cells = np.array([c.cell for c in self.cands[i]])[col]
            width = np.array([b.width for b in self.space.blocks[i].cells])[cells]
        for w in np.unique(width):
            if w not in self._base:
                self._base[w] = self._cost.base_cost(self.space, self.image_size, self.num_classes, last_width=int(w))
            sel = width == w
            for k in COST_METRICS:
                out[k][sel] += self._base[w][k]
        return out

    def choices(self, row: np.ndarray) -> list[str]:
        return [str(self.cands[i][j]) for i, j in enumerate(row)]


def select_networks(model: _CostModel, k: int, groups: int, group_size: int, tolerance: float, seed: int,
                    pool: int = 20000) -> dict[str, dict[str, Any]]:
    """``k`` architectures: ``groups`` MACs-matched groups of ``group_size`` (spread over the summed rating) and the
    rest spread evenly over the MACs range of a random pool. name -> {choices, macs, params, group}."""
    rng = np.random.default_rng(seed)
    nb = model.space.num_blocks
    idx = np.stack([rng.integers(0, len(model.cands[i]), size=pool) for i in range(nb)], axis=1)
    idx = np.unique(idx, axis=0)
    ev = model.evaluate(idx)
    macs = ev["macs"]
    used: set[int] = set()
    out: dict[str, dict[str, Any]] = {}

    def add(name: str, r: int, group: str | None) -> None:
        used.add(r)
        out[name] = {"choices": model.choices(idx[r]), "macs": int(macs[r]), "params": int(ev["params"][r]),
                     "group": group}

    groups = min(groups, max(0, k // group_size))
    for g in range(groups):
        target = np.quantile(macs, (g + 1) / (groups + 1))
        near = np.flatnonzero(np.abs(macs - target) <= tolerance * target)
        near = np.array([r for r in near if r not in used])
        if len(near) < group_size:
            continue
        ranked = near[np.argsort(ev["loss" if "loss" in ev else model.metrics[0]][near], kind="mergesort")]
        for j, p in enumerate(np.unique(np.round(np.linspace(0, len(ranked) - 1, group_size)).astype(int))):
            add(f"g{g + 1}_{j + 1}", int(ranked[p]), f"g{g + 1}")
    rest = k - len(out)
    order = np.argsort(macs, kind="mergesort")
    for j, q in enumerate(np.linspace(0.0, 1.0, rest) if rest > 1 else [0.5] * rest):
        pos = int(round(q * (len(order) - 1)))
        step = 1
        while int(order[pos]) in used:  # the nearest unused neighbour in MACs order
            pos = min(len(order) - 1, max(0, pos + step))
            step = -step + (1 if step < 0 else -1)
        add(f"s{j + 1}", int(order[pos]), None)
    return out


def build_plan(space: Any, tables: Sequence[Any], cfg: Any, *, seed: int, image_size: int, num_classes: int,
               found: dict | None, controls: dict[str, dict] | None, compare: dict[str, Sequence[Any]] | None = None,
               candidates_from: dict | None = None) -> dict[str, Any]:
    """Everything the study will train, with the predictors of each unit (written once to ``plan.json``).

    ``candidates_from``: another plan whose block candidates and seed-noise candidates are taken as they are.
    """
    rc = cfg
    metrics = rating_metrics(tables[0])
    compare = compare or {}
    plan: dict[str, Any] = {"seed": seed, "blocks": {}, "noise": {}, "block_metrics": [], "network_metrics": [],
                            "selection": "from " + str(candidates_from.get("source", "a plan")) if candidates_from
                            else getattr(rc, "block_selection", "spread")}
    plan["block_metrics"] = metrics + [f"{lab}:{m}" for lab in compare for m in metrics
                                       if all(m in t.columns for t in compare[lab])] + list(COST_METRICS)

    def entry(i: int, c: str) -> dict[str, Any]:
        t1 = _unique_rows(tables[i])
        e = {"candidate": c, "cell": space.parse(i, c).cell}
        e.update({m: float(t1.at[c, m]) for m in metrics})
        for lab, ts in compare.items():
            u = _unique_rows(ts[i])
            e.update({f"{lab}:{m}": float(u.at[c, m]) for m in metrics if m in u.columns})
        e.update({k: int(t1.at[c, k]) for k in COST_METRICS})
        return e

    for i, t in enumerate(tables):
        t1 = _unique_rows(t)
        if candidates_from:
            chosen = [e["candidate"] for e in candidates_from["blocks"].get(str(i), [])]
        elif plan["selection"] == "random":
            chosen = select_random_candidates(space, i, rc.block_candidates, seed)
        else:
            chosen = select_block_candidates(space, i, t, rc.block_candidates)
        plan["blocks"][str(i)] = [entry(i, c) for c in chosen]
        if candidates_from:
            plan["noise"][str(i)] = list(candidates_from.get("noise", {}).get(str(i), []))[: rc.noise_candidates]
            continue
        # seed noise: the lowest-, middle- and highest-rated of the chosen ones
        pos = np.unique(np.round(np.linspace(0, len(chosen) - 1, min(rc.noise_candidates, len(chosen)))).astype(int))
        ranked = sorted(chosen, key=lambda c: t1.at[c, "loss" if "loss" in metrics else metrics[0]])
        plan["noise"][str(i)] = [ranked[p] for p in pos] if rc.noise_candidates else []
    budgets = getattr(rc, "block_found_budgets", 0)
    if budgets:
        plan["block_found"] = {}
        plan["block_found_seeds"] = [seed + s for s in range(rc.block_found_seeds)]
        plan["extra_entries"] = {}
        for i, t in enumerate(tables):
            cases = select_block_found(space, i, t, budgets, rc.block_found_random, rc.macs_tolerance, seed)
            plan["block_found"][str(i)] = cases
            have = {e["candidate"] for e in plan["blocks"][str(i)]}
            extra = {c: entry(i, c) for case in cases for c in [case["found"], *case["random"]] if c not in have}
            plan["extra_entries"][str(i)] = list(extra.values())
    model = _CostModel(space, tables, image_size, num_classes)
    plan["network_metrics"] = model.metrics + list(COST_METRICS)
    nets = select_networks(model, rc.networks, rc.matched_groups, rc.matched_size, rc.macs_tolerance, seed)
    for e in nets.values():
        idx = np.array([[model.space.candidate_index(i, model.space.parse(i, c)) for i, c in enumerate(e["choices"])]])
        ev = model.evaluate(idx)
        e.update({m: float(ev[m][0]) for m in model.metrics})
    plan["networks"] = nets
    plan["noise_networks"] = list(nets)[: rc.noise_networks]
    plan["noise_seeds_net"] = [seed + s for s in range(2)]
    plan["controls"] = {}
    if found is not None and rc.found_random:
        ctl = dict(controls or {})
        for e in [found, *ctl.values()]:
            idx = np.array([[space.candidate_index(i, space.parse(i, c)) for i, c in enumerate(e["choices"])]])
            ev = model.evaluate(idx)
            e.update({m: float(ev[m][0]) for m in model.metrics})
        plan["controls"] = ctl
        plan["found_vs_random"] = {"found": found, "random": list(ctl), "seeds": [seed + s for s in
                                                                                  range(rc.found_seeds)]}
    return plan


def plan_entries(plan: dict) -> dict[tuple[int, str], dict]:
    """(block, candidate) -> the plan's entry (ratings and costs) of every candidate any block unit trains."""
    out = {}
    for key in ("blocks", "extra_entries"):
        for b, entries in (plan.get(key) or {}).items():
            for e in entries:
                out.setdefault((int(b), e["candidate"]), e)
    return out


def attach_compare(plan: dict, compare: dict[str, Sequence[Any]] | None) -> dict:
    """The plan with the ratings of other runs (label -> their rating tables) as extra block-level predictors
    ``label:metric`` (the same candidates; e.g. a supernet distilled with another ``distill.sampling``)."""
    if not compare:
        return plan
    plan = json.loads(json.dumps(plan))
    metrics = [m for m in plan["block_metrics"] if ":" not in m and m not in COST_METRICS]
    for lab, tables in compare.items():
        us = [_unique_rows(t) for t in tables]
        new = [f"{lab}:{m}" for m in metrics if all(m in u.columns for u in us)]
        for key in ("blocks", "extra_entries"):
            for b, entries in (plan.get(key) or {}).items():
                for e in entries:
                    e.update({k: float(us[int(b)].at[e["candidate"], k.split(":", 1)[1]]) for k in new})
        plan["block_metrics"] = [m for m in plan["block_metrics"] if m not in COST_METRICS and m not in new] + new \
            + [m for m in plan["block_metrics"] if m in COST_METRICS]
    return plan
