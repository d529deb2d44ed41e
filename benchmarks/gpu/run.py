"""Runs every GPU benchmark of the project and writes the results.

``python -m benchmarks.gpu.run`` (what ``make bench-gpu`` calls, after building the extension with CUDA) collects
every benchmark in ``benchmarks/test_bench_*.py`` marked ``gpu`` (kernels, rating, distillation, data, ...), runs them
with pytest-benchmark and writes

- ``benchmarks/results/<device>-<date>.json``: device, versions, the figures each benchmark reported through
  ``conftest.report`` (speedups, GB/s, ...) and pytest-benchmark's timing statistics;
- ``benchmarks/results/<device>-<date>.md``: the same as markdown tables.

Without a GPU (or without the compiled CUDA kernels) it stops with a clear message; ``--allow-cpu`` runs anyway
(every GPU benchmark then skips, which checks the runner itself). Extra arguments go to pytest (e.g. ``-k dwconv``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")


def _device_slug(info: dict) -> str:
    name = info.get("gpu_name") or "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class _Collect:
    """pytest plugin: remembers each test's outcome."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report) -> None:  # noqa: D401 (pytest hook)
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.nodeid] = report.outcome


def _markdown(doc: dict) -> str:
    lines = [f"# GPU benchmarks: {doc['device']} ({doc['date']})", "",
             f"torch {doc['backend']['torch']}, CUDA {doc['backend']['torch_cuda']}, dna_fast "
             f"{doc['backend']['version']}, kernels for {doc['backend']['cuda_arch_list'] or '-'}", ""]
    if doc["figures"]:
        lines += ["## Reported figures", "", "| benchmark | figures |", "|---|---|"]
        for fig in doc["figures"]:
            rest = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fig.items()
                             if k != "name")
            lines.append(f"| {fig['name']} | {rest} |")
        lines.append("")
    if doc["timings"]:
        lines += ["## pytest-benchmark timings", "", "| benchmark | mean (ms) | median (ms) | rounds |",
                  "|---|---|---|---|"]
        for t in doc["timings"]:
            lines.append(f"| {t['name']} | {t['mean_ms']:.4g} | {t['median_ms']:.4g} | {t['rounds']} |")
        lines.append("")
    lines += ["## Outcomes", ""] + [f"- {k}: {v}" for k, v in sorted(doc["outcomes"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allow-cpu", action="store_true", help="run even without a GPU (benchmarks skip)")
    parser.add_argument("--out", default=RESULTS_DIR, help="results directory")
    args, pytest_args = parser.parse_known_args(argv)

    import pytest  # noqa: PLC0415
    import torch  # noqa: PLC0415

    import dna_fast  # noqa: PLC0415

    info = dna_fast.backend_info()
    if not args.allow_cpu and not (torch.cuda.is_available() and info["cuda_ops"]):
        why = "no CUDA GPU is visible" if not torch.cuda.is_available() else "dna_fast._C was built without CUDA"
        print(f"bench-gpu: {why}; run on a GPU machine with nvcc (or pass --allow-cpu to check the runner)",
              file=sys.stderr)
        return 2

    bench_dir = os.path.join(ROOT, "benchmarks")
    sys.path.insert(0, bench_dir)
    collect = _Collect()
    with tempfile.TemporaryDirectory() as tmp:
        bench_json = os.path.join(tmp, "bench.json")
        rc = pytest.main([bench_dir, "-m", "gpu", "--benchmark-only", f"--benchmark-json={bench_json}", "-q", "-s",
                          "-p", "no:cacheprovider", "-o", "addopts=", *pytest_args], plugins=[collect])
        timings = []
        if os.path.exists(bench_json):
            with open(bench_json) as f:
                for b in json.load(f).get("benchmarks", []):
                    s = b["stats"]
                    timings.append({"name": b["fullname"], "mean_ms": s["mean"] * 1e3, "median_ms": s["median"] * 1e3,
                                    "rounds": s["rounds"]})
    conftest = sys.modules.get("conftest")
    figures = list(getattr(conftest, "RESULTS", []))
    date = datetime.date.today().isoformat()
    doc = {"device": info.get("gpu_name") or "cpu", "date": date, "backend": info, "pytest_exit": int(rc),
           "figures": figures, "timings": timings, "outcomes": collect.outcomes}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{_device_slug(info)}-{date}")
    with open(stem + ".json", "w") as f:
        json.dump(doc, f, indent=1, default=str)
    with open(stem + ".md", "w") as f:
        f.write(_markdown(doc))
    print(f"bench-gpu: wrote {stem}.json and {stem}.md ({len(figures)} figures, {len(timings)} timings, pytest exit "
          f"{int(rc)})")
    return 0 if int(rc) in (0, 5) else int(rc)  # 5: nothing collected/selected


if __name__ == "__main__":
    sys.exit(main())
