"""The end of a pipeline run: the short result table, ``summary.json`` and the run's ``report.md``.

Everything here is read back from the run directory (``teacher/metrics.json``, ``retrain/<name>/eval.json`` or
``metrics.json``, ``search/results.json`` and ``search/report.md``), so the summary of a resumed run is the same as
that of an uninterrupted one, and nothing is reported that a stage did not measure.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from ._io import atomic_write_json, atomic_write_text

__all__ = ["collect", "format_table", "write_summary", "write_report"]


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _result(run_dir: Path, name: str) -> dict | None:
    """Accuracy of one retrain run: its evaluation if done, else the retrain's own final metrics."""
    ev = _read(run_dir / "retrain" / name / "eval.json")
    if ev is not None:
        return {"acc": ev["acc"], "top1": ev["raw"]["top1"], "top5": ev["raw"]["top5"],
                "ema_top1": (ev.get("ema") or {}).get("top1"), "ema_top5": (ev.get("ema") or {}).get("top5"),
                "macs": ev.get("macs"), "params": ev.get("params"), "arch_def": ev.get("arch_def"),
                "choices": ev.get("choices")}
    m = _read(run_dir / "retrain" / name / "metrics.json")
    if m is None:
        return None
    return {k: m.get(k) for k in ("acc", "top1", "top5", "ema_top1", "ema_top5", "macs", "params", "arch_def",
                                  "choices")}


def collect(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``summary.json``'s content from the run dir: ``teacher_acc``, ``found``, ``random_control``, ``budget``."""
    run_dir = Path(run_dir)
    teacher = _read(run_dir / "teacher" / "metrics.json") or {}
    plan = _read(run_dir / "retrain" / "plan.json") or {}
    found = _result(run_dir, "found") if "found" in plan else None
    controls = {n: _result(run_dir, n) for n in plan if n.startswith("random_")}
    accs = [r["acc"] for r in controls.values() if r is not None]
    search = _read(run_dir / "search" / "results.json") or {}
    budget = (search.get("budgets") or [{}])[0].get("budget")
    out: dict[str, Any] = {
        "teacher_acc": teacher.get("acc"),
        "found": None if found is None else {
            "arch_def": found["arch_def"], "choices": found["choices"], "macs": found["macs"],
            "params": found["params"], "acc": found["acc"], "top1": found["top1"], "top5": found["top5"],
            "ema_top1": found["ema_top1"], "ema_top5": found["ema_top5"],
        },
        "random_control": {
            "accs": accs,
            "mean": sum(accs) / len(accs) if accs else None,
            "archs": [{"name": n, **({k: r[k] for k in ("arch_def", "macs", "params", "acc")} if r else {})}
                      for n, r in controls.items()],
        },
        "budget": budget,
        "acc_is": "val top-1 % of the EMA weights (raw weights when no EMA is kept)",
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return out


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.2f} %"


def format_table(s: dict[str, Any]) -> str:
    """The short table printed at the end of a run."""
    rows = [("teacher", "val top-1", _pct(s["teacher_acc"]))]
    f = s["found"]
    if f is not None:
        rows.append(("found", "arch_def", " ".join(",".join(stage) for stage in f["arch_def"])))
        rows.append(("found", "MACs / params", f"{f['macs'] / 1e6:.3f} M / {f['params'] / 1e6:.3f} M"))
        rows.append(("found", "val top-1", _pct(f["acc"])))
    rc = s["random_control"]
    for a in rc["archs"]:
        if "acc" in a:
            rows.append((a["name"], "MACs / val top-1", f"{a['macs'] / 1e6:.3f} M / {_pct(a['acc'])}"))
    if rc["accs"]:
        rows.append(("random (mean)", "val top-1", _pct(rc["mean"])))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{'':{w0}}  {'':{w1}}  result".rstrip(), "-" * (w0 + w1 + 4 + 40)]
    lines += [f"{a:{w0}}  {b:{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def _arch_text(arch_def: list[list[str]]) -> str:
    """arch_def as JSON, one stage per line."""
    return "[\n" + ",\n".join("  " + json.dumps(stage) for stage in arch_def) + "\n]"


def write_report(run_dir: str | os.PathLike, s: dict[str, Any]) -> str:
    """``report.md``: the result table, the found architecture, the controls, the search section, the logs."""
    run_dir = Path(run_dir)
    cfg = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    lines = [f"# DNA run: {run_dir.name}", "", f"{s['date']} on {s['machine']}.", ""]
    lines += ["## Result", "", "Accuracies are " + s["acc_is"] + ".", "", "| | val top-1 | MACs | params |",
              "|---|---:|---:|---:|"]
    lines.append(f"| teacher | {_pct(s['teacher_acc'])} | | |")
    f = s["found"]
    if f is not None:
        lines.append(f"| found architecture | {_pct(f['acc'])} | {f['macs'] / 1e6:.3f} M | {f['params'] / 1e6:.3f} M |")
    for a in s["random_control"]["archs"]:
        if "acc" in a:
            lines.append(f"| {a['name']} | {_pct(a['acc'])} | {a['macs'] / 1e6:.3f} M | {a['params'] / 1e6:.3f} M |")
    if s["random_control"]["accs"]:
        lines.append(f"| random (mean of {len(s['random_control']['accs'])}) | {_pct(s['random_control']['mean'])} "
                     "| | |")
    lines.append("")
    if f is not None:
        lines += ["Found architecture (timm arch_def; build it with `dna_fast.models.build` or timm's "
                  "`decode_arch_def`):", "", "```", _arch_text(f["arch_def"]), "```", ""]
        lines += [f"Raw weights: top-1 {_pct(f['top1'])}, top-5 {_pct(f['top5'])}; EMA: top-1 {_pct(f['ema_top1'])}, "
                  f"top-5 {_pct(f['ema_top5'])}.", ""]
    if s["random_control"]["archs"]:
        lines += ["Random controls: architectures drawn uniformly from the space whose MACs are within the "
                  "configured tolerance of the found one's, retrained with the same recipe.", ""]
    sec = run_dir / "search" / "report.md"
    if sec.is_file():
        lines += [sec.read_text().rstrip(), ""]
    sec = run_dir / "rank_check" / "report.md"
    if sec.is_file():
        lines += [sec.read_text().rstrip(), ""]
    logs = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.glob("retrain/*/log.csv"))
    if logs:
        lines += ["## Logs", ""] + [f"- `{p}`" for p in logs] + [""]
    if cfg:
        lines += ["## Config", "", "```yaml", cfg.rstrip(), "```", ""]
    text = "\n".join(lines)
    atomic_write_text(run_dir / "report.md", text)
    return text


def write_summary(ctx: Any) -> dict[str, Any]:
    """Writes ``summary.json`` and ``report.md`` of ``ctx.run_dir``; returns the summary with its ``table``."""
    run_dir = Path(ctx.run_dir)
    s = collect(run_dir)
    atomic_write_json(run_dir / "summary.json", s)
    write_report(run_dir, s)
    return {**s, "table": format_table(s)}
