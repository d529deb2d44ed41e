"""Mutation check: plant one small bug at a time in a copy of the repository and see whether the tests catch it.

    python tools/mutants.py                  # every mutant; prints a table mutant -> caught / survived
    python tools/mutants.py --only NAME ...  # some of them (names from --list)
    python tools/mutants.py --list

The working tree is copied (tracked and untracked, not ignored files; rsync, so a rerun copies only what changed) to
``--workdir`` (default ``/tmp/dna_fast_mutants/repo``), whose extension is built there CPU-only
(``DNA_FAST_CPU_ONLY=1``, incrementally by ninja): this checkout and its ``dna_fast/_C*.so`` are never touched. Each
mutant replaces one exact snippet of one file of the copy (a mutant whose snippet is no longer found exactly once is
reported ``stale``, never skipped silently), rebuilds the extension when the file is C++, runs the tests named for it
and puts the file back. First every selected test command runs on the unmutated copy: a mutant only counts as caught
by tests that pass without it (a failing baseline is reported and stops the run).

A mutant is *caught* when its tests fail (or crash), *survived* when they pass. Exit status: 0 when every mutant was
caught, 1 otherwise. Run it under ``nice``: the C++ mutants recompile one or two translation units each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # exact snippet, found once
    new: str
    tests: tuple[str, ...]  # pytest arguments (files, -k expressions)
    why: str

    @property
    def native(self) -> bool:
        return self.path.startswith("csrc/")


MUTANTS = [
    # ------------------------------------------------------------------ rating engine (Python)
    Mutant("engine_bn_eps", "dna_fast/_rating_engine.py",
           "bn.bias.float(), float(bn.eps),", "bn.bias.float(), float(bn.eps) * 100,",
           ("tests/test_rating.py", "-k", "exact_dna_mini or cells_of"),
           "every BatchNorm eps of the engine 1e-5 -> 1e-3 (the issue's example)"),
    Mutant("engine_se_bias", "dna_fast/_rating_engine.py",
           "gate = torch.sigmoid(torch.addmm(g.be, r, g.we))", "gate = torch.sigmoid(torch.mm(r, g.we))",
           ("tests/test_rating.py", "-k", "exact_dna_mini or cells_of"),
           "the SE expand bias dropped from the gate"),
    Mutant("engine_calib_biased_var", "dna_fast/_rating_engine.py",
           "return mean, var * (rows / max(rows - 1, 1))", "return mean, var",
           ("tests/test_rating.py", "-k", "exact_dna_mini or cells_of"),
           "recalibrated BN running variance biased instead of unbiased"),
    # ------------------------------------------------------------------ search
    Mutant("search_budget_strict", "dna_fast/search.py",
           "feas = np.flatnonzero((states.cost <= cap).all(1)) if dims",
           "feas = np.flatnonzero((states.cost < cap).all(1)) if dims",
           ("tests/test_search.py", "-k", "brute_force or top_k or non_finite"),
           "an architecture exactly at the budget treated as over it"),
    Mutant("search_dominance_ties", "dna_fast/search.py",
           "rec = lo < prev_min", "rec = lo <= prev_min",
           ("tests/test_search.py", "-k", "brute_force or top_k or non_finite"),
           "a candidate of equal loss counted as a new record in the 1-D dominance layers"),
    # ------------------------------------------------------------------ CPU kernels (C++)
    Mutant("cpu_nhwc_dw_window", "csrc/cpu/nhwc_avx2.h",
           "if (kx >= 0 && kx < K) acc[t]", "if (kx >= 0 && kx < K - 1) acc[t]",
           ("tests/test_row_kernels.py", "-k", "channels_last_direct or expand"),
           "off-by-one window: the AVX2 channels_last depthwise conv skips its last tap column"),
    Mutant("cpu_nchw_dw_stride", "csrc/cpu/dwconv_bn_act_kernel.cpp",
           "DNA_DW_CASE(3, 1) DNA_DW_CASE(3, 2)",
           "DNA_DW_CASE(3, 1) if (k == 3 && s == 2) return dw_plane_impl<3, 1>(in, Wp, w, out, Ho, Wo, scale, "
           "shift, with_sums);",
           ("tests/test_kernels.py", "-k", "dwconv"),
           "wrong stride: the NCHW direct kernel (k = 3, output width >= 24) computes stride 2 with stride 1"),
    Mutant("cpu_se_gate_bias", "csrc/cpu/se_project_kernel.cpp",
           "at::Tensor gate = at::addmm(f32(b_expand), h, f32(w_expand).t()).contiguous();",
           "at::Tensor gate = at::mm(h, f32(w_expand).t()).contiguous();",
           ("tests/test_kernels.py", "-k", "se_gate"),
           "the SE expand bias dropped in the CPU se_gate"),
    Mutant("cpu_swish_poly", "csrc/cpu/nhwc_avx2.h",
           "_mm256_set1_ps(6.9314694e-1f)", "_mm256_set1_ps(6.93e-1f)",
           ("tests/test_row_kernels.py", "-k", "swish"),
           "one coefficient of the AVX2 swish's 2^f polynomial rounded (1e-4 relative error)"),
    Mutant("cpu_expand_stale_ring", "csrc/cpu/nhwc_avx2.h",
           "if (tag[slot] != iy) {", "if (tag[slot] < 0) {",
           ("tests/test_row_kernels.py", "-k", "expand"),
           "expand_dwconv reuses a ring slot's old expanded row instead of expanding the new one"),
    # ------------------------------------------------------------------ training, data
    Mutant("distill_amp_target", "dna_fast/distill.py",
           "loss = self.criterion(out, target)\n",
           "loss = self.criterion(out, target if self._dtype is None else 0.5 * target)\n",
           ("tests/test_distill.py", "-k", "amp"),
           "under AMP the student is trained towards a mis-scaled teacher feature"),
    Mutant("retrain_ema_step", "dna_fast/retrain.py",
           "ema.update(model, step=step + 1)", "ema.update(model, step=step)",
           ("tests/test_retrain.py", "-k", "ema"),
           "the EMA copies the weights on two updates instead of one"),
    Mutant("retrain_no_smoothing", "dna_fast/retrain.py",
           "nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)", "nn.CrossEntropyLoss()",
           ("tests/test_retrain.py", "-k", "smoothed"),
           "retrain.label_smoothing ignored"),
    Mutant("teacher_no_nan_stop", "dna_fast/teacher.py",
           "if not torch.isfinite(loss):  # stop before", "if False:  # stop before",
           ("tests/test_teacher.py", "-k", "nan"),
           "teacher training steps on with a NaN loss"),
    Mutant("data_no_flip", "dna_fast/data/tv.py",
           "if rng.random() < 0.5:", "if rng.random() < 0.0:",
           ("tests/test_data.py", "-k", "augmentation"),
           "the train-time horizontal flip never happens"),
    Mutant("data_crop_scale", "dna_fast/data/tv.py",
           "scale=(0.08, 1.0)", "scale=(0.5, 1.0)",
           ("tests/test_data.py", "-k", "augmentation"),
           "random resized crop areas from 50 % instead of 8 %"),
    Mutant("io_damaged_traceback", "dna_fast/_io.py",
           "raise _damaged(path, what, e, fix) from e\n\n\ndef read_table",
           "raise\n\n\ndef read_table",
           ("tests/test_io.py", "tests/test_retrain.py", "tests/test_teacher.py", "-k", "damaged"),
           "a damaged checkpoint raises the decoder's own exception again"),
]


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--workdir", default="/tmp/dna_fast_mutants/repo", help="where the copy lives")
    args = p.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:26s} {m.path:34s} {m.why}")
        return 0
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        raise SystemExit(f"unknown mutant(s): {', '.join(sorted(unknown))} (see --list)")
    chosen.sort(key=lambda m: m.native)  # the Python mutants first: each C++ one needs a rebuild
    work = Path(args.workdir).resolve()
    if work == REPO or REPO in work.parents:
        raise SystemExit("--workdir must lie outside the repository")
    logs = work.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DNA_FAST_CPU_ONLY="1", PYTHONPATH=str(work), OMP_NUM_THREADS="1",
               MAX_JOBS=os.environ.get("MAX_JOBS", "2"),
               PYTHONDONTWRITEBYTECODE="1", CUDA_VISIBLE_DEVICES="")
    print(f"copy: {work}   logs: {logs}", flush=True)
    sync_copy(work)
    build(work, env, logs / "build.log")
    where = subprocess.run([sys.executable, "-c", "import dna_fast, dna_fast._C; print(dna_fast.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)
    if not where.stdout.startswith(str(work)):
        raise SystemExit(f"the copy's dna_fast is not the one imported there: {where.stdout}{where.stderr}")
    # baseline: every test command passes on the unmutated copy
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
        result = "survived" if rc == 0 else "caught"
        detail = "" if rc in (0, 1) else f"pytest exit {rc}" if rc > 0 else f"crashed (signal {-rc})"
        rows.append((m, result, sec, detail))
        print(f"  {m.name}: {result} ({sec:.0f} s)", flush=True)
    if any(m.native for m in chosen):
        build(work, env, logs / "build.log")  # leave the copy unmutated
    print()
    print("| mutant | planted bug | tests | result |")
    print("|---|---|---|---|")
    for m, result, _sec, detail in rows:
        shown = " ".join(m.tests)
        note = f" ({detail})" if detail else ""
        print(f"| `{m.name}` | {m.why} (`{m.path}`) | `{shown}` | **{result}**{note} |")
    caught = sum(r[1] == "caught" for r in rows)
    print(f"\n{caught} of {len(rows)} mutants caught")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
