"""The cells study's record (docs/ranking_study.md): what tools/cells_study.sh produced, copied into the repository,
and its summary tables; or the other way round, a study root restored from the record so a later session resumes.

    python tools/cells_report.py save ROOT [OUT]       ROOT -> OUT (default docs/ranking_study/cells)
    python tools/cells_report.py restore OUT ROOT      OUT -> ROOT (teacher, ratings, finished units, plans)

``save`` copies the teacher checkpoint, every variant's ratings / distillation log / cell steps / CPU times, and
each unit set's plan, unit files, results.json, units.csv, report.md and plot; then writes ``summary.md``: the
convergence of the stand-alone ground truth between unit sets trained at different step counts (Kendall tau per
block, on the same candidates) and, per unit set, every rating's pooled tau, its paired difference to MACs, the
within-cells and equal-MACs taus, with the CPU time of each variant's distillation.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT_FILES = ("plan.json", "results.json", "units.csv", "report.md", "blocks.png")


def _copy(src: Path, dst: Path) -> None:
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def _variants(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if (d / "ratings" / "block0.parquet").is_file()
                  and ("_e" in d.name or d.name.endswith("_cal")) and not (d / "rank_check").is_dir())


def _unit_sets(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if (d / "rank_check" / "plan.json").is_file())


def _cpu_seconds(variant: Path) -> float | None:
    """CPU seconds of the distillation up to this variant's epochs (the runs it continued included)."""
    p = variant / "distill" / "times.csv"
    if not p.is_file():
        return None
    with open(p) as f:
        rows = list(csv.DictReader(f))
    return sum(float(r["cpu_s"]) for r in rows) if rows else None


def convergence(a: Path, b: Path, n_boot: int = 2000) -> dict:
    """Kendall tau per block (and pooled) between the stand-alone losses of two unit sets on their common
    (block, candidate, seed) units: does the ground truth's ranking still move with more steps?"""
    from dna_fast import rank_check as rk

    def load(d: Path) -> dict:
        return {(u["block"], u["candidate"], u["seed"]): u for u in rk.collect_units(d / "rank_check")[0]}

    ua, ub = load(a), load(b)
    common = sorted(set(ua) & set(ub))
    out: dict = {"a": a.name, "b": b.name, "units": len(common), "per_block": {}}
    xs = np.array([ua[k]["val_loss"] for k in common])
    ys = np.array([ub[k]["val_loss"] for k in common])
    blocks = np.array([k[0] for k in common])
    for blk in sorted(set(blocks.tolist())):
        m = blocks == blk
        lo, hi = rk.bootstrap_ci(xs[m], ys[m], "tau", None, n_boot, 0)
        out["per_block"][str(blk)] = {"n": int(m.sum()), "tau": rk.kendall_tau(xs[m], ys[m]),
                                      "tau_ci": [lo, hi],
                                      "mean_ratio_b_over_a": float(np.mean(ys[m] / xs[m]))}
    if len(common) > 2:
        out["pooled_tau"] = rk.stratified_tau(xs, ys, blocks)
    out["converged"] = bool(out["per_block"]) and all(v["tau"] >= 0.9 for v in out["per_block"].values())
    return out


# The convergence rule of docs/ranking_study.md (written 2026-12-03 21:07 UTC): the short ground truth converged if
# in every block tau(short, long at another seed) >= tau(long, long at another seed) - SEED_RULE_TOLERANCE.
SEED_RULE = ("dev1248", "dev2496", "dev2496s1")
SEED_RULE_TOLERANCE = 0.05


def _planned_units(unit_set: Path, plan: dict) -> pd.DataFrame:
    """The rows of a unit set's units.csv that the tests score: its planned candidates at the plan's seed (not the
    seed-noise repeats, not the block-level found / random units)."""
    t = pd.read_csv(unit_set / "rank_check" / "units.csv")
    return t[t["roles"].fillna("").str.contains("planned") & (t["seed"] == plan["seed"])].reset_index(drop=True)


def _planned_losses(unit_set: Path) -> pd.Series:
    """Stand-alone val loss of a unit set's planned candidates at its plan's seed, indexed by (block, candidate)."""
    plan = json.loads((unit_set / "rank_check" / "plan.json").read_text())
    return _planned_units(unit_set, plan).set_index(["block", "candidate"])["val_loss"]


def seed_rule(short: Path, long: Path, long_other_seed: Path, tol: float = SEED_RULE_TOLERANCE,
              n_boot: int = 2000) -> dict | None:
    """Per block: tau between the short ground truth and the long one at another seed, against tau between the long
    one's two seeds (the seed-noise ceiling); passes if the first is no lower than the second minus ``tol`` in
    every block. None until all three unit sets have the same candidates finished."""
    from dna_fast import rank_check as rk

    if not all((d / "rank_check" / "units.csv").is_file() for d in (short, long, long_other_seed)):
        return None
    a, b, c = (_planned_losses(d) for d in (short, long, long_other_seed))
    common = a.index.intersection(b.index).intersection(c.index)
    if len(common) < len(b) or len(common) < len(c) or len(common) < 3:
        return None
    out: dict = {"sets": [short.name, long.name, long_other_seed.name], "tolerance": tol, "per_block": {}}
    for blk in sorted({k[0] for k in common}):
        keys = [k for k in common if k[0] == blk]
        xa, xb, xc = (s.loc[keys].to_numpy(float) for s in (a, b, c))
        steps = rk.kendall_tau(xa, xc)
        seeds = rk.kendall_tau(xb, xc)
        out["per_block"][str(blk)] = {"n": len(keys), "steps_tau": steps, "seeds_tau": seeds,
                                      "steps_tau_ci": list(rk.bootstrap_ci(xa, xc, "tau", None, n_boot, 0)),
                                      "seeds_tau_ci": list(rk.bootstrap_ci(xb, xc, "tau", None, n_boot, 0)),
                                      "passes": bool(steps >= seeds - tol)}
    out["passes"] = all(v["passes"] for v in out["per_block"].values())
    return out


def _fmt(s: dict | None, key: str = "tau") -> str:
    if not s or s.get(key) is None:
        return "-"
    lo, hi = s.get(f"{key}_ci", [None, None])
    return f"{s[key]:+.2f}" + (f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None else "")


def summary(root: Path) -> str:
    lines = ["# The cells study: summary (generated by tools/cells_report.py; see ../../ranking_study.md)", ""]
    sets = _unit_sets(root)
    steps = {}
    for d in sets:
        res = json.loads((d / "rank_check" / "results.json").read_text()) if (
            d / "rank_check" / "results.json").is_file() else {}
        steps[d.name] = res.get("block_steps")
    by_candidates: dict[str, list[Path]] = {}
    for d in sets:
        plan = json.loads((d / "rank_check" / "plan.json").read_text())
        key = json.dumps({b: [e["candidate"] for e in es] for b, es in plan["blocks"].items()}, sort_keys=True)
        by_candidates.setdefault(key, []).append(d)
    conv = []
    for group in by_candidates.values():
        group = sorted((d for d in group if steps.get(d.name)), key=lambda d: steps[d.name])  # sets with results
        conv += [c for a, b in zip(group, group[1:]) if (c := convergence(a, b))["units"]]
    if conv:
        lines += ["## Convergence of the ground truth", "",
                  "Kendall tau between the stand-alone losses of the same units trained for two step counts "
                  "(converged: >= 0.9 in every block).", "",
                  "| unit sets | units | " + " | ".join(f"block {b}" for b in conv[0]["per_block"]) + " | converged |",
                  "|---|---:|" + "---:|" * (len(conv[0]["per_block"]) + 1)]
        for c in conv:
            lines.append(f"| {c['a']} vs {c['b']} | {c['units']} | "
                         + " | ".join(_fmt(v) for v in c["per_block"].values()) + f" | {c['converged']} |")
        lines.append("")
    rule = seed_rule(*(root / n for n in SEED_RULE)) if all((root / n).is_dir() for n in SEED_RULE) else None
    if rule:
        short, long, other = rule["sets"]
        lines += ["## The convergence rule of 2026-12-03 21:07 UTC", "",
                  f"Kendall tau between {short} and {other} (fewer steps, another seed) against tau between {long} "
                  f"and {other} (the same steps, two seeds: the seed-noise ceiling); the {short} ground truth counts "
                  f"as converged if the first is at least the second minus {rule['tolerance']} in every block.", "",
                  "| block | units | fewer steps, other seed | two seeds | passes |", "|---|---:|---:|---:|---|"]
        for blk, v in rule["per_block"].items():
            lines.append(f"| {blk} | {v['n']} | {_fmt(v, 'steps_tau')} | {_fmt(v, 'seeds_tau')} | "
                         f"{'yes' if v['passes'] else 'no'} |")
        lines += ["", f"Converged by this rule: **{'yes' if rule['passes'] else 'no'}**.", ""]
        lines += seed_mean_rows(root / long, root / other)
    cpu = {v.name: _cpu_seconds(v) for v in _variants(root)}
    for d in sets:
        p = d / "rank_check" / "results.json"
        if not p.is_file():
            continue
        if (d / "BLIND").is_file():  # a held-out set whose recipe is not settled yet: not even its figures here
            n = len(list((d / "rank_check" / "blocks").glob("block*/*.json")))
            lines += [f"## {d.name}: blinded ({n} units trained; {(d / 'BLIND').read_text().strip()})", ""]
            continue
        res = json.loads(p.read_text())
        bl = res.get("block_level", {})
        st = res.get("status", {})
        lines += [f"## {d.name}: {st.get('done')} of {st.get('total')} units, {res.get('block_steps')} steps", "",
                  "Kendall tau-b against the stand-alone validation loss, pooled over blocks (95 % bootstrap "
                  "intervals); minus MACs: paired difference; equal MACs: pairs within "
                  f"{100 * (bl.get('pooled_equal_macs') or {}).get('tolerance', 0.1):.0f} % MACs "
                  f"({(bl.get('pooled_equal_macs') or {}).get('pairs', 0)} pairs).", "",
                  "| predictor | distill CPU s | pooled | minus MACs | within cells | equal MACs | equal MACs minus "
                  "MACs |", "|---|---:|---:|---:|---:|---:|---:|"]
        metrics = [m for m in res.get("block_metrics", []) if m.endswith(":loss") or m in ("macs", "params")]
        for m in metrics:
            pooled = (bl.get("pooled") or {}).get(m)
            eq = (bl.get("pooled_equal_macs") or {}).get(m)
            c = cpu.get(m.split(":")[0])
            lines.append(f"| {m} | {f'{c:.0f}' if c else '-'} | {_fmt(pooled)} | "
                         f"{_fmt((pooled or {}).get('minus_macs'))} | "
                         f"{_fmt((bl.get('pooled_within_cells') or {}).get(m))} | {_fmt(eq)} | "
                         f"{_fmt((eq or {}).get('minus_macs'))} |")
        lines += calibrated_rows(d, res)
        lines.append("")
        lines += heldout_tests(d, res)
    return "\n".join(lines)


def heldout_tests(unit_set: Path, res: dict, n_boot: int = 2000) -> list[str]:
    """The pre-registered tests of docs/ranking_study.md on a held-out (random) unit set, for its own rating (the
    chosen recipe's): the pooled tau minus MACs (paired interval; beats MACs only if its lower end is above 0), the
    same over the blocks whose calibration lines were fitted on other candidates only (1 and 2), the equal-MACs tau,
    and block-level found vs random (mean relative gain above 0 and better in at least 8 of 12 cases)."""
    from dna_fast import rank_check as rk

    plan = json.loads((unit_set / "rank_check" / "plan.json").read_text())
    p = unit_set / "rank_check" / "units.csv"
    if plan.get("selection") != "random" or not p.is_file():
        return []
    t = _planned_units(unit_set, plan)
    if len(t) < 3:
        return []
    tol = ((res.get("block_level") or {}).get("pooled_equal_macs") or {}).get("tolerance", 0.1)
    out = [f"### {unit_set.name}: the pre-registered tests ({len(t)} planned units at seed {plan['seed']})", "",
           "| test | value | 95 % interval | passes |", "|---|---:|---|---|"]

    def diff(sub: pd.DataFrame, label: str) -> None:
        r, m, y, g = -sub["loss"].to_numpy(float), sub["macs"].to_numpy(float), -sub["val_loss"].to_numpy(float), \
            sub["block"].to_numpy()
        d = rk.stratified_tau(r, y, g) - rk.stratified_tau(m, y, g)
        lo, hi = rk.bootstrap_diff_ci(r, m, y, "tau", g, n_boot)
        out.append(f"| {label}: tau {rk.stratified_tau(r, y, g):+.2f} minus MACs {rk.stratified_tau(m, y, g):+.2f} | "
                   f"{d:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {'yes' if lo > 0 else 'no'} |")

    diff(t, "primary: pooled, all blocks")
    diff(t[t["block"].isin([1, 2])], "blocks 1 and 2 (lines fitted on other candidates only)")
    r, m, y, g = -t["loss"].to_numpy(float), t["macs"].to_numpy(float), -t["val_loss"].to_numpy(float), t["block"]
    eq = rk.stratified_tau(r, y, g, near=m, tol=tol)
    lo, hi = rk.bootstrap_ci(r, y, "tau", g, n_boot, 0, near=m, tol=tol)
    out.append(f"| equal-MACs tau ({rk.count_near_pairs(m, g, tol)} pairs within {tol:.0%}) | {eq:+.2f} | "
               f"[{lo:+.2f}, {hi:+.2f}] | {'yes' if lo > 0 else 'no'} |")
    bf = res.get("block_found_vs_random") or {}
    mg = bf.get("mean_gain") or {}
    if mg:
        lo, hi = mg["ci"]
        ok = lo is not None and lo > 0 and mg["found_better_in"] >= 8
        out.append(f"| block-level found vs random: mean relative gain, better in {mg['found_better_in']} of "
                   f"{bf.get('cases')} cases | {mg['value']:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {'yes' if ok else 'no'} |")
    return out + [""]


def calibrated_rows(unit_set: Path, res: dict, n_boot: int = 2000) -> list[str]:
    """Table rows for every variant's rating with the per-cell calibration estimated leave-one-candidate-out on this
    unit set's own units (rank_check.loo_calibrated): the remedy of issue 24's point 5 scored on candidates it was not
    fitted on. Same columns as the rows above (within cells: unchanged by construction). Development sets only: a
    random (held-out) draw is scored with the lines fitted on the development units (its own ratings)."""
    p = unit_set / "rank_check" / "units.csv"
    if not p.is_file():
        return []
    plan = json.loads((unit_set / "rank_check" / "plan.json").read_text())
    if plan.get("selection") == "random":  # a held-out draw is scored with lines fitted elsewhere, not on itself
        return []
    t = _planned_units(unit_set, plan)
    tol = ((res.get("block_level") or {}).get("pooled_equal_macs") or {}).get("tolerance", 0.1)
    return rating_rows(t, tol, n_boot, calibrated=True)


def rating_rows(t: pd.DataFrame, tol: float, n_boot: int = 2000, calibrated: bool = False) -> list[str]:
    """Summary table rows (pooled tau, minus MACs, equal-MACs tau and its difference to MACs) for every ``*:loss``
    rating column of a unit table (one row per candidate: block, cell, macs, val_loss), and for MACs; with
    ``calibrated`` every rating per-cell calibrated leave-one-candidate-out instead (no MACs row then; nothing
    where a cell has fewer than 3 units)."""
    from dna_fast import rank_check as rk

    if calibrated and t.groupby(["block", "cell"]).size().min() < 3:
        return []
    truth, groups, macs = -t["val_loss"].to_numpy(float), t["block"].to_numpy(), t["macs"].to_numpy(float)
    preds = {m: -t[m].to_numpy(float) for m in t.columns if m.endswith(":loss")}
    if calibrated:
        preds = {m: -rk.loo_calibrated(t.rename(columns={m: "_rating"}), "_rating") for m in preds}
    rows = []
    for m, pred in list(preds.items()) + ([] if calibrated else [("macs", macs)]):
        pooled = rk.rank_stats(pred, truth, groups, n_boot)
        eq_tau = rk.stratified_tau(pred, truth, groups, near=macs, tol=tol)
        elo, ehi = rk.bootstrap_ci(pred, truth, "tau", groups, n_boot, 0, near=macs, tol=tol)
        minus = eq_minus = None
        if m != "macs":
            lo, hi = rk.bootstrap_diff_ci(pred, macs, truth, "tau", groups, n_boot)
            minus = {"tau": pooled["tau"] - rk.stratified_tau(macs, truth, groups), "tau_ci": [lo, hi]}
            dlo, dhi = rk.bootstrap_diff_ci(pred, macs, truth, "tau", groups, n_boot, near=macs, tol=tol)
            eq_minus = {"tau": eq_tau - rk.stratified_tau(macs, truth, groups, near=macs, tol=tol),
                        "tau_ci": [dlo, dhi]}
        label = f"{m}, per-cell calibrated (leave-one-candidate-out)" if calibrated else m
        rows.append(f"| {label} | - | {_fmt(pooled)} | {_fmt(minus)} | - | "
                    f"{_fmt({'tau': eq_tau, 'tau_ci': [elo, ehi]})} | {_fmt(eq_minus)} |")
    return rows


def seed_mean_rows(long: Path, other: Path, tol: float = 0.1, n_boot: int = 2000) -> list[str]:
    """Every rating scored against the mean stand-alone loss of two unit sets of the same candidates and steps at
    two training seeds (the ground truth the 21:07 rule chooses on if the shorter one is not converged): rows as
    :func:`rating_rows`, uncalibrated then calibrated. Empty until both sets have every candidate."""
    if not all((d / "rank_check" / "units.csv").is_file() for d in (long, other)):
        return []
    plan = json.loads((long / "rank_check" / "plan.json").read_text())
    t = _planned_units(long, plan)
    b = _planned_losses(other)
    keys = list(zip(t["block"], t["candidate"]))
    if not all(k in b.index for k in keys):
        return []
    t["val_loss"] = (t["val_loss"].to_numpy(float) + b.loc[keys].to_numpy(float)) / 2
    head = [f"## {long.name} + {other.name}: the mean of two seeds as the ground truth ({len(t)} candidates)", "",
            "| predictor | distill CPU s | pooled | minus MACs | within cells | equal MACs | equal MACs minus MACs |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    return head + rating_rows(t, tol, n_boot) + rating_rows(t, tol, n_boot, calibrated=True) + [""]


def _relink(report: Path) -> None:
    """report.md's links as they resolve beside it (the run's report links rank_check/x.png from the run dir); an
    image not (yet) drawn is left out."""
    if not report.is_file():
        return
    lines = []
    for ln in report.read_text().replace("](rank_check/", "](").splitlines():
        if ln.startswith("![") and "](" in ln and not (report.parent / ln.split("](", 1)[1].rstrip(")")).is_file():
            continue
        lines.append(ln)
    report.write_text("\n".join(lines) + "\n")


def save(root: Path, out: Path) -> None:
    _copy(root / "teacher" / "checkpoints" / "teacher.pth", out / "teacher" / "teacher.pth")
    _copy(root / "teacher" / "teacher" / "metrics.json", out / "teacher" / "metrics.json")
    for v in _variants(root):
        for p in sorted((v / "ratings").glob("block*.parquet")):
            _copy(p, out / "variants" / v.name / "ratings" / p.name)
        for name in ("distill/times.csv", "distill/cell_steps.json", "distill/log.csv", "calibration.json"):
            _copy(v / name, out / "variants" / v.name / name)
    for d in _unit_sets(root):
        blind = (d / "BLIND").is_file()  # a blinded set keeps only what resuming needs: plan, units, ratings
        for name in ("plan.json",) if blind else ROOT_FILES:
            _copy(d / "rank_check" / name, out / "units" / d.name / name)
        _relink(out / "units" / d.name / "report.md")
        for p in sorted((d / "rank_check" / "blocks").glob("block*/*.json")):
            _copy(p, out / "units" / d.name / "blocks" / p.parent.name / p.name)
        _copy(d / "config.yaml", out / "units" / d.name / "config.yaml")
        for p in sorted((d / "ratings").glob("block*.parquet")):  # the plan's own ratings (calibrated ones too)
            _copy(p, out / "units" / d.name / "ratings" / p.name)
        _copy(d / "calibration.json", out / "units" / d.name / "calibration.json")
        _copy(d / "BLIND", out / "units" / d.name / "BLIND")
        if not blind:  # unblinded since the last save: the record must not keep it blinded
            (out / "units" / d.name / "BLIND").unlink(missing_ok=True)
    (out / "summary.md").write_text(summary(root))


def restore(out: Path, root: Path) -> None:
    """A study root from the record: teacher, the variants' ratings and logs, the unit sets' plans and units."""
    for d in ("teacher",):
        _copy(out / d / "teacher.pth", root / d / "checkpoints" / "teacher.pth")
        _copy(out / d / "metrics.json", root / d / "teacher" / "metrics.json")
    for v in sorted((out / "variants").glob("*")):
        for p in v.rglob("*"):
            if p.is_file():
                _copy(p, root / v.name / p.relative_to(v))
    for d in sorted((out / "units").glob("*")):
        _copy(d / "config.yaml", root / d.name / "config.yaml")
        _copy(d / "plan.json", root / d.name / "rank_check" / "plan.json")
        _copy(d / "calibration.json", root / d.name / "calibration.json")
        _copy(d / "BLIND", root / d.name / "BLIND")
        for p in sorted((d / "ratings").glob("block*.parquet")):
            _copy(p, root / d.name / "ratings" / p.name)
        for p in sorted((d / "blocks").glob("block*/*.json")):
            _copy(p, root / d.name / "rank_check" / "blocks" / p.parent.name / p.name)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("save", "restore"):
        print(__doc__)
        return 2
    if argv[0] == "save":
        save(Path(argv[1]), Path(argv[2]) if len(argv) > 2 else Path("docs/ranking_study/cells"))
    else:
        if len(argv) < 3:
            print(__doc__)
            return 2
        restore(Path(argv[1]), Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
