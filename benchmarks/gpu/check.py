"""One GPU check that fits in minutes: ``bash benchmarks/gpu/check.sh`` (``make gpu-check``).

On a bare GPU machine (its own torch, nvcc, no internet) it runs, in order, each stage with its own time budget and
never stopping at the first failure:

  env         versions of the driver, nvcc, compute-sanitizer, python and torch; the machine and its load
  build       ``setup.py build_ext --inplace`` for one architecture (``--arch``, default 9.0) against the torch
              that is installed, MAX_JOBS = nproc, no downloads
  info        ``dna_fast.backend_info()``: CUDA kernels compiled for the architecture and a GPU visible
  gpu_tests   every test under tests/ marked ``gpu``, then DDP with one process over NCCL (``ddp_smoke.py``)
  benchmarks  every benchmark under benchmarks/ marked ``gpu``, the figures the issue claims first
  sanitizer   the CUDA variants of the kernel tests (tests/test_ops.py, tests/test_*kernel*.py) under
              compute-sanitizer: memcheck, then racecheck; both limited to dna_fast's own kernels

Each step is pass / fail / timeout / skip with the figures it measured. A stage that runs past its budget is killed
with its process group; what it finished is kept (the pytest plugin ``_check_plugin`` writes each result as it
comes) and the next stage starts. One JSON file, one Markdown file and the full log are written to ``$OUT`` when
that is set, else to ``--out`` (default benchmarks/results/); the end of the output says where the time went.

``--dry-run`` runs the same stages on a machine without a GPU, with CPU stand-ins: the build stage imports the
extension already built instead of compiling (it never touches dna_fast/_C*.so), the GPU tests and benchmarks run
and skip, DDP runs over gloo, and the sanitizer stage only collects the kernel tests it would run. ``make test``
runs it (tests/test_gpu_check.py). The exit status is 0 when every stage passed, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _bench import cpu_model, loadavg  # noqa: E402  (shared with tools/bench_table.py)

RESULTS_DIR = ROOT / "benchmarks" / "results"
PLUGIN = "benchmarks.gpu._check_plugin"

# name -> default budget in seconds; the order is the order they run in. The total (--total-budget, 360 s) caps
# the sum: a stage never gets more than what is left of it.
STAGES: dict[str, float] = {
    "env": 20, "build": 150, "info": 30, "gpu_tests": 90, "benchmarks": 110, "sanitizer": 60,
}
TOTAL_BUDGET = 360.0
TEST_TIMEOUT = 45.0  # one gpu test (--test-timeout)
BENCH_TIMEOUT = 75.0  # one gpu benchmark (--bench-timeout)
# The benchmarks behind the project's GPU claims run first (substrings of their test ids, in this order).
# the benchmarks stage's selection: the GPU benchmarks, and the host CPU's bf16 rating benchmark
BENCH_MARKERS = "gpu or host_bf16"
BENCH_FIRST = ["rating_gpu_block1", "test_bench_rating_gpu", "dwconv_bandwidth", "mbconv_layer", "b7_224"]
# pytest-benchmark's own timing loop, kept short: the figures come from the benchmarks' own event timers.
BENCH_OPTS = ["--benchmark-only", "--benchmark-max-time=0.25", "--benchmark-min-rounds=3", "--benchmark-warmup=off"]
# Kernel tests run under compute-sanitizer: their CUDA variants, without torch.compile / opcheck / gradcheck,
# which launch mostly PyTorch's kernels and take minutes when instrumented.
SANITIZE_FILES = ["test_ops.py", "test_*kernel*.py"]  # under the tests folder
SANITIZE_K = "cuda and not compile and not opcheck and not gradcheck"
SANITIZE_EXIT = 97  # compute-sanitizer's exit status when it found an error (--error-exitcode)
STATUS_ORDER = ("fail", "timeout", "skip", "pass")


@dataclass
class Step:
    """One line of the results: what ran, how it ended, how long it took, what it measured."""

    name: str
    status: str  # pass | fail | timeout | skip
    seconds: float = 0.0
    detail: str = ""
    cmd: str = ""
    figures: list = field(default_factory=list)


@dataclass
class StageResult:
    name: str
    budget_s: float
    seconds: float = 0.0
    status: str = "pass"
    steps: list = field(default_factory=list)


class Budget:
    """The time left to a stage: its own budget, cut by what is left of the total."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + max(0.0, seconds)

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


@dataclass
class Run:
    """A finished subprocess: exit status (None when killed at its budget), seconds, the tail of its output."""

    rc: int | None
    seconds: float
    tail: str

    @property
    def timed_out(self) -> bool:
        return self.rc is None


class Context:
    """What every stage needs: the options, the environment of the child processes, the log."""

    def __init__(self, args: argparse.Namespace, log_path: Path, work: Path) -> None:
        self.args = args
        self.dry = args.dry_run
        self.py = args.python
        self.log_path = log_path
        self.work = work  # scratch (event files, pytest-benchmark json)
        self.facts: dict = {}  # filled by the stages: device, versions, backend_info
        self.figures: list = []
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"})
        self.env = env

    def log(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def run(self, cmd: list[str], budget: float, label: str, env: dict | None = None) -> Run:
        """Run ``cmd`` in ROOT with its output appended to the log; kill its process group after ``budget`` s."""
        self.log(f"\n===== {label}: {shlex.join(cmd)} (budget {budget:.0f} s)")
        start_offset = self.log_path.stat().st_size
        t0 = time.monotonic()
        if budget <= 0:
            self.log("not started: no time left")
            return Run(None, 0.0, "not started: no time left in the budget")
        try:
            with open(self.log_path, "a") as out:
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env or self.env, start_new_session=True)
                try:
                    rc: int | None = proc.wait(timeout=budget)
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
                    rc = None
        except OSError as e:  # the program is missing or not executable
            self.log(f"could not start: {e}")
            return Run(127, time.monotonic() - t0, f"could not start {cmd[0]}: {e}")
        seconds = time.monotonic() - t0
        self.log(f"===== {label}: " + (f"exit {rc}" if rc is not None else f"KILLED at its budget ({budget:.0f} s)")
                 + f" after {seconds:.1f} s")
        with open(self.log_path, errors="replace") as f:
            f.seek(start_offset)
            tail = f.read()[-4000:]
        return Run(rc, seconds, tail)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the child's whole process group (pytest, compute-sanitizer, nvcc, ...), SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("=====")]
    return " | ".join(lines[-n:])[-400:]


# ----------------------------------------------------------------------------------------------------------- env


def _tool_version(ctx: Context, name: str, cmd: list[str], budget: Budget, required: bool) -> Step:
    if shutil.which(cmd[0]) is None:
        status = "fail" if required and not ctx.dry else "skip"
        return Step(name, status, detail=f"{cmd[0]} not found on PATH", cmd=shlex.join(cmd))
    r = ctx.run(cmd, min(budget.left(), 10.0), f"env/{name}")
    text = r.tail.strip().splitlines()
    text = [ln for ln in text if ln.strip() and not ln.startswith("=====")]
    if r.rc != 0:
        return Step(name, "fail" if required and not ctx.dry else "skip", r.seconds, _last_lines(r.tail),
                    shlex.join(cmd))
    return Step(name, "pass", r.seconds, text[-1] if text else "", shlex.join(cmd))


def stage_env(ctx: Context, budget: Budget) -> list[Step]:
    steps = []
    smi = _tool_version(ctx, "nvidia-smi", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                            "--format=csv,noheader"], budget, required=True)
    if smi.status == "pass":
        parts = [p.strip() for p in smi.detail.split(",")]
        ctx.facts["device"] = dict(zip(["name", "driver", "memory", "max_sm_clock"], parts))
    steps.append(smi)
    nvcc = _tool_version(ctx, "nvcc", ["nvcc", "--version"], budget, required=True)
    steps.append(nvcc)
    san = _tool_version(ctx, "compute-sanitizer", ["compute-sanitizer", "--version"], budget, required=False)
    steps.append(san)
    code = ("import json, platform, sys, torch; print(json.dumps({'python': platform.python_version(), "
            "'torch': torch.__version__, 'torch_cuda': torch.version.cuda, 'executable': sys.executable}))")
    r = ctx.run([ctx.py, "-c", code], min(budget.left(), 30.0), "env/python")
    versions = _json_line(r.tail, "{")
    if versions:
        ctx.facts["python"] = versions
        steps.append(Step("python", "pass", r.seconds, f"python {versions['python']}, torch {versions['torch']} "
                                                         f"(CUDA {versions['torch_cuda']})", f"{ctx.py} -c ..."))
    else:
        steps.append(Step("python", "timeout" if r.timed_out else "fail", r.seconds,
                          "torch does not import: " + _last_lines(r.tail), f"{ctx.py} -c ..."))
    ctx.facts["toolchain"] = {s.name: s.detail for s in steps}
    return steps


def _json_line(text: str, start: str) -> dict | None:
    """The last line of ``text`` that parses as a JSON object (after an optional prefix ending in ``start``)."""
    for line in reversed(text.splitlines()):
        i = line.find(start)
        if i < 0:
            continue
        try:
            value = json.loads(line[i:])
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


# --------------------------------------------------------------------------------------------------------- build


def build_command(ctx: Context) -> tuple[list[str], dict]:
    """The build: in place, one architecture, every core, against the installed torch (never a pip install)."""
    jobs = str(ctx.args.jobs or os.cpu_count() or 1)
    env = {"TORCH_CUDA_ARCH_LIST": ctx.args.arch, "MAX_JOBS": jobs}
    return [ctx.py, "setup.py", "build_ext", "--inplace"], env


def stage_build(ctx: Context, budget: Budget) -> list[Step]:
    cmd, extra = build_command(ctx)
    shown = " ".join(f"{k}={v}" for k, v in extra.items()) + " " + shlex.join(cmd)
    if ctx.dry:
        # NOTE stand-in: compiling here would rewrite the shared dna_fast/_C*.so (and take minutes on 2 cores);
        # import what is built instead, so the step still proves the package loads.
        r = ctx.run([ctx.py, "-c", "import dna_fast._C as c; print(c.__file__)"], budget.left(), "build (dry run)")
        status = "timeout" if r.timed_out else ("pass" if r.rc == 0 else "fail")
        detail = f"dry run: would run `{shown}`; the extension already built " + (
            "imports" if r.rc == 0 else "does not import: " + _last_lines(r.tail))
        return [Step("build_ext", status, r.seconds, detail, shown)]
    env = dict(ctx.env, **extra)
    r = ctx.run(cmd, budget.left(), "build", env=env)
    if r.timed_out:
        return [Step("build_ext", "timeout", r.seconds, "the build ran past its budget: raise it with "
                                                        "--budget build=SECONDS", shown)]
    if r.rc != 0:
        return [Step("build_ext", "fail", r.seconds, "compile error (see the log): " + _last_lines(r.tail, 4), shown)]
    return [Step("build_ext", "pass", r.seconds, f"built for sm_{ctx.args.arch.replace('.', '')} with "
                                                 f"MAX_JOBS={extra['MAX_JOBS']}", shown)]


# ---------------------------------------------------------------------------------------------------------- info


def stage_info(ctx: Context, budget: Budget) -> list[Step]:
    code = "import json, dna_fast; print('BACKEND_INFO ' + json.dumps(dna_fast.backend_info()))"
    r = ctx.run([ctx.py, "-c", code], budget.left(), "info")
    info = _json_line(r.tail, "{") if "BACKEND_INFO" in r.tail else None
    if info is None:
        return [Step("backend_info", "timeout" if r.timed_out else "fail", r.seconds,
                     "dna_fast does not import: " + _last_lines(r.tail), "dna_fast.backend_info()")]
    ctx.facts["backend_info"] = info
    print("backend_info: " + json.dumps(info), flush=True)
    problems = []
    if not info.get("cpu_ops"):
        problems.append("the native extension dna_fast._C did not load")
    if not ctx.dry:
        if not info.get("gpu"):
            problems.append("torch sees no CUDA device")
        if not info.get("cuda_ops"):
            problems.append("dna_fast._C was built without CUDA (nvcc not found, or a CPU-only torch)")
        elif ctx.args.arch not in str(info.get("cuda_arch_list", "")).split(";"):
            problems.append(f"kernels built for {info.get('cuda_arch_list')!r}, not {ctx.args.arch}")
    detail = "; ".join(problems) or ", ".join(f"{k}={info.get(k)}" for k in ("torch", "cuda_ops", "cuda_arch_list",
                                                                             "gpu_name"))
    return [Step("backend_info", "fail" if problems else "pass", r.seconds, detail, "dna_fast.backend_info()")]


# ---------------------------------------------------------------------------------------------- pytest stages


def _read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    with open(path) as f:
        for line in f:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by the kill
    return events


def pytest_steps(events: list[dict], run: Run, prefix: str = "") -> tuple[list[Step], dict]:
    """One Step per test from the plugin's events; tests killed with the stage or never reached are listed too.

    Returns the steps and the counts per status (plus ``collected``)."""
    collected: list[str] = next((e["nodeids"] for e in events if e["event"] == "collected"), [])
    results: dict[str, dict] = {}
    figures: dict[str, list] = {}
    started: list[str] = []
    for e in events:
        if e["event"] == "start":
            started.append(e["nodeid"])
        elif e["event"] == "result":
            prev = results.get(e["nodeid"])
            # the worst phase wins (a passing call with a failing teardown is a failure)
            if prev is None or STATUS_ORDER.index(_status(e["outcome"])) < STATUS_ORDER.index(_status(prev["outcome"])):
                results[e["nodeid"]] = e
        elif e["event"] == "figure":
            figures.setdefault(e["nodeid"], []).append(e["figure"])
    steps = []
    for nodeid in collected or started:
        e = results.get(nodeid)
        if e is not None:
            steps.append(Step(prefix + nodeid, _status(e["outcome"]), e.get("seconds", 0.0), e.get("message", ""),
                              figures=figures.get(nodeid, [])))
        elif nodeid in started:
            why = "killed when its stage ran past its budget" if run.timed_out else "the test process died in it"
            steps.append(Step(prefix + nodeid, "timeout" if run.timed_out else "fail", detail=why,
                              figures=figures.get(nodeid, [])))
        else:
            steps.append(Step(prefix + nodeid, "skip", detail="not reached: the stage ran out of time"
                              if run.timed_out else "not reached: the test process ended early"))
    counts = {s: sum(st.status == s for st in steps) for s in STATUS_ORDER}
    counts["collected"] = len(collected)
    return steps, counts


def _status(outcome: str) -> str:
    return {"passed": "pass", "failed": "fail", "skipped": "skip", "timeout": "timeout"}.get(outcome, "fail")


def _count_text(counts: dict) -> str:
    return ", ".join(f"{counts[s]} {s}" for s in ("pass", "fail", "timeout", "skip") if counts.get(s)) or "none ran"


def run_pytest(ctx: Context, label: str, args: list[str], budget: float, test_timeout: float,
               extra_env: dict | None = None, first: list[str] | None = None,
               wrapper: list[str] | None = None) -> tuple[Run, list[Step], dict]:
    """pytest in a child process with the check's plugin; returns the run, one step per test, the counts."""
    events = ctx.work / f"{label.replace('/', '_')}.events.jsonl"
    events.unlink(missing_ok=True)
    env = dict(ctx.env, DNA_CHECK_EVENTS=str(events), DNA_CHECK_TEST_TIMEOUT=str(test_timeout),
               DNA_CHECK_FIRST=",".join(first or []), **(extra_env or {}))
    cmd = [*(wrapper or []), ctx.py, "-m", "pytest", *args, "-q", "-p", PLUGIN, "-p", "no:cacheprovider"]
    r = ctx.run(cmd, budget, label, env=env)
    steps, counts = pytest_steps(_read_events(events), r)
    for st in steps:
        st.cmd = ""
    return r, steps, counts


def _summary(name: str, r: Run, counts: dict, cmd: str, need_pass: bool) -> Step:
    """The stage's own verdict on a pytest run: failures, a kill, a crash, or (on a GPU) nothing that ran."""
    text = _count_text(counts)
    if r.timed_out:
        return Step(name, "timeout", r.seconds, f"stopped at the stage budget: {text}", cmd)
    if counts["fail"] or counts["timeout"]:
        return Step(name, "fail", r.seconds, text, cmd)
    if r.rc not in (0, 5):  # 5: nothing selected
        return Step(name, "fail", r.seconds, f"pytest exit {r.rc}: " + _last_lines(r.tail), cmd)
    if need_pass and not counts["pass"]:
        return Step(name, "fail", r.seconds, f"{text}: no GPU test ran (is the GPU visible and the extension built "
                                             "with CUDA?)", cmd)
    return Step(name, "pass", r.seconds, text + (" (dry run: GPU tests skip on CPU)" if not need_pass else ""), cmd)


def stage_gpu_tests(ctx: Context, budget: Budget) -> list[Step]:
    args = [str(ctx.args.tests_dir), "-m", "gpu"]
    r, steps, counts = run_pytest(ctx, "gpu_tests", args, max(0.0, budget.left() - 20.0), ctx.args.test_timeout)
    summary = _summary("pytest -m gpu", r, counts, "pytest " + shlex.join(args), need_pass=not ctx.dry)
    device = "cpu" if ctx.dry else "cuda"
    d = ctx.run([ctx.py, str(ROOT / "benchmarks" / "gpu" / "ddp_smoke.py"), "--device", device], budget.left(),
                "gpu_tests/ddp")
    line = next((ln for ln in reversed(d.tail.splitlines()) if ln.startswith("ddp-smoke:")), _last_lines(d.tail))
    ddp = Step(f"ddp 1 process ({'gloo, dry run' if ctx.dry else 'nccl'})",
               "timeout" if d.timed_out else ("pass" if d.rc == 0 else "fail"), d.seconds, line,
               f"python benchmarks/gpu/ddp_smoke.py --device {device}")
    return [summary, ddp, *steps]


def stage_benchmarks(ctx: Context, budget: Budget) -> list[Step]:
    bench_json = ctx.work / "pytest-benchmark.json"
    args = [str(ctx.args.bench_dir), "-m", BENCH_MARKERS, "-s", *BENCH_OPTS, f"--benchmark-json={bench_json}"]
    # a dry run sets DNA_GPU_CHECK_DRY_RUN: the rating benchmark then runs a small CPU stand-in of itself, so the
    # rating summary below is exercised without a GPU. host_bf16: the host CPU's bf16 rating path against its fp32
    # engine (issue 25), where the host has AVX512-BF16 or AMX (skipped otherwise); after the GPU benchmarks, on all
    # cores only
    extra = {"DNA_BENCH_THREAD_COUNTS": str(os.cpu_count() or 1), **({"DNA_GPU_CHECK_DRY_RUN": "1"} if ctx.dry else {})}
    r, steps, counts = run_pytest(ctx, "benchmarks", args, budget.left(), ctx.args.bench_timeout, first=BENCH_FIRST,
                                  extra_env=extra)
    shown = [a for a in args if not a.startswith("--benchmark-json")]
    summary = _summary(f"pytest -m '{BENCH_MARKERS}' --benchmark-only", r, counts, "pytest " + shlex.join(shown),
                       need_pass=not ctx.dry)
    timings = {}
    if bench_json.exists():
        try:
            for b in json.loads(bench_json.read_text()).get("benchmarks", []):
                timings[b["fullname"]] = {"median_ms": b["stats"]["median"] * 1e3, "rounds": b["stats"]["rounds"]}
        except (ValueError, KeyError):
            pass
    for st in steps:
        for fig in st.figures:
            ctx.figures.append({"test": st.name, **fig})
        if st.name in timings:
            st.figures.append({"name": "pytest-benchmark", **timings[st.name]})
    return [summary, *steps]


def sanitizer_files(tests_dir: Path) -> list[str]:
    """The kernel test files, as paths relative to ROOT where they lie under it."""
    files: list[str] = []
    for pattern in SANITIZE_FILES:
        for p in sorted(Path(tests_dir).glob(pattern)):
            rel = str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
            if rel not in files:
                files.append(rel)
    return files


def stage_sanitizer(ctx: Context, budget: Budget) -> list[Step]:
    files = sanitizer_files(ctx.args.tests_dir)
    select = [*files, "-m", "gpu", "-k", SANITIZE_K]
    tool = shutil.which("compute-sanitizer")
    if ctx.dry:
        r, steps, counts = run_pytest(ctx, "sanitizer/collect", [*select, "--collect-only"], budget.left(), 0)
        n = counts["collected"]
        status = "timeout" if r.timed_out else ("pass" if n and r.rc == 0 else "fail")
        detail = (f"dry run: kernel tests selected: {n}, in {', '.join(files)}; on a GPU they run under "
                  "compute-sanitizer memcheck, then racecheck") if n else "no kernel test selected: " + _last_lines(
                      r.tail)
        return [Step("collect kernel tests", status, r.seconds, detail, "pytest " + shlex.join(select))]
    if tool is None:
        return [Step("memcheck", "skip", detail="compute-sanitizer not found on PATH"),
                Step("racecheck", "skip", detail="compute-sanitizer not found on PATH")]
    try:
        helptext = subprocess.run([tool, "--help"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        helptext = ""
    # racecheck only on dna_fast's kernels (their mangled and demangled names both contain "dna_fast"): the
    # hazards it looks for are in shared memory, which our kernels use; memcheck checks every kernel the tests launch
    racefilter = ["--kernel-name", "kns=dna_fast"] if "--kernel-name" in helptext else []
    # NOTE without the caching allocator every tensor is its own cudaMalloc, so an access past its end is caught
    env = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    steps = []
    tools = [("memcheck", 0.6), ("racecheck", 1.0)]
    for name, share in tools:
        wrapper = [tool, "--tool", name, "--error-exitcode", str(SANITIZE_EXIT), "--print-limit", "20"]
        if name == "memcheck" and "--report-api-errors" in helptext:
            wrapper += ["--report-api-errors", "no"]  # torch probes the device with calls that fail by design
        else:
            wrapper += racefilter
        left = budget.left() * share
        r, tests, counts = run_pytest(ctx, f"sanitizer/{name}", select, left, ctx.args.test_timeout * 4,
                                      extra_env=env, wrapper=wrapper)
        cmd = shlex.join([*wrapper, "python", "-m", "pytest", *select])
        if r.timed_out:
            step = Step(name, "timeout", r.seconds, f"stopped at the stage budget: {_count_text(counts)}", cmd)
        elif r.rc == SANITIZE_EXIT:
            step = Step(name, "fail", r.seconds, f"compute-sanitizer reported errors (see the log); tests: "
                                                 f"{_count_text(counts)}", cmd)
        elif r.rc not in (0, 5) or counts["fail"] or counts["timeout"]:
            step = Step(name, "fail", r.seconds, f"exit {r.rc}; tests: {_count_text(counts)}: "
                                                 + _last_lines(r.tail), cmd)
        elif not counts["pass"]:
            step = Step(name, "fail", r.seconds, f"no kernel test ran under {name}: {_count_text(counts)}", cmd)
        else:
            scope = "dna_fast's kernels" if name == "racecheck" and racefilter else "every kernel launched"
            step = Step(name, "pass", r.seconds, f"no error in {scope}; tests: {_count_text(counts)}", cmd)
        steps.append(step)
    return steps


STAGE_FUNCS = {
    "env": stage_env, "build": stage_build, "info": stage_info, "gpu_tests": stage_gpu_tests,
    "benchmarks": stage_benchmarks, "sanitizer": stage_sanitizer,
}


# ------------------------------------------------------------------------------------------------------ reports


def _stage_status(steps: list[Step]) -> str:
    statuses = {s.status for s in steps}
    for s in ("fail", "timeout"):
        if s in statuses:
            return s
    return "pass" if "pass" in statuses else ("skip" if statuses else "pass")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def render_markdown(doc: dict) -> str:
    dev = doc["device"] or {}
    info = doc.get("backend_info") or {}
    head = f"# GPU check: {dev.get('name', 'no GPU')} ({doc['date']})"
    lines = [head, "", f"{'DRY RUN (CPU stand-ins), ' if doc['dry_run'] else ''}verdict: **{doc['verdict']}**, "
             f"{doc['wall_s']:.0f} s of a {doc['total_budget_s']:.0f} s budget; commit {doc['commit']}", "",
             f"- device: {dev.get('name', '-')}, driver {dev.get('driver', '-')}, memory {dev.get('memory', '-')}",
             f"- torch {info.get('torch') or doc['python'].get('torch', '-')}, CUDA {info.get('torch_cuda', '-')}, "
             f"kernels for {info.get('cuda_arch_list') or '-'}; nvcc: {doc['toolchain'].get('nvcc', '-')}",
             f"- host: {doc['host']['cpu']} x {doc['host']['nproc']}, load average {doc['host']['loadavg']}",
             f"- command: `{doc['command']}`", "", "## Where the time went", "",
             "| stage | budget (s) | used (s) | status |", "|---|---|---|---|"]
    for st in doc["stages"]:
        lines.append(f"| {st['name']} | {st['budget_s']:.0f} | {st['seconds']:.1f} | {st['status']} |")
    if doc["figures"]:
        lines += ["", "## Figures", "", "| benchmark | figures |", "|---|---|"]
        for fig in doc["figures"]:
            rest = ", ".join(_fmt(k, v) for k, v in fig.items() if k not in ("name", "test"))
            lines.append(f"| {fig.get('name', fig['test'])} | {rest} |")
    lines += _rating_lines(doc.get("rating"))
    lines += ["", "## Steps", "", "| stage | step | status | s | detail |", "|---|---|---|---|---|"]
    for st in doc["stages"]:
        for s in st["steps"]:
            detail = s["detail"].replace("|", "/").replace("\n", " ")
            lines.append(f"| {st['name']} | {s['name']} | {s['status']} | {s['seconds']:.1f} | {detail} |")
    return "\n".join(lines) + "\n"


# The two figures of test_bench_rating_gpu_block1 that answer issue 25 on a lent GPU: bf16 against fp32, and the
# engine's work rate against the GPU's bf16 GEMM rate measured in the same run.
RATING_ACCURACY = "rating dna block 1 gpu batch 256 bf16 accuracy vs fp32"
RATING_WORK = "rating work dna block 1 gpu batch 256 bf16"


def rating_summary(figures: list[dict]) -> dict | None:
    """bf16 accuracy against fp32 and GFLOP/s against the bf16 GEMM roof, from the rating benchmark's figures (None
    when it did not report them)."""
    by_name = {f.get("name"): f for f in figures}
    acc, work = by_name.get(RATING_ACCURACY), by_name.get(RATING_WORK)
    if acc is None and work is None:
        return None
    out: dict = {}
    if acc is not None:
        out.update({k: acc.get(k) for k in ("median_rel_err", "max_rel_err", "autocast_median_rel_err",
                                            "autocast_max_rel_err", "no_worse_than_autocast")})
    if work is not None:
        out.update({k: work.get(k) for k in ("trie_gmac", "sharing", "engine_gflop_s", "gemm_roof_gflop_s",
                                             "engine_of_roof", "naive_gflop_s", "ratio", "ratio_ceiling")})
    return out


def _rating_lines(summary: dict | None) -> list[str]:
    if not summary:
        return []
    g = summary.get
    lines = ["", "## Rating on this GPU (bf16 against fp32, GFLOP/s against the bf16 GEMM rate)", ""]
    if g("median_rel_err") is not None:
        lines.append(f"- bf16 relative error against fp32: median {g('median_rel_err'):.3g}, max {g('max_rel_err'):.3g}"
                     f" (autocast: {g('autocast_median_rel_err'):.3g}, {g('autocast_max_rel_err'):.3g}); no worse "
                     f"than autocast: {g('no_worse_than_autocast')}")
    if g("engine_gflop_s") is not None:
        lines.append(f"- work: {g('trie_gmac'):.4g} GMAC in the trie (sharing {g('sharing'):.3g}x); engine "
                     f"{g('engine_gflop_s'):.4g} GFLOP/s = {g('engine_of_roof'):.3g} of a plain bf16 GEMM of the same "
                     f"shapes ({g('gemm_roof_gflop_s'):.4g} GFLOP/s, measured in this run); ratio to naive "
                     f"{g('ratio'):.3g}x, ceiling {g('ratio_ceiling'):.3g}x")
    return lines


def _fmt(k: str, v) -> str:
    return f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"


def print_time_table(doc: dict) -> None:
    print("\nwhere the time went:")
    print(f"  {'stage':<11} {'budget':>7} {'used':>7}  status  steps (pass/fail/timeout/skip)")
    for st in doc["stages"]:
        c = {s: sum(x["status"] == s for x in st["steps"]) for s in STATUS_ORDER}
        print(f"  {st['name']:<11} {st['budget_s']:>6.0f}s {st['seconds']:>6.1f}s  {st['status']:<7} "
              f"{c['pass']}/{c['fail']}/{c['timeout']}/{c['skip']}")
    print(f"  {'total':<11} {doc['total_budget_s']:>6.0f}s {doc['wall_s']:>6.1f}s  {doc['verdict']}")


# ---------------------------------------------------------------------------------------------------------- main


def _budget_arg(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or name not in STAGES:
        raise argparse.ArgumentTypeError(f"--budget takes STAGE=SECONDS with STAGE one of {', '.join(STAGES)}; "
                                         f"got {text!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget {text!r}: {value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"--budget {text!r}: the budget must be positive")
    return name, seconds


def _stage_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in STAGES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown stage {', '.join(bad) or repr(text)}: the stages are "
                                         f"{', '.join(STAGES)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="check.sh", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="stages and default budgets (s): "
                                            + ", ".join(f"{k}={v:g}" for k, v in STAGES.items()))
    parser.add_argument("--dry-run", "--allow-cpu", dest="dry_run", action="store_true",
                        help="CPU stand-ins where a GPU is needed (no compile); checks the script itself")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: $OUT if set, else benchmarks/results/)")
    parser.add_argument("--only", type=_stage_list, default=None, help="comma-separated stages to run")
    parser.add_argument("--skip", type=_stage_list, default=[], help="comma-separated stages to leave out")
    parser.add_argument("--budget", type=_budget_arg, action="append", default=[], metavar="STAGE=SECONDS",
                        help="a stage's budget (repeatable)")
    parser.add_argument("--total-budget", type=float, default=TOTAL_BUDGET, help="cap on the whole run (s)")
    parser.add_argument("--test-timeout", type=float, default=TEST_TIMEOUT, help="one gpu test's budget (s)")
    parser.add_argument("--bench-timeout", type=float, default=BENCH_TIMEOUT, help="one gpu benchmark's budget (s)")
    parser.add_argument("--arch", default="9.0", help="TORCH_CUDA_ARCH_LIST for the build (default 9.0: H100/H200)")
    parser.add_argument("--jobs", type=int, default=None, help="MAX_JOBS for the build (default: nproc)")
    parser.add_argument("--tests-dir", type=Path, default=ROOT / "tests", help=argparse.SUPPRESS)
    parser.add_argument("--bench-dir", type=Path, default=ROOT / "benchmarks", help=argparse.SUPPRESS)
    parser.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.total_budget <= 0:
        parser.error("--total-budget must be positive")
    budgets = dict(STAGES)
    budgets.update(dict(args.budget))
    args.budgets = budgets
    selected = args.only or list(STAGES)
    args.stages = [s for s in STAGES if s in selected and s not in args.skip]
    if not args.stages:
        parser.error("--only / --skip leave no stage to run")
    if args.out is None:
        args.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS_DIR
    return args


def _document(args: argparse.Namespace, ctx: Context, stages: list[StageResult], started: datetime.datetime,
              wall: float, stem: Path) -> dict:
    finished = len(stages) == len(args.stages)
    ok = all(s.status in ("pass", "skip") for s in stages)
    return {
        "schema": 1,
        "date": started.isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "verdict": ("pass" if ok else "fail") if finished else "incomplete",
        "command": shlex.join(["benchmarks/gpu/check.sh", *args.argv]),
        "commit": _git_commit(),
        "total_budget_s": args.total_budget,
        "wall_s": round(wall, 1),
        "host": {"hostname": socket.gethostname(), "cpu": cpu_model(), "nproc": os.cpu_count(),
                 "loadavg": loadavg()},
        "device": ctx.facts.get("device", {}),
        "toolchain": ctx.facts.get("toolchain", {}),
        "python": ctx.facts.get("python", {}),
        "backend_info": ctx.facts.get("backend_info", {}),
        "stages": [dict(asdict(s), steps=[asdict(x) for x in s.steps]) for s in stages],
        "figures": ctx.figures,
        "rating": rating_summary(ctx.figures),
        "files": {"json": f"{stem}.json", "markdown": f"{stem}.md", "log": f"{stem}.log"},
    }


def _print_steps(res: StageResult) -> None:
    for s in res.steps:
        # every test that passed without a figure would drown the rest: those are counted, not listed
        if s.status != "pass" or not s.name.startswith(("tests/", "benchmarks/", "/")) or s.figures:
            mark = {"pass": "ok  ", "fail": "FAIL", "timeout": "TIME", "skip": "skip"}[s.status]
            print(f"  {mark} {s.name} ({s.seconds:.1f} s) {s.detail}"[:300], flush=True)
        for fig in s.figures:
            print("       " + ", ".join(_fmt(k, v) for k, v in fig.items())[:300], flush=True)


def run_check(args: argparse.Namespace) -> dict:
    """Run the selected stages; write the JSON, Markdown and log files (rewritten after each stage, so a run cut
    short still leaves what it measured); return the results document."""
    t_start = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gpu-check-{'dry-run-' if args.dry_run else ''}{started.strftime('%Y%m%dT%H%M%SZ')}"
    log_path = Path(f"{stem}.log")
    log_path.write_text(f"dna_fast GPU check, {started.isoformat(timespec='seconds')}: "
                        f"{shlex.join(['benchmarks/gpu/check.sh', *args.argv])}\n")
    with tempfile.TemporaryDirectory(prefix="dna-gpu-check-") as tmp:
        ctx = Context(args, log_path, Path(tmp))
        total = Budget(args.total_budget)
        stages: list[StageResult] = []
        for name in args.stages:
            own = args.budgets[name]
            res = StageResult(name, own)
            print(f"[{name}] budget {own:.0f} s ({total.left():.0f} s left of the total) ...", flush=True)
            t0 = time.monotonic()
            if total.left() <= 0:
                res.steps = [Step(name, "skip", detail="not started: the total budget is spent")]
            else:
                try:
                    res.steps = STAGE_FUNCS[name](ctx, Budget(min(own, total.left())))
                except Exception as e:  # a bug in the check itself must not cost the other stages
                    res.steps = [Step(name, "fail", detail=f"the check's own code raised {type(e).__name__}: {e}")]
                    ctx.log(f"stage {name} raised {e!r}")
            res.seconds = round(time.monotonic() - t0, 1)
            res.status = _stage_status(res.steps)
            stages.append(res)
            _print_steps(res)
            print(f"[{name}] {res.status} in {res.seconds:.1f} s", flush=True)
            doc = _document(args, ctx, stages, started, time.monotonic() - t_start, stem)
            Path(f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
            Path(f"{stem}.md").write_text(render_markdown(doc))
    print_time_table(doc)
    print(f"results: {stem}.json, {stem}.md, {stem}.log")
    return doc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    doc = run_check(args)
    return 0 if doc["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
