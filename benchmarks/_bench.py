"""The ``[bench]`` line every benchmark prints and the machine every figure is measured on, in one place.

``conftest.report`` writes the lines, ``tools/bench_table.py`` reads them back, and both it and the GPU check
(``benchmarks/gpu/check.py``) describe the machine with the same helpers. Plain Python (no torch), so the GPU check
can import it before anything is built.
"""

from __future__ import annotations

import platform
import re

LINE = re.compile(r"^\[bench\] (?P<name>.+?): (?P<fields>.*)$")


def format_line(name: str, figures: dict) -> str:
    """``[bench] name: a=1.5, b=x`` (floats with 4 significant digits)."""
    body = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    return f"[bench] {name}: {body}"


def parse_fields(text: str) -> dict:
    """``a=1.5, b=x, c=True`` -> {"a": 1.5, "b": "x", "c": True} (numbers as float)."""
    out: dict = {}
    for part in re.split(r", (?=[A-Za-z_][A-Za-z0-9_]*=)", text.strip()):
        k, _, v = part.partition("=")
        if not _:
            continue
        try:
            out[k.strip()] = float(v)
        except ValueError:
            out[k.strip()] = {"True": True, "False": False}.get(v, v)
    return out


def parse_lines(output: str) -> list[dict]:
    """Every ``[bench]`` line of a command's output as {"name": ..., "fields": {...}}."""
    lines = []
    for raw in output.splitlines():
        m = LINE.match(raw.strip())
        if m:
            lines.append({"name": m["name"], "fields": parse_fields(m["fields"])})
    return lines


def _cpuinfo(key: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> str:
    """The vector extensions that decide which kernels run (from /proc/cpuinfo)."""
    flags = _cpuinfo("flags")
    if flags is None:
        return "?"
    have = set(flags.split())
    return " ".join(k for k in ["avx2", "avx512f", "avx512_bf16", "amx_bf16"] if k in have) or "no AVX2"


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages as one string."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"
