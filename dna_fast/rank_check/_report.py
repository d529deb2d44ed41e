"""The ranking check as a reader sees it: ``rank_check/report.md`` (:func:`write_section`), the closing lines of a
pipeline run (:func:`closing_lines`), the plots, and ``units.csv`` (:func:`units_table`: every finished unit with
its ratings and costs, from which every statistic can be recomputed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from ._analysis import COST_METRICS
from ._plan import plan_entries
from ._stats import MIN_BOOTSTRAP_N


def _md_cell(text: str) -> str:
    """A table cell's text with its pipes escaped (a multi-layer candidate is ``a|b|c``)."""
    return text.replace("|", "\\|")


def _fmt_stat(s: dict | None, key: str = "tau") -> str:
    """``+0.68 [+0.53, +0.80]``: a statistic (``tau`` or ``rho``) with its interval; ``-`` where there is none."""
    if not s or s.get(key) is None:
        return "-"
    lo, hi = s[f"{key}_ci"]
    ci = f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None else ""
    return f"{s[key]:+.2f}{ci}"


def _fmt_rho(s: dict | None) -> str:
    return _fmt_stat(s, "rho")


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
            for r in rows:  # found_vs_random compares negated losses (higher = better): printed as losses again
                fm = None if r["found"]["mean"] is None else -r["found"]["mean"]
                rm = None if r.get("random_mean") is None else -r["random_mean"]
                L.append(f"| {b} | {r['budget']} | {_md_cell(r['found_candidate'])} | "
                         f"{f'{fm:.4g}' if fm is not None else '-'} | {f'{rm:.4g}' if rm is not None else '-'} | "
                         f"{r['verdict']} |")
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
