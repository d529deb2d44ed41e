"""Does the rating rank architectures like training them alone would? A two-level check on the user's data.

DNA (Li et al., "Blockwisely Supervised Neural Architecture Search with Knowledge Distillation", CVPR 2020,
arXiv:1911.13053) claims that block-wise distillation rates candidates correctly, so that the search beats random
selection. This module tests the claim on a run directory that holds a teacher, ratings and a search result:

* **Block level.** For each block, M candidates spread over each cell's rating range are trained alone, from fresh
  weights, on the same teacher features as the supernet (Adam, cosine decay), and their validation loss (the
  rating's ``loss`` definition: per-element MSE to the teacher's feature, BN in eval mode) is compared with the
  supernet's ratings. A few candidates are trained with other seeds: the seed noise.
* **Network level.** K architectures (spread over MACs, plus groups of equal MACs) are trained alone with the
  ``retrain`` recipe; their test accuracy is compared with the summed rating. The found architecture and R random
  ones of equal MACs are trained with S seeds each: found vs random beyond seed noise, or not.

Every comparison is reported as Kendall's tau-b and Spearman's rho between the *predicted* and the *measured*
quality, each with a seeded percentile-bootstrap 95 % interval. Orientation: positive = ranks correctly. A rating
(lower is better) predicts a low stand-alone loss / a high accuracy; the proxies MACs and params predict that bigger
is better. Statistics per block, per cell, pooled over blocks (stratified: only pairs within one block count) and
pooled within cells (pairs within one cell), so ratings that rank well inside a cell but not across cells show up.

Plain, testable statistics (:func:`kendall_tau`, :func:`spearman_rho`, :func:`stratified_tau`,
:func:`bootstrap_ci`) are compared with SciPy in the tests. The stage is resumable unit by unit: each stand-alone
model writes its result as it finishes (``rank_check/blocks/...json``, ``rank_check/networks/<name>/metrics.json``)
and a rerun skips it; ``rank_check/results.json``, the plots and ``rank_check/report.md`` are rebuilt after every
unit, so a stopped study still has honest partial results (``"complete": false`` and what remains).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._io import atomic_write_json, atomic_write_text

__all__ = [
    "kendall_tau", "spearman_rho", "stratified_tau", "stratified_rho", "bootstrap_ci", "bootstrap_diff_ci",
    "rank_stats",
    "select_block_candidates", "train_block_candidate", "rating_metrics", "select_networks", "seed_noise",
    "found_vs_random", "analyze", "write_section", "closing_lines", "attach_compare", "COST_METRICS",
]

COST_METRICS = ("macs", "params")
MIN_BOOTSTRAP_N = 5  # smallest group a bootstrap interval is given for
_NOT_METRICS = {"macs", "params", "latency_ms", "in_width", "out_width"}


# ---------------------------------------------------------------------------------------------- statistics
def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[None] if a.ndim == 1 else a


def _pair_sums(x: np.ndarray, y: np.ndarray, near: np.ndarray | None = None, tol: float = 0.1
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise (concordant - discordant, pairs not tied in x, pairs not tied in y) of (B, n) arrays; with ``near``
    (B, n) only the pairs whose ``near`` values are within ``tol`` of each other (relative to the larger) count."""
    x, y = _as_2d(x), _as_2d(y)
    iu = np.triu_indices(x.shape[1], 1)
    dx = np.sign(x[:, :, None] - x[:, None, :])[:, iu[0], iu[1]]
    dy = np.sign(y[:, :, None] - y[:, None, :])[:, iu[0], iu[1]]
    if near is not None:
        m = _as_2d(near)
        a, b = m[:, :, None], m[:, None, :]
        ok = (np.abs(a - b) <= tol * np.maximum(np.abs(a), np.abs(b)))[:, iu[0], iu[1]]
        dx, dy = dx * ok, dy * ok
    return (dx * dy).sum(1), (dx != 0).sum(1).astype(np.float64), (dy != 0).sum(1).astype(np.float64)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two samples (ties in either handled as by ``scipy.stats.kendalltau``); nan if constant."""
    s, nx, ny = _pair_sums(np.asarray(x, float), np.asarray(y, float))
    den = np.sqrt(nx * ny)
    return float(s[0] / den[0]) if den[0] > 0 else float("nan")


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (1..n, ties share their mean rank) along the last axis of a (B, n) array."""
    from scipy.stats import rankdata

    return rankdata(_as_2d(a), method="average", axis=1)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of the average ranks; nan if either sample is constant."""
    return float(_pearson_rows(_ranks(np.asarray(x, float)), _ranks(np.asarray(y, float)))[0])


def _groups(groups: Sequence[Any] | None, n: int) -> list[np.ndarray]:
    if groups is None:
        return [np.arange(n)]
    g = np.asarray([str(v) for v in groups])
    return [np.flatnonzero(g == v) for v in dict.fromkeys(g.tolist())]


def stratified_tau(x: Sequence[float], y: Sequence[float], groups: Sequence[Any] | None = None,
                   near: Sequence[float] | None = None, tol: float = 0.1) -> float:
    """Kendall's tau-b counting only pairs within one group: sum(C - D) / sqrt(sum pairs untied in x * in y).

    With one group it is :func:`kendall_tau`. Pools blocks (whose losses have different scales) or cells. With
    ``near`` (e.g. MACs) only the pairs whose ``near`` values lie within ``tol`` of each other count: the
    equal-MACs tau, where MACs carry no information.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    m = None if near is None else np.asarray(near, float)
    s = nx = ny = 0.0
    for idx in _groups(groups, len(x)):
        if len(idx) > 1:
            a, b, c = _pair_sums(x[idx], y[idx], None if m is None else m[idx], tol)
            s, nx, ny = s + a[0], nx + b[0], ny + c[0]
    return float(s / math.sqrt(nx * ny)) if nx * ny > 0 else float("nan")


def count_near_pairs(near: Sequence[float], groups: Sequence[Any] | None = None, tol: float = 0.1) -> int:
    """Pairs (within one group) whose ``near`` values lie within ``tol`` of each other."""
    m = np.asarray(near, float)
    n = 0
    for idx in _groups(groups, len(m)):
        a, b = m[idx][:, None], m[idx][None, :]
        ok = np.abs(a - b) <= tol * np.maximum(np.abs(a), np.abs(b))
        n += int(np.triu(ok, 1).sum())
    return n


def stratified_rho(x: Sequence[float], y: Sequence[float], groups: Sequence[Any] | None = None) -> float:
    """Spearman's rho per group, averaged with weights n - 1 (groups of one or constant groups left out)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    num = den = 0.0
    for idx in _groups(groups, len(x)):
        if len(idx) > 2:
            r = spearman_rho(x[idx], y[idx])
            if not math.isnan(r):
                num, den = num + (len(idx) - 1) * r, den + len(idx) - 1
    return num / den if den else float("nan")


def _boot_indices(groups: list[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """Per group, (n_boot, len(group)) indices drawn with replacement from that group (a stratified bootstrap)."""
    rng = np.random.default_rng(seed)
    return [idx[rng.integers(0, len(idx), size=(n_boot, len(idx)))] for idx in groups]


def bootstrap_ci(x: Sequence[float], y: Sequence[float], stat: str = "tau", groups: Sequence[Any] | None = None,
                 n_boot: int = 2000, seed: int = 0, level: float = 0.95, near: Sequence[float] | None = None,
                 tol: float = 0.1) -> tuple[float, float]:
    """Percentile bootstrap interval of a rank statistic; pairs are resampled within each group.

    Args:
        stat: ``"tau"`` (:func:`stratified_tau`) or ``"rho"`` (:func:`stratified_rho`).
        n_boot: resamples (0: no interval, nan returned); resamples whose statistic is undefined (all tied) are
            left out. Without a group of at least :data:`MIN_BOOTSTRAP_N` pairs there is no interval (nan):
            resampling 3 or 4 points says nothing about the uncertainty. Smaller groups next to such a group (a
            pooled statistic over cells of 3 and 8 candidates) are resampled too: they add their few pairs.
        seed: the interval is a pure function of the data and the seed.
        near, tol: ``stat="tau"`` over the pairs whose ``near`` values lie within ``tol`` (:func:`stratified_tau`).

    Returns:
        ``(low, high)``.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    boot = _resamples(len(x), stat, groups, n_boot, seed)
    if boot is None:
        return float("nan"), float("nan")
    return _interval(_boot_values(x, y, stat, boot, near, tol), level)


def bootstrap_diff_ci(x1: Sequence[float], x2: Sequence[float], y: Sequence[float], stat: str = "tau",
                      groups: Sequence[Any] | None = None, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                      near: Sequence[float] | None = None, tol: float = 0.1) -> tuple[float, float]:
    """Paired percentile-bootstrap interval of ``stat(x1, y) - stat(x2, y)``: both predictors scored on the same
    resamples, so the interval says whether ``x1`` ranks ``y`` better than ``x2`` beyond the sampling noise (an
    interval above 0) rather than comparing two overlapping intervals. Same rules as :func:`bootstrap_ci`."""
    x1, x2, y = np.asarray(x1, float), np.asarray(x2, float), np.asarray(y, float)
    boot = _resamples(len(y), stat, groups, n_boot, seed)
    if boot is None:
        return float("nan"), float("nan")
    return _interval(_boot_values(x1, y, stat, boot, near, tol) - _boot_values(x2, y, stat, boot, near, tol), level)


def _resamples(n: int, stat: str, groups: Sequence[Any] | None, n_boot: int, seed: int) -> list[np.ndarray] | None:
    if stat not in ("tau", "rho"):
        raise ValueError(f"stat must be 'tau' or 'rho', got {stat!r}")
    gs = [g for g in _groups(groups, n) if len(g) > (1 if stat == "tau" else 2)]
    if n_boot <= 0 or not gs or max(map(len, gs)) < MIN_BOOTSTRAP_N:
        return None
    return _boot_indices(gs, n_boot, seed)


def _boot_values(x: np.ndarray, y: np.ndarray, stat: str, boot: list[np.ndarray],
                 near: Sequence[float] | None = None, tol: float = 0.1) -> np.ndarray:
    """The (stratified) statistic of every resample (nan where undefined)."""
    if near is not None and stat != "tau":
        raise ValueError("only tau can be restricted to pairs of near values")
    m = None if near is None else np.asarray(near, float)
    if stat == "tau":
        s = nx = ny = 0.0
        for b in boot:
            a, c, d = _pair_sums(x[b], y[b], None if m is None else m[b], tol)
            s, nx, ny = s + a, nx + c, ny + d
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(nx * ny > 0, s / np.sqrt(nx * ny), np.nan)
    num = np.zeros(len(boot[0]))
    den = np.zeros(len(boot[0]))
    for b in boot:
        r = _pearson_rows(_ranks(x[b]), _ranks(y[b]))
        ok = ~np.isnan(r)
        num[ok] += (b.shape[1] - 1) * r[ok]
        den[ok] += b.shape[1] - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _interval(vals: np.ndarray, level: float) -> tuple[float, float]:
    vals = vals[~np.isnan(vals)]
    if not len(vals):
        return float("nan"), float("nan")
    q = (1.0 - level) / 2.0
    return float(np.quantile(vals, q)), float(np.quantile(vals, 1.0 - q))


def rank_stats(pred: Sequence[float], truth: Sequence[float], groups: Sequence[Any] | None = None,
               n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``n``, ``tau`` / ``rho`` (stratified by ``groups`` when given) with their 95 % bootstrap intervals."""
    pred, truth = np.asarray(pred, float), np.asarray(truth, float)
    lo, hi = bootstrap_ci(pred, truth, "tau", groups, n_boot, seed)
    rlo, rhi = bootstrap_ci(pred, truth, "rho", groups, n_boot, seed + 1)
    return {"n": int(len(pred)), "tau": _num(stratified_tau(pred, truth, groups)), "tau_ci": [_num(lo), _num(hi)],
            "rho": _num(stratified_rho(pred, truth, groups)), "rho_ci": [_num(rlo), _num(rhi)]}


def _num(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 6)


def seed_noise(values_by_unit: dict[str, Sequence[float]]) -> dict[str, Any]:
    """Seed noise of units trained with several seeds: per-unit std and the pooled std (sqrt of mean variance)."""
    per = {k: {"values": [float(v) for v in vs], "mean": float(np.mean(vs)), "std": float(np.std(vs, ddof=1))}
           for k, vs in values_by_unit.items() if len(vs) >= 2}
    pooled = float(np.sqrt(np.mean([p["std"] ** 2 for p in per.values()]))) if per else None
    return {"units": per, "pooled_std": pooled}


# ---------------------------------------------------------------------------------------------- rating tables
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


def fit_cell_calibration(units: Any, metric: str = "loss", min_units: int = 2) -> dict[tuple[int, int], tuple]:
    """A per-cell affine map of a rating onto the stand-alone loss scale, fitted on stand-alone units.

    Ratings rank well within a cell but the cells of one block can sit on different scales (a depth-2 cell rated
    far above a depth-3 one whose stand-alone losses overlap). For each (block, cell) the least-squares line
    ``val_loss ~ a * rating + b`` over the units of that cell; ``a`` is kept positive (at least 1e-3 of the spread
    ratio) so the order within the cell never changes: only the cells move against each other.

    Args:
        units: a table with columns ``block``, ``cell``, ``val_loss`` and ``metric`` (``units.csv``), one row per
            unit; give only units the evaluation does not contain.
        metric: the rating column.
        min_units: cells with fewer units (or constant ratings) raise.

    Returns:
        ``{(block, cell): (a, b)}``.
    """
    out = {}
    for (b, c), g in units.groupby(["block", "cell"]):
        x, y = g[metric].to_numpy(float), g["val_loss"].to_numpy(float)
        if len(g) < min_units or np.ptp(x) == 0:
            raise ValueError(f"block {b} cell {c}: {len(g)} unit(s) with distinct {metric!r}; the per-cell "
                             f"calibration needs at least {min_units}")
        sx, sy = float(np.std(x)), float(np.std(y))
        a = float(np.cov(x, y, bias=True)[0, 1] / sx ** 2)
        a = max(a, 1e-3 * (sy / sx if sy > 0 else 1.0))
        out[(int(b), int(c))] = (a, float(y.mean() - a * x.mean()))
    return out


def calibrate_ratings(space: Any, tables: Sequence[Any], fit: dict[tuple[int, int], tuple], metric: str = "loss"
                      ) -> list[Any]:
    """Rating tables with ``metric`` mapped cell by cell by :func:`fit_cell_calibration`'s lines (the other columns
    as they were); a block whose cells were not all fitted raises."""
    out = []
    for i, t in enumerate(tables):
        t = t.copy()
        cells = np.array([space.parse(i, str(c)).cell for c in t.index])
        missing = sorted({int(c) for c in cells} - {c for (b, c) in fit if b == i})
        if missing:
            raise ValueError(f"block {i}: no calibration for cell(s) {missing}")
        a = np.array([fit[(i, int(c))][0] for c in cells])
        b = np.array([fit[(i, int(c))][1] for c in cells])
        t[metric] = a * t[metric].to_numpy(float) + b
        out.append(t)
    return out


# ---------------------------------------------------------------------------------------------- block level
def block_features(teacher: nn.Module, loader: Any, blocks: Sequence[int], num_images: int, device: Any
                   ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """block -> (block input, teacher target) for the first ``num_images`` images of ``loader`` (on CPU), for every
    block in ``blocks`` from one pass of the teacher."""
    blocks = sorted(set(int(b) for b in blocks))
    xs: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
    ts: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
    n = 0
    loader.set_epoch(0)
    teacher.eval()
    with torch.no_grad():
        for images, _ in loader:
            images = images.to(device)
            feats = teacher(images, upto=blocks[-1] + 1)
            for i in blocks:
                xs[i].append((images if i == 0 else feats[i - 1]).float().cpu())
                ts[i].append(feats[i].float().cpu())
            n += len(images)
            if n >= num_images:
                break
    return {i: (torch.cat(xs[i])[:num_images], torch.cat(ts[i])[:num_images]) for i in blocks}


def _fresh_block(space: Any, i: int, seed: int) -> nn.Module:
    """Block ``i`` as ``Supernet`` builds it (block 0 with the student stem), freshly initialized from ``seed``."""
    from .nn import ChoiceBlock, StudentStem, resolve_layers

    torch.manual_seed(seed)
    act_layer, norm_layer = resolve_layers(space.act, None)
    stem = StudentStem(space.stem, 3, act_layer, norm_layer) if i == 0 else None
    return ChoiceBlock(space.blocks[i], stem, act_layer=act_layer, norm_layer=norm_layer, drop_path_rate=0.0)


def train_block_candidate(space: Any, i: int, candidate: str, train: tuple[torch.Tensor, torch.Tensor],
                          val: tuple[torch.Tensor, torch.Tensor], *, steps: int, lr: float, batch_size: int,
                          seed: int, device: Any = "cpu") -> dict[str, Any]:
    """Trains one candidate of block ``i`` alone from fresh weights on teacher features; its validation loss.

    Adam (lr with cosine decay to 0 over ``steps``), MSE to the teacher target, batches drawn from a seeded
    permutation of ``train`` epoch after epoch. ``val_loss`` is the rating's ``loss`` definition: total squared
    error / number of target elements, BN in eval mode.
    """
    device = torch.device(device)
    cand = space.parse(i, candidate)
    block = _fresh_block(space, i, seed).to(device)
    params = [p for m in block.path(cand) for p in m.parameters()]
    if getattr(block, "stem", None) is not None:
        params += list(block.stem.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps)))
    x_tr, t_tr = train
    n = len(x_tr)
    gen = torch.Generator().manual_seed(seed)
    order, pos, losses = torch.randperm(n, generator=gen), 0, []
    t0, c0 = time.perf_counter(), time.process_time()
    block.train()
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        b = order[pos : pos + batch_size]
        pos += batch_size
        out = block(x_tr[b].to(device), cand)
        loss = nn.functional.mse_loss(out, t_tr[b].to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"rank_check: block {i} candidate {candidate} diverged (loss {loss.item()}): "
                                     "lower rank_check.block_lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    block.eval()
    sse, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(val[0]), 256):
            out = block(val[0][s : s + 256].to(device), cand)
            t = val[1][s : s + 256].to(device)
            sse += float(((out.float() - t) ** 2).sum())
            count += t.numel()
    tail = losses[-max(1, steps // 10):]
    return {"block": i, "candidate": candidate, "cell": cand.cell, "seed": seed, "steps": steps, "lr": lr,
            "val_loss": sse / count, "train_loss_end": float(np.mean(tail)) if tail else None,
            "seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 2)}


# ---------------------------------------------------------------------------------------------- network level
class _CostModel:
    """Summed ratings and MACs / params of whole architectures from the per-block tables (vectorized over a pool)."""

    def __init__(self, space: Any, tables: Sequence[Any], image_size: int, num_classes: int) -> None:
        from . import cost

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


def found_vs_random(found: Sequence[float], randoms: dict[str, Sequence[float]], unit: str = "points"
                    ) -> dict[str, Any]:
    """Found architecture's accuracies over seeds vs random architectures' (each over seeds).

    Higher is better (give minus the loss of stand-alone blocks, with ``unit="loss"`` for the verdict's wording).

    ``beats_random`` is true only when the found mean is above the random mean by more than twice the standard
    error of that difference (seed noise of the found one plus the spread of the random architectures' means) and
    Welch's t-test of found runs vs all random runs gives p < 0.05 (one-sided).
    """
    from scipy import stats

    f = np.asarray(found, float)
    means = np.array([np.mean(v) for v in randoms.values()]) if randoms else np.array([])
    allr = np.concatenate([np.asarray(v, float) for v in randoms.values()]) if randoms else np.array([])
    res: dict[str, Any] = {"found": {"values": f.tolist(), "mean": _num(f.mean()) if len(f) else None,
                                     "std": _num(f.std(ddof=1)) if len(f) > 1 else None},
                           "random": {k: {"values": [float(x) for x in v], "mean": _num(float(np.mean(v)))}
                                      for k, v in randoms.items()},
                           "random_mean": _num(means.mean()) if len(means) else None,
                           "random_std_of_means": _num(means.std(ddof=1)) if len(means) > 1 else None}
    if len(f) < 2 or len(means) < 2 or len(allr) < 2:
        res.update(diff=None, se=None, p_welch=None, beats_random=None,
                   verdict="not enough runs yet (need >= 2 seeds of the found one and >= 2 random architectures)")
        return res
    diff = float(f.mean() - means.mean())
    se = float(math.sqrt(f.var(ddof=1) / len(f) + means.var(ddof=1) / len(means)))
    with warnings.catch_warnings():  # nearly equal accuracies: scipy warns about precision, the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        t = stats.ttest_ind(f, allr, equal_var=False, alternative="greater")
    beats = bool(diff > 2 * se and t.pvalue < 0.05)
    rank = int((means >= f.mean()).sum())
    fmt = (lambda v: f"{v:+.2f} points") if unit == "points" else (lambda v: f"{v:+.3g} {unit}")
    two_se = f"{2 * se:.2f}" if unit == "points" else f"{2 * se:.3g}"
    what = "architectures" if unit == "points" else "candidates"
    res.update(diff=_num(diff), se=_num(se), p_welch=_num(float(t.pvalue)), beats_random=beats,
               random_at_or_above=rank,
               verdict=(f"found beats random beyond seed noise ({fmt(diff)}, 2 SE = {two_se})" if beats
                        else f"found does NOT beat random beyond seed noise ({fmt(diff)} vs 2 SE = "
                             f"{two_se}; Welch p = {t.pvalue:.2g}; {rank} of {len(means)} random {what} "
                             "at or above it)"))
    return res


# ---------------------------------------------------------------------------------------------- analysis
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
    out: dict[str, Any] = {"pairs": count_near_pairs(macs, groups, tol), "tolerance": tol}
    pred = {}
    for j, m in enumerate(metrics):
        vals = [r.get(m) for r in rows]
        if any(v is None for v in vals):
            continue
        pred[m] = _orient(m, vals)
        lo, hi = bootstrap_ci(pred[m], truth, "tau", groups, n_boot, seed + 10 * j, near=macs, tol=tol)
        out[m] = {"n": len(rows), "tau": _num(stratified_tau(pred[m], truth, groups, near=macs, tol=tol)),
                  "tau_ci": [_num(lo), _num(hi)]}
    if "macs" in pred:
        for m in pred:
            if m in COST_METRICS or out[m]["tau"] is None or out["macs"]["tau"] is None:
                continue
            lo, hi = bootstrap_diff_ci(pred[m], pred["macs"], truth, "tau", groups, n_boot, seed + 7, near=macs,
                                       tol=tol)
            out[m]["minus_macs"] = {"tau": _num(out[m]["tau"] - out["macs"]["tau"]), "tau_ci": [_num(lo), _num(hi)]}
    return out


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


def _metric_stats(rows: list[dict], metrics: list[str], truth: np.ndarray, groups: Any, n_boot: int, seed: int
                  ) -> dict[str, Any]:
    """rank_stats of every metric the rows hold; for a rating also ``minus_macs``: its tau minus the MACs proxy's,
    with a paired bootstrap interval (:func:`bootstrap_diff_ci`, same resamples for both)."""
    out = {}
    pred = {}
    for j, m in enumerate(metrics):
        vals = [r.get(m) for r in rows]
        if any(v is None for v in vals):
            continue
        pred[m] = _orient(m, vals)
        out[m] = rank_stats(pred[m], truth, groups, n_boot, seed + 10 * j)
    if "macs" in out:
        for m in out:
            if m in COST_METRICS or out[m]["tau"] is None or out["macs"]["tau"] is None:
                continue
            lo, hi = bootstrap_diff_ci(pred[m], pred["macs"], truth, "tau", groups, n_boot, seed + 7)
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


# ---------------------------------------------------------------------------------------------- outputs
def _fmt_stat(s: dict | None) -> str:
    if not s or s.get("tau") is None:
        return "-"
    lo, hi = s["tau_ci"]
    ci = f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None else ""
    return f"{s['tau']:+.2f}{ci}"


def _fmt_rho(s: dict | None) -> str:
    if not s or s.get("rho") is None:
        return "-"
    lo, hi = s["rho_ci"]
    ci = f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None else ""
    return f"{s['rho']:+.2f}{ci}"


def _fmt_diffs(stats: dict, metrics: Sequence[str]) -> str:
    return "; ".join(f"{m} {_fmt_stat(stats[m]['minus_macs'])}" for m in metrics
                     if m in stats and stats[m].get("minus_macs"))


def write_section(results: dict, path: str | Path | None = None) -> str:
    """Markdown of ``results`` (tables of tau / rho with 95 % intervals); written to ``path`` when given."""
    L = ["## Ranking check", ""]
    st = results.get("status", {})
    L.append(f"{'Complete' if results.get('complete') else 'PARTIAL'}: {st.get('done', '?')} of "
             f"{st.get('total', '?')} stand-alone trainings finished"
             + ("" if results.get("complete") else f" (remaining: {st.get('remaining', '?')})") + ".")
    L += ["", "Kendall tau-b (95 % bootstrap interval; none for groups of fewer than "
          f"{MIN_BOOTSTRAP_N}) between the predictor and stand-alone training; positive = ranks correctly. Pooled: "
          "pairs within one block (or one cell) only.", ""]
    bl = results.get("block_level", {})
    metrics = results.get("block_metrics", [])
    if bl.get("per_block"):
        L += ["### Block level: rating vs stand-alone validation loss", ""]
        L.append("| block | done | " + " | ".join(metrics) + " | seed std | spread / noise |")
        L.append("|---|---:|" + "---:|" * (len(metrics) + 2))
        for b, info in bl["per_block"].items():
            sn = info.get("seed_noise", {}).get("pooled_std")
            ratio = info.get("spread_over_noise")
            L.append(f"| {b} (all cells) | {info['done']}/{info['planned']} | "
                     + " | ".join(_fmt_stat(info.get("all", {}).get(m)) for m in metrics)
                     + f" | {f'{sn:.3g}' if sn else '-'} | {f'{ratio:.1f}' if ratio else '-'} |")
            L.append(f"| {b} within cells | | " + " | ".join(_fmt_stat(info.get("within_cells", {}).get(m))
                                                        for m in metrics) + " | | |")
            for c, cs in info.get("cells", {}).items():
                L.append(f"| {b} cell {c} | | " + " | ".join(_fmt_stat(cs.get(m)) for m in metrics) + " | | |")
        for key, label in (("pooled", "pooled (all cells)"), ("pooled_within_cells", "pooled within cells"),
                           ("pooled_equal_macs", "pooled, equal-MACs pairs")):
            if bl.get(key):
                L.append(f"| **{label}** | | " + " | ".join(_fmt_stat(bl[key].get(m)) for m in metrics) + " | | |")
        L.append("")
        eq = bl.get("pooled_equal_macs")
        if eq:
            L += [f"Equal-MACs pairs: only the {eq['pairs']} pairs of candidates of one block whose MACs lie within "
                  f"{100 * eq['tolerance']:.0f} % of each other count (the order a search under a budget needs; "
                  "MACs say little there). Per block: " + "; ".join(
                      f"block {b} {_fmt_stat((info.get('equal_macs') or {}).get('loss'))} "
                      f"({(info.get('equal_macs') or {}).get('pairs', 0)} pairs)"
                      for b, info in bl["per_block"].items()) + ".", ""]
        if bl.get("pooled"):
            L += ["Spearman rho, pooled (all cells): " + "; ".join(f"{m} {_fmt_rho(bl['pooled'].get(m))}"
                                                                  for m in metrics), ""]
            for key, label in (("pooled", "pooled (all cells)"), ("pooled_within_cells", "pooled within cells")):
                diffs = _fmt_diffs(bl.get(key) or {}, metrics)
                if diffs:
                    L += [f"Rating tau minus the MACs proxy's, {label} (paired bootstrap; an interval above 0 = "
                          f"ranks better than MACs): {diffs}", ""]
        diffs = _fmt_diffs(bl.get("pooled_equal_macs") or {}, metrics)
        if diffs:
            L += [f"Rating tau minus the MACs proxy's over the equal-MACs pairs (paired bootstrap): {diffs}", ""]
        L += ["![rating vs stand-alone loss](rank_check/blocks.png)", ""]
    bfv = results.get("block_found_vs_random")
    if bfv and bfv.get("per_block"):
        L += ["### Block level: found vs random at equal MACs", "",
              "Per block and MACs budget: the best-rated candidate under the budget against random candidates of "
              "about its MACs, each trained alone with several seeds (stand-alone val loss, lower is better).", "",
              "| block | budget (MACs) | found | found loss | random mean | verdict |", "|---|---:|---|---:|---:|---|"]
        for b, rows in bfv["per_block"].items():
            for r in rows:
                fm = r["found"]["mean"]
                rm = r.get("random_mean")
                L.append(f"| {b} | {r['budget']} | {r['found_candidate']} | {f'{fm:.4g}' if fm is not None else '-'} "
                         f"| {f'{rm:.4g}' if rm is not None else '-'} | {r['verdict']} |")
        g = bfv.get("mean_gain")
        if g:
            lo, hi = g["ci"]
            ci = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None else ""
            L += ["", f"Pooled over {bfv['cases']} cases: mean relative gain of found over random "
                  f"(random loss - found loss) / random loss {g['value']:+.3f}{ci}; found better in "
                  f"{g['found_better_in']} of {bfv['cases']}, beyond seed noise in {bfv['found_wins']}."]
        L.append("")
    nl = results.get("network_level", {})
    nm = results.get("network_metrics", [])
    if nl.get("planned"):
        L += ["### Network level: summed rating vs test accuracy", "",
              f"{nl.get('done', 0)} of {nl.get('planned', 0)} architectures trained.", ""]
        if nl.get("all"):
            L.append("| | " + " | ".join(nm) + " |")
            L.append("|---|" + "---:|" * len(nm))
            L.append("| all | " + " | ".join(_fmt_stat(nl["all"].get(m)) for m in nm) + " |")
            if nl.get("within_matched_groups"):
                L.append("| within MACs-matched groups | " + " | ".join(
                    _fmt_stat(nl["within_matched_groups"].get(m)) for m in nm) + " |")
            L.append("")
            diffs = _fmt_diffs(nl["all"], nm)
            if diffs:
                L += [f"Summed rating tau minus the MACs proxy's (paired bootstrap): {diffs}", ""]
        sn = nl.get("seed_noise", {}).get("pooled_std")
        if sn is not None:
            L += [f"Seed noise of the test accuracy: pooled std {sn:.2f} points; accuracy range "
                  f"{nl.get('acc_range', ['?', '?'])}.", ""]
        L += ["![summed rating vs accuracy](rank_check/networks.png)", ""]
    fv = results.get("found_vs_random")
    if fv:
        L += ["### Found vs random (equal MACs)", ""]
        f = fv["found"]
        L.append(f"Found: {f['mean']} +- {f['std']} % over {len(f['values'])} seed(s); random architectures: mean "
                 f"{fv.get('random_mean')} (std of their means {fv.get('random_std_of_means')}) over "
                 f"{len(fv['random'])} architectures. **{fv['verdict']}**.")
        L.append("")
    text = "\n".join(L)
    if path is not None:
        atomic_write_text(path, text)
    return text


def _judge(s: dict | None, ref: dict | None, what: str, ref_what: str) -> str:
    if not s or s.get("tau") is None:
        return f"{what}: not measured yet"
    lo, hi = s["tau_ci"]
    txt = f"{what}: tau {_fmt_stat(s)} (n={s['n']})"
    if lo is None:
        return txt
    txt += "; above zero" if lo > 0 else "; NOT distinguishable from zero at this size"
    d = s.get("minus_macs")
    if ref_what == "MACs" and d and d["tau_ci"][0] is not None:  # the paired difference decides
        txt += (f"; beats {ref_what} ({_fmt_stat(ref)}; difference {_fmt_stat(d)})" if d["tau_ci"][0] > 0
                else f"; does NOT beat {ref_what} ({_fmt_stat(ref)}) beyond sampling noise "
                     f"(difference {_fmt_stat(d)}, paired bootstrap)")
    elif ref and ref.get("tau") is not None and ref["tau_ci"][1] is not None:
        txt += (f"; beats {ref_what} ({_fmt_stat(ref)})" if lo > ref["tau_ci"][1]
                else f"; does NOT beat {ref_what} ({_fmt_stat(ref)}) beyond the intervals")
    return txt


def closing_lines(results: dict, cfg: Any = None) -> list[str]:
    """The closing lines of a pipeline run with the ranking check: what it shows at its size, and what not."""
    out = ["Ranking check (rank_check/results.json, rank_check/report.md):"]
    st = results.get("status", {})
    if not results.get("complete"):
        out.append(f"  PARTIAL: {st.get('done')} of {st.get('total')} stand-alone trainings done "
                   f"(remaining: {st.get('remaining')}); rerun the same command to continue")
    bl = results.get("block_level", {})
    out.append("  " + _judge((bl.get("pooled") or {}).get("loss"), (bl.get("pooled") or {}).get("macs"),
                             "block level, rating vs stand-alone loss, pooled over blocks", "MACs"))
    out.append("  " + _judge((bl.get("pooled_within_cells") or {}).get("loss"),
                             (bl.get("pooled_within_cells") or {}).get("macs"),
                             "block level, within cells", "MACs"))
    if bl.get("pooled_equal_macs"):
        out.append("  " + _judge(bl["pooled_equal_macs"].get("loss"), bl["pooled_equal_macs"].get("macs"),
                                 "block level, pairs of about equal MACs", "MACs"))
    bfv = results.get("block_found_vs_random")
    if bfv and bfv.get("mean_gain"):
        g = bfv["mean_gain"]
        out.append(f"  block level, found vs random at equal MACs: found better in {g['found_better_in']} of "
                   f"{bfv['cases']} cases (beyond seed noise in {bfv['found_wins']}); mean relative gain "
                   f"{g['value']:+.3f}" + (f" [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}]" if g['ci'][0] is not None
                                            else ""))
    nl = results.get("network_level", {})
    if nl.get("planned", 1):
        out.append("  " + _judge((nl.get("all") or {}).get("loss"), (nl.get("all") or {}).get("macs"),
                                 "network level, summed rating vs accuracy", "MACs"))
    else:
        out.append("  network level: not part of this run (rank_check.networks: 0)")
    sn = (nl.get("seed_noise") or {}).get("pooled_std")
    if sn is not None and nl.get("acc_range"):
        lo, hi = nl["acc_range"]
        out.append(f"  network accuracies span {hi - lo:.2f} points against a seed noise of {sn:.2f} (std)")
    fv = results.get("found_vs_random")
    if fv:
        out.append(f"  found vs random: {fv['verdict']}")
    out.append("  A run this small can show whether the ratings order candidate blocks like training them alone; it "
               "cannot separate whole networks of equal MACs beyond seed noise. The full study: docs/ranking_study.md")
    return out


def plot(results: dict, plan: dict, blocks: list[dict], networks: dict[str, dict], out_dir: Path) -> None:
    """``blocks.png`` (rating vs stand-alone loss per block, coloured by cell) and ``networks.png``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    first = {(u["block"], u["candidate"]): u["val_loss"] for u in blocks if u["seed"] == plan["seed"]}
    nb = len(plan["blocks"])
    fig, axes = plt.subplots(1, nb, figsize=(3.6 * nb, 3.4), squeeze=False)
    for ax, (b, entries) in zip(axes[0], plan["blocks"].items()):
        for c in sorted({e["cell"] for e in entries}):
            pts = [(e["loss"], first[(int(b), e["candidate"])]) for e in entries
                   if e["cell"] == c and (int(b), e["candidate"]) in first]
            if pts:
                ax.scatter(*zip(*pts), s=18, label=f"cell {c}")
        s = results.get("block_level", {}).get("per_block", {}).get(b, {}).get("all", {}).get("loss")
        ax.set_title(f"block {b}: tau {s['tau']:+.2f}" if s and s.get("tau") is not None else f"block {b}")
        ax.set_xlabel("supernet rating (loss)")
        ax.set_ylabel("stand-alone val loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "blocks.png", dpi=110)
    plt.close(fig)
    rows = [(e, networks[f"{n}_s{plan['seed']}"]["acc"]) for n, e in plan["networks"].items()
            if f"{n}_s{plan['seed']}" in networks]
    if rows:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
        for ax, key, label in ((axes[0], "loss", "summed rating (loss)"), (axes[1], "macs", "MACs")):
            ax.scatter([e[key] for e, _ in rows], [a for _, a in rows], s=18,
                       c=["C1" if e.get("group") else "C0" for e, _ in rows])
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy (%)")
        fig.tight_layout()
        fig.savefig(out_dir / "networks.png", dpi=110)
        plt.close(fig)


# ---------------------------------------------------------------------------------------------- the stage
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _unit_name(candidate: str, seed: int) -> str:
    return f"{_SAFE.sub('_', candidate)}_s{seed}.json"


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


def _spread_order(n: int) -> list[int]:
    """0..n-1 ordered so that every prefix is spread over the range: ends first, then bisection (0, n-1, mid, ...)."""
    if n <= 2:
        return list(range(n))
    out, queue = [0, n - 1], [(0, n - 1)]
    while queue:
        a, b = queue.pop(0)
        if b - a >= 2:
            m = (a + b) // 2
            out.append(m)
            queue += [(a, m), (m, b)]
    return out


def _block_order(entries: list[dict]) -> list[dict]:
    """A block's candidates (stored per cell in rating order) interleaved over cells, each cell in spread order."""
    cells: dict[int, list[dict]] = {}
    for e in entries:
        cells.setdefault(e["cell"], []).append(e)
    orders = [[es[k] for k in _spread_order(len(es))] for es in cells.values()]
    return [o[k] for k in range(max(map(len, orders), default=0)) for o in orders if k < len(o)]


def units(plan: dict, noise_seeds: int) -> list[tuple[str, Any]]:
    """The stand-alone trainings in the order they run: cheap block units first, then networks.

    Block units go round-robin over blocks, each block's candidates in spread order (:func:`_block_order`), so a
    study stopped early still covers every block, cell and rating range; then block-level found vs random (seed by
    seed, budget by budget), the seed-noise repeats, and the networks. A unit planned twice runs once.
    ``("block", (block, candidate, seed))`` or ``("net", (name, entry, seed))``.
    """
    s0 = plan["seed"]
    out: list[tuple[str, Any]] = []
    orders = {int(b): _block_order(es) for b, es in plan["blocks"].items()}
    for k in range(max(map(len, orders.values()), default=0)):
        out += [("block", (b, o[k]["candidate"], s0)) for b, o in orders.items() if k < len(o)]
    bf = plan.get("block_found") or {}
    for s in plan.get("block_found_seeds", []):
        for k in range(max(map(len, bf.values()), default=0)):
            for b, cases in bf.items():
                if k < len(cases):
                    out += [("block", (int(b), c, s)) for c in [cases[k]["found"], *cases[k]["random"]]]
    for b, cands in plan["noise"].items():
        out += [("block", (int(b), c, s0 + k)) for c in cands for k in range(1, noise_seeds)]
    fv = plan.get("found_vs_random")
    if fv:
        out += [("net", ("found", fv["found"], fv["seeds"][0]))]
        out += [("net", (n, plan["controls"][n], fv["seeds"][0])) for n in fv["random"]]
    out += [("net", (n, e, s0)) for n, e in plan["networks"].items()]
    if fv:
        for s in fv["seeds"][1:]:
            out += [("net", ("found", fv["found"], s))]
            out += [("net", (n, plan["controls"][n], s)) for n in fv["random"]]
    out += [("net", (n, plan["networks"][n], s)) for n in plan["noise_networks"] for s in plan["noise_seeds_net"][1:]]
    return _dedupe(out)


def _dedupe(todo: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The units in order, each block unit (block, candidate, seed) once (a candidate may be planned twice)."""
    seen: set[tuple] = set()
    out = []
    for kind, spec in todo:
        key = (kind, spec) if kind == "block" else (kind, spec[0], spec[2])
        if key not in seen:
            seen.add(key)
            out.append((kind, spec))
    return out


def plan_entries(plan: dict) -> dict[tuple[int, str], dict]:
    """(block, candidate) -> the plan's entry (ratings and costs) of every candidate any block unit trains."""
    out = {}
    for key in ("blocks", "extra_entries"):
        for b, entries in (plan.get(key) or {}).items():
            for e in entries:
                out.setdefault((int(b), e["candidate"]), e)
    return out


def collect_units(out_dir: Path) -> tuple[list[dict], dict[str, dict]]:
    """The finished units of a ``rank_check/`` folder."""
    blocks = [json.loads(p.read_text()) for p in sorted((out_dir / "blocks").glob("block*/*.json"))]
    nets = {}
    for p in sorted((out_dir / "networks").glob("*/metrics.json")):
        nets[p.parent.name] = json.loads(p.read_text())
    return blocks, nets


def unit_done(out_dir: Path, kind: str, spec: Any) -> bool:
    if kind == "block":
        b, c, s = spec
        return (out_dir / "blocks" / f"block{b}" / _unit_name(c, s)).is_file()
    name, _, s = spec
    return (out_dir / "networks" / f"{name}_s{s}" / "metrics.json").is_file()


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


def units_table(plan: dict, blocks: list[dict]) -> Any:
    """One row per finished block unit: block, cell, candidate, seed, steps, stand-alone val loss, its roles in the
    plan, MACs, params and every rating the plan holds (with ``compare`` runs attached: theirs too), so that every
    statistic can be recomputed from this table alone (``rank_check/units.csv``)."""
    import pandas as pd

    entries = plan_entries(plan)
    s0 = plan["seed"]
    ratings = [m for m in plan["block_metrics"] if m not in COST_METRICS]
    roles: dict[tuple[int, str, int], list[str]] = {}
    for b, es in plan["blocks"].items():
        for e in es:
            roles.setdefault((int(b), e["candidate"], s0), []).append("planned")
    for b, cands in plan["noise"].items():
        for c in cands:
            roles.setdefault((int(b), c, -1), []).append("noise")
    for b, cases in (plan.get("block_found") or {}).items():
        for k, case in enumerate(cases):
            for s in plan.get("block_found_seeds", []):
                roles.setdefault((int(b), case["found"], s), []).append(f"found{k}")
                for c in case["random"]:
                    roles.setdefault((int(b), c, s), []).append(f"random{k}")
    rows = []
    for u in sorted(blocks, key=lambda u: (u["block"], u["candidate"], u["seed"])):
        b, c = u["block"], u["candidate"]
        e = entries.get((b, c), {})
        r = roles.get((b, c, u["seed"]), []) + roles.get((b, c, -1), [])
        rows.append({"block": b, "cell": u["cell"], "candidate": c, "seed": u["seed"], "steps": u.get("steps"),
                     "val_loss": u["val_loss"], "train_loss_end": u.get("train_loss_end"),
                     "seconds": u.get("seconds"), "roles": " ".join(dict.fromkeys(r)),
                     "macs": e.get("macs"), "params": e.get("params"), **{m: e.get(m) for m in ratings}})
    return pd.DataFrame(rows, columns=["block", "cell", "candidate", "seed", "steps", "val_loss", "train_loss_end",
                                       "seconds", "roles", "macs", "params", *ratings])


def refresh(out_dir: Path, plan: dict, noise_seeds: int, n_boot: int, seed: int, extra: dict | None = None,
            plots: bool = True, compare: dict[str, Sequence[Any]] | None = None, equal_macs_tolerance: float = 0.1
            ) -> dict[str, Any]:
    """Rebuilds ``results.json``, ``units.csv``, ``report.md`` and (``plots``) the plots from the finished units
    (with the ratings of ``compare`` runs scored too, see :func:`attach_compare`)."""
    plan = attach_compare(plan, compare)
    blocks, nets = collect_units(out_dir)
    todo = units(plan, noise_seeds)
    done = sum(unit_done(out_dir, k, s) for k, s in todo)
    res = analyze(plan, blocks, nets, n_boot=n_boot, seed=seed, equal_macs_tolerance=equal_macs_tolerance)
    atomic_write_text(out_dir / "units.csv", units_table(plan, blocks).to_csv(index=False))
    res.update(block_metrics=plan["block_metrics"], network_metrics=plan["network_metrics"],
               complete=done == len(todo),
               status={"done": done, "total": len(todo),
                       "remaining": ", ".join(f"{sum(1 for k, s in todo if k == kind and not unit_done(out_dir, k, s))}"
                                              f" {label}" for kind, label in (("block", "block units"),
                                                                              ("net", "networks")))})
    if extra:
        res.update(extra)
    atomic_write_json(out_dir / "results.json", res)
    try:
        if plots:
            plot(res, plan, blocks, nets, out_dir)
    except ImportError:  # matplotlib missing: the tables are the result
        pass
    write_section(res, out_dir / "report.md")
    return res


def _claim_path(out_dir: Path, kind: str, spec: Any) -> Path:
    if kind == "block":
        b, c, s = spec
        return out_dir / "claims" / f"block{b}_{_unit_name(c, s)[:-5]}.claim"
    name, _, s = spec
    return out_dir / "claims" / f"net_{_SAFE.sub('_', name)}_s{s}.claim"


def _claim_holder_alive(text: str) -> bool:
    """Whether the process named by a claim (``pid@host``) still runs; a claim from another host, or one still
    being written, counts as alive."""
    pid, _, host = text.strip().partition("@")
    if not pid.isdigit() or host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    return True


def claim_unit(out_dir: Path, kind: str, spec: Any) -> Path | None:
    """Claims a unit for this process (a file ``rank_check/claims/<unit>.claim`` made with O_EXCL), so that several
    processes can work through one study without training a unit twice. Returns the claim's path, or None when
    another live process holds it. A claim left by a process that died (same host, pid gone) is taken over."""
    p = _claim_path(out_dir, kind, spec)
    p.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                text = p.read_text()
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if _claim_holder_alive(text):
                return None
            p.unlink(missing_ok=True)  # stale: its process died
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}@{socket.gethostname()}")
        return p
    return None


def run_units(out_dir: Path, plan: dict, noise_seeds: int, *, train_block: Callable[[int, str, int], dict],
              train_net: Callable[[str, dict, int], dict], n_boot: int, seed: int, log: Callable[[str], None],
              extra: dict | None = None, plots: bool = True, compare: dict[str, Sequence[Any]] | None = None,
              equal_macs_tolerance: float = 0.1) -> dict[str, Any]:
    """Runs every unit not done yet (each result written as it finishes), refreshing the results after each
    (the plots after every 8th and the last, unless ``plots`` is false).

    Several processes may run this on one folder at once (``rank_check.workers``): each unit is claimed first
    (:func:`claim_unit`) and skipped when another process holds it, so every unit is trained once.
    """
    todo = units(plan, noise_seeds)
    left = [u for u in todo if not unit_done(out_dir, *u)]
    log(f"[rank_check] {len(todo) - len(left)} of {len(todo)} units done before; {len(left)} to run")
    ran = 0
    for kind, spec in left:
        claim = claim_unit(out_dir, kind, spec)
        if claim is None:
            continue  # another worker trains it
        try:
            if unit_done(out_dir, kind, spec):  # finished by another worker since the list was made
                continue
            t0 = time.perf_counter()
            if kind == "block":
                b, c, s = spec
                r = train_block(b, c, s)
                p = out_dir / "blocks" / f"block{b}" / _unit_name(c, s)
                p.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(p, r)
                what = f"block {b} {c} seed {s}: val loss {r['val_loss']:.4g}"
            else:
                name, entry, s = spec
                r = train_net(name, entry, s)
                what = f"network {name} seed {s}: acc {r['acc']:.2f} %"
        finally:
            claim.unlink(missing_ok=True)
        ran += 1
        seconds = time.perf_counter() - t0
        res = refresh(out_dir, plan, noise_seeds, n_boot, seed, extra, plots=plots and ran % 8 == 0, compare=compare,
                      equal_macs_tolerance=equal_macs_tolerance)
        log(f"[rank_check] {res['status']['done']}/{len(todo)} {what} ({seconds:.1f} s)")
    return refresh(out_dir, plan, noise_seeds, n_boot, seed, extra, plots=plots, compare=compare,
                   equal_macs_tolerance=equal_macs_tolerance)
