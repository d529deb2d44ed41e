"""The ranking check's statistics: Kendall's tau-b and Spearman's rho (plain and stratified: only pairs within one
group count, or only pairs of about equal cost), percentile-bootstrap intervals (stratified, paired for a difference
of two predictors), seed noise, and found vs random beyond seed noise.

NumPy and SciPy only (no torch), so the study's numbers can be recomputed from ``units.csv`` anywhere. Each function
is compared with SciPy or a plain loop in tests/test_rank_check.py.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_BOOTSTRAP_N = 5  # smallest group a bootstrap interval is given for


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
