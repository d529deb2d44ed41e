"""The GPU check (benchmarks/gpu/check.py, issue 19) tested on the CPU: its arguments, per-stage and per-test time
budgets, that it never stops at the first failure, the figures it collects and the result files it writes.

The pytest stages run here on small planted test folders (a pass, a failure, a skip, a test past its budget, a
benchmark that reports a figure), so every branch is exercised in seconds; one dry run goes over the real package
(build stand-in and backend_info)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from benchmarks.gpu import check

ROOT = Path(__file__).resolve().parents[1]

PLANTED_TESTS = {
    "pytest.ini": "[pytest]\nmarkers =\n    gpu: planted\n",
    "test_planted.py": """
        import time

        import pytest

        pytestmark = pytest.mark.gpu


        def test_a_passes():
            assert 1 + 1 == 2


        def test_b_fails():
            assert 2 + 2 == 5, "planted failure"


        @pytest.mark.skip(reason="planted skip")
        def test_c_skips():
            pass


        def test_d_runs_past_its_budget():
            time.sleep(60)


        def test_e_runs_after_the_failures():
            assert True
        """,
    "test_not_gpu.py": """
        def test_would_fail_if_selected():
            raise AssertionError("not marked gpu: -m gpu must leave it out")
        """,
    "test_fake_kernels.py": """
        import pytest


        @pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
        def test_kernel(device):
            pass


        @pytest.mark.gpu
        def test_kernel_compile_cuda():
            pass
        """,
}

PLANTED_BENCH = {
    "pytest.ini": "[pytest]\nmarkers =\n    gpu: planted\n",
    "conftest.py": """
        RESULTS = []


        def report(name, **figures):
            RESULTS.append({"name": name, **figures})
        """,
    "test_bench_planted.py": """
        import pytest
        from conftest import report


        @pytest.mark.gpu
        def test_a_plain(benchmark):
            benchmark(sum, range(100))
            report("planted figure", ratio=2.5, device="cpu")


        @pytest.mark.gpu
        def test_z_dwconv_bandwidth(benchmark):
            benchmark(sum, range(10))
            report("runs first", gb_per_s=1.0)


        def test_not_gpu(benchmark):
            raise AssertionError("not marked gpu")
        """,
}


def _write(folder: Path, files: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    return folder


@pytest.fixture
def planted(tmp_path):
    return _write(tmp_path / "tests", PLANTED_TESTS), _write(tmp_path / "bench", PLANTED_BENCH)


def _ctx(tmp_path, argv):
    args = check.parse_args(["--out", str(tmp_path / "out"), *argv])
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    log = tmp_path / "check.log"
    log.write_text("")
    return check.Context(args, log, work)


# ------------------------------------------------------------------------------------------------ arguments


def test_arguments_budgets_and_stage_selection(monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    a = check.parse_args(["--budget", "build=90", "--budget", "sanitizer=5", "--skip", "benchmarks"])
    assert a.budgets["build"] == 90 and a.budgets["sanitizer"] == 5 and a.budgets["env"] == check.STAGES["env"]
    assert a.stages == [s for s in check.STAGES if s != "benchmarks"]
    assert a.out == check.RESULTS_DIR and not a.dry_run and a.arch == "9.0"
    assert check.parse_args(["--only", "sanitizer,env"]).stages == ["env", "sanitizer"]  # always in stage order
    assert check.parse_args(["--allow-cpu"]).dry_run
    monkeypatch.setenv("OUT", "/somewhere/out")
    assert check.parse_args([]).out == Path("/somewhere/out")
    assert sum(check.STAGES.values()) >= check.TOTAL_BUDGET  # the total is what caps the run: 6 minutes
    assert check.TOTAL_BUDGET <= 360


@pytest.mark.parametrize("argv, message", [
    (["--budget", "compile=10"], "STAGE one of env, build"),
    (["--budget", "build=soon"], "is not a number"),
    (["--budget", "build=-1"], "must be positive"),
    (["--only", "env,gpu"], "unknown stage gpu"),
    (["--only", "env", "--skip", "env"], "leave no stage"),
])
def test_bad_arguments_say_what_is_wrong(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        check.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_build_command_uses_every_core_and_one_architecture(tmp_path):
    ctx = _ctx(tmp_path, ["--arch", "9.0"])
    cmd, env = check.build_command(ctx)
    assert cmd[1:] == ["setup.py", "build_ext", "--inplace"] and "pip" not in " ".join(cmd)
    assert env == {"TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": str(os.cpu_count())}
    assert check.build_command(_ctx(tmp_path, ["--jobs", "3"]))[1]["MAX_JOBS"] == "3"


def _fake_python(tmp_path, body: str) -> str:
    """An executable standing in for the GPU machine's python3: records its arguments and environment."""
    exe = tmp_path / "fake-python"
    exe.write_text(f"#!/bin/bash\necho \"$@\" > {tmp_path}/args\nenv > {tmp_path}/env\n{body}\n")
    exe.chmod(0o755)
    return str(exe)


def test_real_build_stage_runs_setup_py_with_the_arch_and_jobs_and_reports_compile_errors(tmp_path):
    ok = _ctx(tmp_path, ["--python", _fake_python(tmp_path, "echo compiled; exit 0"), "--jobs", "5"])
    [step] = check.stage_build(ok, check.Budget(30))
    assert step.status == "pass" and "sm_90" in step.detail
    assert (tmp_path / "args").read_text().split() == ["setup.py", "build_ext", "--inplace"]
    env = (tmp_path / "env").read_text().splitlines()
    assert "TORCH_CUDA_ARCH_LIST=9.0" in env and "MAX_JOBS=5" in env
    bad = _ctx(tmp_path, ["--python", _fake_python(tmp_path, "echo 'kernel.cu(12): error: planted'; exit 1")])
    [step] = check.stage_build(bad, check.Budget(30))
    assert step.status == "fail" and "planted" in step.detail
    slow = _ctx(tmp_path, ["--python", _fake_python(tmp_path, "sleep 60")])
    [step] = check.stage_build(slow, check.Budget(1))
    assert step.status == "timeout" and "--budget build=" in step.detail


@pytest.mark.parametrize("info, problem", [
    ({"cpu_ops": True, "cuda_ops": True, "cuda_arch_list": "9.0", "gpu": True}, None),
    ({"cpu_ops": True, "cuda_ops": False, "cuda_arch_list": "", "gpu": True}, "built without CUDA"),
    ({"cpu_ops": True, "cuda_ops": True, "cuda_arch_list": "8.0", "gpu": True}, "not 9.0"),
    ({"cpu_ops": True, "cuda_ops": True, "cuda_arch_list": "9.0", "gpu": False}, "no CUDA device"),
])
def test_real_info_stage_asks_for_cuda_kernels_for_the_arch(tmp_path, info, problem):
    line = "BACKEND_INFO " + json.dumps({**info, "torch": "2.11.0+cu130"})
    ctx = _ctx(tmp_path, ["--python", _fake_python(tmp_path, f"echo '{line}'")])
    [step] = check.stage_info(ctx, check.Budget(30))
    assert ctx.facts["backend_info"]["torch"] == "2.11.0+cu130"
    assert step.status == ("pass" if problem is None else "fail") and (problem is None or problem in step.detail)


# ---------------------------------------------------------------------------------------- budgets, no stopping


def test_each_test_is_reported_and_a_failure_does_not_stop_the_rest(tmp_path, planted):
    tests, _ = planted
    ctx = _ctx(tmp_path, ["--dry-run", "--tests-dir", str(tests)])
    t0 = time.monotonic()
    run, steps, counts = check.run_pytest(ctx, "planted", [str(tests), "-m", "gpu"], budget=120, test_timeout=2)
    assert time.monotonic() - t0 < 60  # the 60 s sleeper was interrupted at its 2 s budget
    by_name = {s.name.split("::")[-1]: s for s in steps}
    assert [n for n in by_name if "kernel" not in n] == [
        "test_a_passes", "test_b_fails", "test_c_skips", "test_d_runs_past_its_budget",
        "test_e_runs_after_the_failures"]
    assert by_name["test_a_passes"].status == "pass"
    assert by_name["test_b_fails"].status == "fail" and "planted failure" in by_name["test_b_fails"].detail
    assert by_name["test_c_skips"].status == "skip" and "planted skip" in by_name["test_c_skips"].detail
    assert by_name["test_d_runs_past_its_budget"].status == "timeout"
    assert "2 s budget" in by_name["test_d_runs_past_its_budget"].detail
    assert by_name["test_e_runs_after_the_failures"].status == "pass"
    assert "test_would_fail_if_selected" not in by_name  # -m gpu
    assert counts["fail"] == 1 and counts["timeout"] == 1 and counts["collected"] == len(steps)
    summary = check._summary("pytest -m gpu", run, counts, "", need_pass=True)
    assert summary.status == "fail" and "1 fail" in summary.detail and "1 timeout" in summary.detail


def test_a_stage_past_its_budget_is_killed_with_its_children_and_keeps_what_finished(tmp_path):
    folder = _write(tmp_path / "slow", {"pytest.ini": "[pytest]\nmarkers =\n    gpu: planted\n",
                                        "test_slow.py": f"""
        import os
        import subprocess
        import time

        import pytest

        pytestmark = pytest.mark.gpu


        def test_1_quick():
            pass


        def test_2_hangs():
            child = subprocess.Popen(["sleep", "120"])
            open({str(tmp_path / "child.pid")!r}, "w").write(str(child.pid))
            time.sleep(120)


        def test_3_never_reached():
            pass
        """})
    ctx = _ctx(tmp_path, ["--dry-run"])
    t0 = time.monotonic()
    run, steps, counts = check.run_pytest(ctx, "slow", [str(folder), "-m", "gpu"], budget=8, test_timeout=0)
    assert run.timed_out and time.monotonic() - t0 < 30
    assert [s.status for s in steps] == ["pass", "timeout", "skip"]
    assert "killed when its stage ran past its budget" in steps[1].detail
    assert "not reached" in steps[2].detail
    pid = int((tmp_path / "child.pid").read_text())
    for _ in range(50):  # the grandchild went with the process group
        if not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"process {pid} started by the killed test is still running")
    assert "KILLED at its budget" in ctx.log_path.read_text()
    assert check._summary("x", run, counts, "", need_pass=False).status == "timeout"


def test_no_gpu_test_passing_fails_a_real_run_but_not_a_dry_run():
    counts = {"pass": 0, "fail": 0, "timeout": 0, "skip": 5, "collected": 5}
    done = check.Run(0, 1.0, "")
    assert check._summary("t", done, counts, "", need_pass=True).status == "fail"
    assert check._summary("t", done, counts, "", need_pass=False).status == "pass"
    assert check._summary("t", check.Run(3, 1.0, "INTERNALERROR"), counts, "", need_pass=False).status == "fail"


def test_sanitizer_stage_without_the_tool_skips_and_names_why(tmp_path, monkeypatch):
    ctx = _ctx(tmp_path, [])
    monkeypatch.setattr(check.shutil, "which", lambda name: None)
    steps = check.stage_sanitizer(ctx, check.Budget(10))
    assert [(s.name, s.status) for s in steps] == [("memcheck", "skip"), ("racecheck", "skip")]
    assert all("compute-sanitizer not found" in s.detail for s in steps)


def test_sanitizer_selects_the_kernel_test_files():
    files = check.sanitizer_files(ROOT / "tests")
    assert "tests/test_ops.py" in files and "tests/test_kernels.py" in files
    assert all(Path(ROOT / f).exists() for f in files)


# ------------------------------------------------------------------------------------------- whole dry runs


def test_dry_run_runs_every_stage_writes_the_results_and_says_where_time_went(tmp_path, planted):
    tests, bench = planted
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/check.sh"), "--dry-run", "--skip", "build,info",
                           "--tests-dir", str(tests), "--bench-dir", str(bench), "--test-timeout", "2",
                           "--budget", "env=120", "--budget", "gpu_tests=150", "--budget", "benchmarks=120",
                           "--budget", "sanitizer=120", "--total-budget", "600"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the planted failure fails the run ...
    docs = list(out.glob("gpu-check-dry-run-*.json"))
    assert len(docs) == 1 and docs[0].with_suffix(".md").exists() and docs[0].with_suffix(".log").exists()
    doc = json.loads(docs[0].read_text())
    stages = {s["name"]: s for s in doc["stages"]}
    assert list(stages) == ["env", "gpu_tests", "benchmarks", "sanitizer"]  # ... but every stage ran
    assert doc["dry_run"] and doc["verdict"] == "fail" and doc["wall_s"] > 0
    assert stages["gpu_tests"]["status"] == "fail"
    steps = {s["name"]: s for s in stages["gpu_tests"]["steps"]}
    assert steps["ddp 1 process (gloo, dry run)"]["status"] == "pass", steps
    assert any(n.endswith("test_e_runs_after_the_failures") and s["status"] == "pass" for n, s in steps.items())
    assert stages["benchmarks"]["status"] == "pass"
    bench_steps = [s for s in stages["benchmarks"]["steps"] if "::" in s["name"]]
    assert bench_steps[0]["name"].endswith("test_z_dwconv_bandwidth")  # the claimed figures first
    assert {f["name"] for f in doc["figures"]} == {"planted figure", "runs first"}
    planted_fig = next(f for f in doc["figures"] if f["name"] == "planted figure")
    assert planted_fig["ratio"] == 2.5 and planted_fig["test"].endswith("test_a_plain")
    assert any(f["name"] == "pytest-benchmark" for s in bench_steps for f in s["figures"])
    sanitizer = stages["sanitizer"]["steps"][0]
    assert sanitizer["status"] == "pass" and "kernel tests selected: 1," in sanitizer["detail"]
    assert doc["python"]["torch"] and doc["host"]["nproc"] and doc["command"].startswith("benchmarks/gpu/check.sh")
    md = docs[0].with_suffix(".md").read_text()
    assert "## Where the time went" in md and "| gpu_tests |" in md and "planted failure" in md
    assert "where the time went:" in proc.stdout and "results: " in proc.stdout
    assert "===== gpu_tests:" in docs[0].with_suffix(".log").read_text()


def test_dry_run_on_the_package_builds_nothing_and_reads_backend_info(tmp_path):
    so_before = {p: p.stat().st_mtime for p in (ROOT / "dna_fast").glob("_C*.so")}
    if not so_before:
        pytest.skip("dna_fast._C is not built (make setup builds it)")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/check.sh"), "--dry-run", "--only", "build,info",
                           "--out", str(tmp_path), "--budget", "build=120", "--budget", "info=120"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    build = doc["stages"][0]["steps"][0]
    assert build["status"] == "pass" and "would run `TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=" in build["detail"]
    assert doc["backend_info"]["cpu_ops"] and doc["backend_info"]["torch"]
    assert "backend_info: {" in proc.stdout
    assert {p: p.stat().st_mtime for p in (ROOT / "dna_fast").glob("_C*.so")} == so_before


def test_rating_summary_reports_bf16_accuracy_and_rate_against_the_gemm_roof():
    """Issue 25: one run on a lent GPU answers both questions: the rating benchmark's bf16-vs-fp32 errors (with
    autocast's beside them) and its GFLOP/s against the bf16 GEMM rate measured in the same run reach the results'
    JSON ("rating") and the Markdown summary. (The benchmark itself runs a CPU stand-in under --dry-run:
    DNA_GPU_CHECK_DRY_RUN, see benchmarks/test_bench_rating.py.)"""
    figures = [
        {"test": "t", "name": check.RATING_ACCURACY, "median_rel_err": 2e-5, "max_rel_err": 3e-4,
         "autocast_median_rel_err": 9e-5, "autocast_max_rel_err": 2e-3, "no_worse_than_autocast": True},
        {"test": "t", "name": check.RATING_WORK, "trie_gmac": 7963.0, "sharing": 3.97, "engine_gflop_s": 41000.0,
         "gemm_roof_gflop_s": 410000.0, "engine_of_roof": 0.1, "naive_gflop_s": 9000.0, "ratio": 18.0,
         "ratio_ceiling": 180.0},
        {"test": "u", "name": "something else", "x": 1.0},
    ]
    s = check.rating_summary(figures)
    assert s["median_rel_err"] == 2e-5 and s["no_worse_than_autocast"] is True
    assert s["engine_of_roof"] == 0.1 and s["gemm_roof_gflop_s"] == 410000.0
    assert check.rating_summary(figures[2:]) is None
    md = "\n".join(check._rating_lines(s))
    assert "median 2e-05, max 0.0003" in md and "0.1 of a plain bf16 GEMM" in md and "ceiling 180x" in md
    assert check._rating_lines(None) == []


def test_benchmarks_stage_selects_the_gpu_benchmarks_and_the_host_bf16_one():
    proc = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "benchmarks"), "--collect-only", "-q",
                           "-m", check.BENCH_MARKERS, "-p", "no:cacheprovider"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    ids = [ln for ln in proc.stdout.splitlines() if "::" in ln]
    assert any("test_bench_rating_gpu_block1" in i for i in ids)
    assert any("test_bench_rating_cpu_bf16_block1" in i for i in ids)
    assert not any("test_bench_rating_cpu_block1" in i for i in ids)  # the fp32 CPU benchmarks stay out
