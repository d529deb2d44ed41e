"""tools/bench_table.py's page: a refresh of some groups on another machine names each group's own machine."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import bench_table as bt  # noqa: E402


def _run(name: str, speedup: float) -> dict:
    return {"run": 1, "command": f"python -m pytest {name}", "load1": 0.5, "load_ok": True, "returncode": 0,
            "start": "2026-12-03T17:39:56+00:00",
            "lines": [{"name": f"{name} row", "fields": {"speedup": speedup, "fused_ms": 1.0, "eager_ms": speedup}}]}


def test_each_group_names_the_machine_it_was_measured_on(tmp_path):
    xeon = {"cpu": "Intel Xeon", "cpus": 2, "flags": "avx2 avx512f", "torch": "2.14.1"}
    epyc = {"cpu": "AMD EPYC", "cpus": 2, "flags": "avx2", "torch": "2.14.1"}
    groups = [g for g in bt.GROUPS if g.name in ("ops", "kernels")]
    data = {"machine": epyc, "invocation": "python tools/bench_table.py -k kernels",
            "groups": {"ops": {"runs": [_run("ops", 1.2)]},  # measured before machines were kept per group
                       "kernels": {"runs": [_run("kernels", 0.9)], "machine": epyc}}}
    data["groups"]["ops"]["machine"] = xeon
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# B\n\nbefore\n\n{bt.BEGIN}\nold\n{bt.END}\n\nafter\n")
    bt.write_page(groups, data, page)
    text = page.read_text()
    assert "before" in text and "after" in text and "old" not in text
    assert "`ops` on **Intel Xeon**" in text and "`kernels` on **AMD EPYC**" in text
    assert "| ops row |" in text and "**0.90x / 0.90x / 0.90x**" in text
    # a group without its own machine falls back to the run's
    del data["groups"]["ops"]["machine"]
    assert "`ops`, `kernels` on **AMD EPYC**" in bt.render(groups, data)
