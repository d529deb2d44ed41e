"""Re-measure the CPU benchmark table of docs/benchmarks.md: every figure N times on a quiet machine.

For each group of benchmarks (one ``pytest benchmarks/... --benchmark-only`` command, see ``GROUPS``) and each of
``--runs`` runs (default 3): wait until the 1-minute load average is below ``--max-load`` (default 1.0; after
``--load-timeout`` seconds it runs anyway and the row says so), run the command, and parse the ``[bench] name:
key=value, ...`` lines the benchmarks print (``benchmarks/conftest.report``). Every benchmark line becomes one row
of the table: its headline figure (a ratio where there is one) as min / median / max over the runs, the median of
our time and of the baseline's, the goal, and the 1-minute load average at the start of each run.

The raw results (every run, its command, load, start time and output lines) go to
``benchmarks/results/bench_table.json``; a later run with ``-k`` replaces only the groups it ran, so the page can be
refreshed piecewise. The table in docs/benchmarks.md is rewritten between its ``<!-- bench_table:begin -->`` and
``<!-- bench_table:end -->`` markers (the rest of the page is kept).

Usage (from the repository root, the extension built: ``make setup``)::

    .venv/bin/python tools/bench_table.py                 # everything, 3 runs each (about 64 min, see --list)
    .venv/bin/python tools/bench_table.py -k rating       # only the groups whose name contains "rating"
    .venv/bin/python tools/bench_table.py --quick         # one short run of each group (about 16 min), to try it
    .venv/bin/python tools/bench_table.py --list          # the groups, their commands and the time estimate
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _bench import cpu_flags, cpu_model, parse_lines  # noqa: E402  (the [bench] format, beside its writer)

PAGE = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results" / "bench_table.json"
BEGIN, END = "<!-- bench_table:begin -->", "<!-- bench_table:end -->"


@dataclass
class Group:
    """One pytest command and how its ``[bench]`` lines become table rows."""

    name: str
    args: list[str]  # pytest arguments after the interpreter's ``-m pytest``
    stat: list[str]  # the headline field (first one present) shown as min / median / max
    ours: list[tuple[str, str]] = field(default_factory=list)  # (field, format) of our figure: the first present
    base: list[tuple[str, str]] = field(default_factory=list)  # (field, format) of the baseline's figure
    goal: str = ""
    env: dict[str, str] = field(default_factory=dict)
    quick_env: dict[str, str] = field(default_factory=dict)  # added with --quick
    seconds: int = 60  # one run on a quiet 2-core machine (for the estimate)
    quick_seconds: int = 30


_FAST = ["--benchmark-max-time=0.1", "--benchmark-min-rounds=1"]  # --quick: pytest-benchmark's own rounds, short


def _bench(path: str, *more: str) -> list[str]:
    return [f"benchmarks/{path}", "--benchmark-only", "-q", "-s", "-p", "no:cacheprovider", *more]


GROUPS = [
    Group("rating", _bench("test_bench_rating.py", "-k", "cpu_block1"), ["ratio"], [("fast_s", "{:.2f} s")],
          [("naive_s", "{:.1f} s")], ">= 10x", env={"DNA_BENCH_THREAD_COUNTS": "1,2"},
          quick_env={"DNA_BENCH_NAIVE_SAMPLE": "24", "DNA_BENCH_THREAD_COUNTS": "1,2"}, seconds=240,
          quick_seconds=90),
    Group("rating_memory", _bench("test_bench_rating.py", "-k", "memory"), ["ratio"],
          [("four_layers_mb", "{:.0f} MB")], [("two_layers_mb", "{:.0f} MB")], "<= 1.5x", seconds=45,
          quick_seconds=45),
    Group("search", _bench("test_bench_search.py", "-k", "not latency"), ["ms", "s"], [],
          [("plain_dp_ms", "plain DP {:.1f} ms"), ("plain_dp_s", "plain DP {:.2f} s")], "report", seconds=120,
          quick_seconds=60),
    Group("latency", _bench("test_bench_search.py", "-k", "latency"), ["mean_abs_err"],
          [("spearman", "Spearman {:.2f}")], [], "report", seconds=60, quick_seconds=60),
    Group("distill", _bench("test_bench_distill.py", "-k", "cpu"), ["speedup"], [("all_blocks_img_s", "{:.1f} img/s")],
          [("original_img_s", "{:.1f} img/s")], "> 1x (GPU goal: 3x)", seconds=90, quick_seconds=90),
    Group("data", _bench("test_bench_data.py", "-k", "cpu"), ["ratio", "images_per_s"],
          [("dali_img_s", "{:.0f} img/s")], [("torchvision_img_s", "{:.0f} img/s")], "report", seconds=60,
          quick_seconds=40),
    Group("ops", _bench("test_bench_ops.py"), ["speedup"], [("fused_ms", "{:.2f} ms")], [("eager_ms", "{:.2f} ms")],
          ">= 1x (not slower)", seconds=30, quick_seconds=15),
    Group("kernels", _bench("test_bench_kernels.py", "-k", "cpu"), ["speedup"], [("fused_ms", "{:.2f} ms")],
          [("eager_ms", "{:.2f} ms")], ">= 1x (not slower)", seconds=150, quick_seconds=60),
]
LOAD_WAIT_S = 60  # typical wait for the load average to fall below 1 after a 2-thread run


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def wait_for_quiet(max_load: float, timeout: float, poll: float = 10.0) -> tuple[float, float, bool]:
    """Wait until the 1-minute load average is below ``max_load``: (load at the end, seconds waited, reached)."""
    t0 = time.monotonic()
    while True:
        la = load1()
        if la < max_load:
            return la, time.monotonic() - t0, True
        if time.monotonic() - t0 >= timeout:
            return la, time.monotonic() - t0, False
        time.sleep(poll)


def machine() -> dict:
    import torch

    return {"cpu": cpu_model(), "flags": cpu_flags(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}


def run_group(g: Group, runs: int, quick: bool, max_load: float, load_timeout: float, timeout: float,
              python: str) -> list[dict]:
    env = dict(os.environ, **g.env, **(g.quick_env if quick else {}))
    cmd = [python, "-m", "pytest", *g.args, *(_FAST if quick else [])]
    shown = " ".join(f"{k}={v}" for k, v in {**g.env, **(g.quick_env if quick else {})}.items())
    shown = (shown + " " if shown else "") + " ".join(shlex.quote(c) for c in cmd).replace(python, "python", 1)
    out = []
    for r in range(runs):
        la, waited, ok = wait_for_quiet(max_load, load_timeout)
        start = dt.datetime.now(dt.timezone.utc)
        print(f"[bench_table] {g.name} run {r + 1}/{runs}: load {la:.2f} (waited {waited:.0f} s"
              f"{'' if ok else ', load limit NOT reached'}), {start:%H:%M:%S} UTC: {shown}", flush=True)
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            text, rc = p.stdout + p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            got = e.stdout or ""
            text, rc = got.decode(errors="replace") if isinstance(got, bytes) else got, -9
        lines = parse_lines(text)
        wall = time.monotonic() - t0
        status = "ok" if rc == 0 else f"exit {rc}"
        print(f"[bench_table]   {status}, {len(lines)} figures, {wall:.0f} s", flush=True)
        if rc != 0:
            tail = "\n".join(text.splitlines()[-15:])
            print(f"[bench_table]   last lines of the output:\n{tail}", flush=True)
        out.append({"run": r + 1, "start": start.isoformat(timespec="seconds"), "load1": la, "load_ok": ok,
                    "waited_s": round(waited), "wall_s": round(wall, 1), "returncode": rc, "command": shown,
                    "lines": lines})
    return out


def _fmt(fmt: str, v) -> str:
    return fmt.format(v) if isinstance(v, float) else str(v)


def _stat_fmt(name: str, v: float) -> str:
    if name in ("ratio", "speedup"):
        return f"{v:.2f}x"
    if name == "mean_abs_err":
        return f"{v:.1%}"
    if name == "ms":
        return f"{v:.1f} ms"
    if name == "s":
        return f"{v:.3f} s"
    if name == "images_per_s":
        return f"{v:.0f} img/s"
    return f"{v:.4g}"


def table_rows(groups: list[Group], data: dict) -> list[str]:
    rows = ["| what | ours (median) | baseline (median) | min / median / max | goal | runs, 1-min load at start | "
            "date (UTC) |", "|---|---|---|---|---|---|---|"]
    for g in groups:
        res = data.get("groups", {}).get(g.name)
        if not res:
            rows.append(f"| {g.name}: not measured yet | | | | {g.goal} | | |")
            continue
        names: list[str] = []
        values: dict[str, list[dict]] = {}
        for run in res["runs"]:
            for ln in run["lines"]:
                if ln["name"] not in values:
                    names.append(ln["name"])
                values.setdefault(ln["name"], []).append(ln["fields"])
        loads = ", ".join(f"{run['load1']:.2f}{'' if run['load_ok'] else '!'}" for run in res["runs"])
        day = res["runs"][0]["start"][:16].replace("T", " ")
        failed = [run["run"] for run in res["runs"] if run["returncode"] != 0]
        if not names:
            rows.append(f"| {g.name}: no figures (runs failed: {failed}) | | | | {g.goal} | {loads} | {day} |")
            continue
        for name in names:
            fs = values[name]
            stat = next((s for s in g.stat if all(isinstance(f.get(s), float) for f in fs)), None)
            if stat is None:
                continue
            vals = sorted(f[stat] for f in fs)
            med = statistics.median(vals)
            cell = " / ".join(_stat_fmt(stat, v) for v in (vals[0], med, vals[-1]))

            def median_of(specs, fs=fs):
                for key, fmt in specs:
                    if all(isinstance(f.get(key), float) for f in fs):
                        return _fmt(fmt, statistics.median(f[key] for f in fs))
                return ""

            goal = g.goal
            if "target_ms" in fs[0]:
                goal = f"< {fs[0]['target_ms']:.0f} ms"
            elif "target_s" in fs[0]:
                goal = f"< {fs[0]['target_s']:.0f} s"
            note = "" if not failed else f" (runs {failed} failed)"
            rows.append(f"| {name}{note} | {median_of(g.ours)} | {median_of(g.base)} | **{cell}** | {goal} | "
                        f"{len(vals)}: {loads} | {day} |")
    return rows


def _machine_text(m: dict) -> str:
    return f"**{m.get('cpu', '?')}** ({m.get('cpus', '?')} CPUs; {m.get('flags', '?')}; torch {m.get('torch', '?')})"


def render(groups: list[Group], data: dict) -> str:
    present = [g for g in groups if data.get("groups", {}).get(g.name)]
    cmds = "\n".join(f"- `{g.name}`: `{data['groups'][g.name]['runs'][0]['command']}`" for g in present)
    # a refresh with -k re-measures some groups, maybe on another machine: each group names its own
    by_machine: dict[str, list[str]] = {}
    for g in present:
        gm = data["groups"][g.name].get("machine") or data.get("machine", {})
        by_machine.setdefault(_machine_text(gm), []).append(f"`{g.name}`")
    where = "; ".join(f"{', '.join(names)} on {m}" for m, names in by_machine.items())
    head = (f"Measured by `tools/bench_table.py` (last: `{data.get('invocation', 'python tools/bench_table.py')}`): "
            f"{where}. Each row: min / median / max over the runs of its group, each run started once the "
            f"1-minute load average was below {data.get('max_load', 1.0)} (a `!` after a load: the wait timed out "
            "and the run went ahead).")
    return "\n".join([BEGIN, head, "", *table_rows(groups, data), "", "Commands (run from the repository root):", "",
                      cmds, END])


_PAGE_TEMPLATE = """# Benchmarks

Every benchmark in `benchmarks/` checks that the fast path gives the reference's result before it times anything,
and prints its figures on `[bench]` lines. `tools/bench_table.py` runs them several times on a quiet machine and
writes the table below.

{table}
"""


def write_page(groups: list[Group], data: dict, page: Path) -> None:
    table = render(groups, data)
    if page.is_file():
        text = page.read_text()
        if BEGIN in text and END in text:
            a, b = text.index(BEGIN), text.index(END) + len(END)
            text = text[:a] + table + text[b:]
        else:
            text = text.rstrip("\n") + "\n\n" + table + "\n"
    else:
        text = _PAGE_TEMPLATE.format(table=table)
    tmp = page.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(page)


def estimate(groups: list[Group], runs: int, quick: bool) -> float:
    return sum((g.quick_seconds if quick else g.seconds) + LOAD_WAIT_S for g in groups) * runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=None, help="runs per group (default 3; 1 with --quick)")
    ap.add_argument("-k", "--select", action="append", default=[],
                    help="only groups whose name contains this (repeatable; comma-separated allowed)")
    ap.add_argument("--quick", action="store_true",
                    help="short runs (naive rating on 24 candidates, short pytest-benchmark rounds), to try the tool")
    ap.add_argument("--max-load", type=float, default=1.0, help="start a run only below this 1-minute load (1.0)")
    ap.add_argument("--load-timeout", type=float, default=900, help="longest wait for the load, seconds (900)")
    ap.add_argument("--timeout", type=float, default=3600, help="longest run of one group, seconds (3600)")
    ap.add_argument("--page", type=Path, default=PAGE, help="the page to update (docs/benchmarks.md)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="raw results JSON (benchmarks/results/...)")
    ap.add_argument("--list", action="store_true", help="show the groups, commands and time estimate, run nothing")
    args = ap.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    sel = [s for item in args.select for s in item.split(",") if s]
    groups = [g for g in GROUPS if not sel or any(s in g.name for s in sel)]
    if not groups:
        ap.error(f"no group matches {sel}; groups: {', '.join(g.name for g in GROUPS)}")
    est = estimate(groups, runs, args.quick)
    if args.list:
        for g in groups:
            print(f"{g.name:14s} ~{g.quick_seconds if args.quick else g.seconds:4d} s/run  "
                  f"{' '.join(f'{k}={v}' for k, v in g.env.items())} python -m pytest {' '.join(g.args)}")
        print(f"estimated total with {runs} run(s) each, incl. ~{LOAD_WAIT_S} s load waits: {est / 60:.0f} min")
        return 0
    python = sys.executable
    data = json.loads(args.results.read_text()) if args.results.is_file() else {}
    data.setdefault("groups", {})
    invocation = "python tools/bench_table.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    data.update(machine=machine(), max_load=args.max_load, invocation=invocation.strip())
    print(f"[bench_table] {len(groups)} group(s) x {runs} run(s), estimated {est / 60:.0f} min on a quiet 2-core "
          f"machine; {data['machine']['cpu']}", flush=True)
    t0 = time.monotonic()
    for g in groups:
        data["groups"][g.name] = {"runs": run_group(g, runs, args.quick, args.max_load, args.load_timeout,
                                                    args.timeout, python), "quick": args.quick,
                                  "machine": data["machine"]}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.results.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(args.results)
        write_page(GROUPS, data, args.page)  # after every group: an interrupted run keeps what it measured
    print(f"[bench_table] done in {(time.monotonic() - t0) / 60:.1f} min; wrote {args.page} and {args.results}")
    bad = [g.name for g in groups if any(r["returncode"] != 0 for r in data["groups"][g.name]["runs"])]
    if bad:
        print(f"[bench_table] some runs failed: {', '.join(bad)} (see the output above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
