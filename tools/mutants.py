"""Mutation check: plant one small bug at a time in a copy of the repository and see whether the tests catch it.

    python tools/mutants.py                     # every mutant; prints a table mutant -> caught / survived
    python tools/mutants.py --only NAME ...     # some of them (names from --list)
    python tools/mutants.py --kind emulator     # only the CUDA kernel mutants (or --kind pytest)
    python tools/mutants.py --list

The mutants are data: one entry each in ``tools/mutants.yaml`` (its header says the fields). Two kinds, one
procedure:

* ``pytest``: the working tree is copied (tracked and untracked, not ignored files; rsync, so a rerun copies only
  what changed) to ``--workdir`` (default ``/tmp/dna_fast_mutants/repo``), whose extension is built there CPU-only
  (``DNA_FAST_CPU_ONLY=1``, incrementally by ninja): this checkout and its ``dna_fast/_C*.so`` are never touched.
  The mutant edits one file of the copy, the extension is rebuilt when the file is C++, the named tests run and the
  file is put back.
* ``emulator``: a CUDA kernel header of the copy's ``csrc/cuda`` is mutated in a private folder, and the named
  emulator suite (``csrc/tests/cudasim/<suite>.cpp``) is built with g++ at -O0 under ASan + UBSan and run
  fail-fast (``CUDASIM_FAIL_FAST=1``); no extension, libtorch or GPU is needed. These run ``--jobs`` at a time.

First every selected test command (pytest selection or emulator suite) runs on the unmutated copy: a mutant only
counts as caught by tests that pass without it (a failing baseline is reported and stops the run). A mutant whose
snippet is not found exactly once is reported ``stale``, never skipped silently.

A mutant is *caught* when its tests fail (or crash, or an emulator suite no longer compiles), *survived* when they
pass. Exit status: 0 when every mutant was caught, 1 otherwise. Run it under ``nice``: the C++ mutants recompile.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFINITIONS = Path(__file__).with_suffix(".yaml")
KINDS = ("pytest", "emulator")


@dataclass(frozen=True)
class Mutant:
    name: str
    kind: str  # "pytest" or "emulator"
    path: str  # relative to the repository root
    old: str  # exact snippet, found once
    new: str
    tests: tuple[str, ...]  # pytest arguments (files, -k expressions), or the one emulator suite
    why: str

    @property
    def native(self) -> bool:
        """A pytest mutant of C++ code: the copy's extension is rebuilt."""
        return self.kind == "pytest" and self.path.startswith("csrc/")


Row = tuple[Mutant, str, float, str]  # mutant, result (caught / survived / stale), seconds, detail


def load_mutants(path: Path = DEFINITIONS) -> list[Mutant]:
    with open(path) as f:
        entries = yaml.safe_load(f)
    mutants = [Mutant(e["name"], e["kind"], e["path"], e["old"], e["new"], tuple(e["tests"]), e["why"])
               for e in entries]
    for m in mutants:
        if m.kind not in KINDS:
            raise SystemExit(f"{path}: mutant {m.name} has kind {m.kind!r}: one of {', '.join(KINDS)}")
        if m.kind == "emulator" and (len(m.tests) != 1 or not m.path.startswith("csrc/cuda/")):
            raise SystemExit(f"{path}: emulator mutant {m.name} needs a csrc/cuda/ path and one suite in tests")
    names = [m.name for m in mutants]
    if len(set(names)) != len(names):
        raise SystemExit(f"{path}: mutant names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    return mutants


def _run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path | None = None) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "w") if log else open(os.devnull, "w") as out:
        rc = subprocess.call(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return rc, time.perf_counter() - t0


def sync_copy(work: Path) -> None:
    """rsync the working tree's tracked and untracked (not ignored) files into ``work`` (mtimes kept: ninja rebuilds
    only what changed)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout
    work.mkdir(parents=True, exist_ok=True)
    if shutil.which("rsync"):
        subprocess.run(["rsync", "-a", "--from0", "--files-from=-", "./", str(work)], cwd=REPO, input=files,
                       check=True)
        return
    for rel in files.decode().split("\0"):
        if rel and (REPO / rel).is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, work / rel)


def build(work: Path, env: dict[str, str], log: Path) -> None:
    rc, sec = _run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], work, env, log)
    if rc != 0:
        raise SystemExit(f"building the CPU-only extension in {work} failed (rc {rc}); see {log}")
    print(f"  built the CPU-only extension in {work} ({sec:.0f} s)", flush=True)


def pytest_cmd(tests: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not gpu", *tests]


def cuda_include() -> str:
    """CUDA's include directory (the emulator suites use its fp16 / bf16 types), or '' when absent."""
    for base in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if base and os.path.exists(os.path.join(base, "include", "cuda_fp16.h")):
            return os.path.join(base, "include")
    return ""


def run_emulated(work: Path, suite: str, mutant: Mutant | None, scratch: Path, log: Path) -> tuple[int | None,
                                                                                                   float, str]:
    """Builds the emulator suite against a private copy of ``csrc/cuda`` (mutated when ``mutant`` is given) and runs
    it. Returns (exit code, seconds, detail); the exit code is None when the suite does not compile."""
    t0 = time.perf_counter()
    d = Path(tempfile.mkdtemp(dir=scratch))
    try:
        shutil.copytree(work / "csrc" / "cuda", d / "cuda")
        if mutant is not None:
            f = d / "cuda" / Path(mutant.path).name
            f.write_text(f.read_text().replace(mutant.old, mutant.new))
        inc = cuda_include()
        exe = d / suite
        cmd = ["g++", "-std=c++20", "-O0", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
               f"-I{d / 'cuda'}", f"-I{work / 'csrc' / 'tests'}", f"-I{work / 'csrc' / 'include'}",
               *(["-isystem", inc] if inc else []), str(work / "csrc" / "tests" / "cudasim" / f"{suite}.cpp"),
               "-o", str(exe)]
        with open(log, "w") as out:
            built = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
        if built != 0:
            last = log.read_text().strip().splitlines()
            return None, time.perf_counter() - t0, last[-1][:100] if last else ""
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", CUDASIM_FAIL_FAST="1")
        with open(log, "a") as out:
            rc = subprocess.call([str(exe)], stdout=out, stderr=subprocess.STDOUT, env=env, timeout=900)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    lines = log.read_text().strip().splitlines()
    flagged = [s for s in lines if "FAILED" in s or "ERROR" in s or "runtime error" in s]
    return rc, time.perf_counter() - t0, (flagged[0] if flagged else lines[-1] if lines else "")[:140]


def _verdict(rc: int | None) -> tuple[str, str]:
    """(result, detail) of a mutant's test run from its exit code (None: the emulator suite did not compile)."""
    if rc == 0:
        return "survived", ""
    if rc is None:
        return "caught", "at compile time"
    return "caught", "" if rc == 1 else f"exit {rc}" if rc > 0 else f"crashed (signal {-rc})"


def run_pytest_mutants(chosen: list[Mutant], work: Path, logs: Path) -> list[Row]:
    env = dict(os.environ, DNA_FAST_CPU_ONLY="1", PYTHONPATH=str(work), OMP_NUM_THREADS="1",
               MAX_JOBS=os.environ.get("MAX_JOBS", "2"), PYTHONDONTWRITEBYTECODE="1", CUDA_VISIBLE_DEVICES="")
    build(work, env, logs / "build.log")
    where = subprocess.run([sys.executable, "-c", "import dna_fast, dna_fast._C; print(dna_fast.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)
    if not where.stdout.startswith(str(work)):
        raise SystemExit(f"the copy's dna_fast is not the one imported there: {where.stdout}{where.stderr}")
    for tests in dict.fromkeys(m.tests for m in chosen):
        rc, sec = _run(pytest_cmd(tests), work, env, logs / "baseline.log")
        print(f"  baseline {' '.join(tests)}: {'pass' if rc == 0 else 'FAIL'} ({sec:.0f} s)", flush=True)
        if rc != 0:
            raise SystemExit(f"the tests fail without any mutant: see {logs / 'baseline.log'}")
    rows = []
    for m in chosen:
        f = work / m.path
        text = f.read_text()
        if text.count(m.old) != 1:
            rows.append((m, "stale", 0.0, f"snippet found {text.count(m.old)} times"))
            print(f"  {m.name}: stale", flush=True)
            continue
        f.write_text(text.replace(m.old, m.new))
        try:
            if m.native:
                build(work, env, logs / f"build-{m.name}.log")
            rc, sec = _run(pytest_cmd(m.tests), work, env, logs / f"{m.name}.log")
        finally:
            f.write_text(text)
            os.utime(f)  # newer than the mutant's object file: the next build recompiles it
        result, detail = _verdict(rc)
        rows.append((m, result, sec, detail))
        print(f"  {m.name}: {result} ({sec:.0f} s)", flush=True)
    if any(m.native for m in chosen):
        build(work, env, logs / "build.log")  # leave the copy unmutated
    return rows


def run_emulator_mutants(chosen: list[Mutant], work: Path, logs: Path, jobs: int) -> list[Row]:
    scratch = Path(tempfile.mkdtemp(prefix="cudasim_mutants_"))
    try:
        suites = list(dict.fromkeys(m.tests[0] for m in chosen))
        with ThreadPoolExecutor(jobs) as pool:
            base = list(pool.map(lambda s: run_emulated(work, s, None, scratch, logs / f"baseline-{s}.log"), suites))
        for s, (rc, sec, why) in zip(suites, base):
            print(f"  baseline {s}: {'pass' if rc == 0 else 'FAIL'} ({sec:.0f} s)", flush=True)
            if rc != 0:
                raise SystemExit(f"the emulator suite {s} fails without any mutant ({why}): see {logs}")

        def one(m: Mutant) -> Row:
            count = (work / m.path).read_text().count(m.old)
            if count != 1:
                return m, "stale", 0.0, f"snippet found {count} times"
            rc, sec, why = run_emulated(work, m.tests[0], m, scratch, logs / f"{m.name}.log")
            result, detail = _verdict(rc)
            return m, result, sec, "; ".join(x for x in (detail, why) if x)

        rows = []
        with ThreadPoolExecutor(jobs) as pool:
            for row in pool.map(one, chosen):
                print(f"  {row[0].name}: {row[1]} ({row[2]:.0f} s)", flush=True)
                rows.append(row)
        return rows
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    p.add_argument("--kind", choices=KINDS, help="run only the mutants of this kind")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--workdir", default="/tmp/dna_fast_mutants/repo", help="where the copy lives")
    p.add_argument("--jobs", type=int, default=2, help="emulator mutants built and run at once")
    args = p.parse_args(argv)
    mutants = load_mutants()
    if args.list:
        for m in mutants:
            print(f"{m.name:30s} {m.kind:8s} {m.path:40s} {m.why}")
        return 0
    unknown = set(args.only or ()) - {m.name for m in mutants}
    if unknown:
        raise SystemExit(f"unknown mutant(s): {', '.join(sorted(unknown))} (see --list)")
    chosen = [m for m in mutants if (not args.only or m.name in args.only) and (not args.kind or m.kind == args.kind)]
    if not chosen:
        raise SystemExit("no mutant selected")
    chosen.sort(key=lambda m: m.native)  # the Python mutants first: each C++ one needs a rebuild
    work = Path(args.workdir).resolve()
    if work == REPO or REPO in work.parents:
        raise SystemExit("--workdir must lie outside the repository")
    logs = work.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"copy: {work}   logs: {logs}", flush=True)
    sync_copy(work)
    rows = []
    emulated = [m for m in chosen if m.kind == "emulator"]
    if emulated:
        rows += run_emulator_mutants(emulated, work, logs, args.jobs)
    tested = [m for m in chosen if m.kind == "pytest"]
    if tested:
        rows += run_pytest_mutants(tested, work, logs)
    print()
    print("| mutant | planted bug | tests | result |")
    print("|---|---|---|---|")
    for m, result, _sec, detail in rows:
        note = f" ({detail})" if detail else ""
        print(f"| `{m.name}` | {m.why} (`{m.path}`) | `{' '.join(m.tests)}` | **{result}**{note} |")
    caught = sum(r[1] == "caught" for r in rows)
    print(f"\n{caught} of {len(rows)} mutants caught")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
