"""Plants one bug at a time in a copy of the CUDA kernel headers (csrc/cuda/*_kernels.cuh) and checks that the
emulator tests (built with ASan + UBSan) fail for each: a removed barrier, off-by-one bounds, a dropped guard, a
non-atomic store, a wrong loop stride.

    python csrc/tests/cudasim/mutants.py [--jobs 2] [--only NAME]

Prints one line per mutant (caught / MISSED) and exits 1 if any was missed. Needs g++ and CUDA's include directory
(for the fp16 / bf16 types; CUDA_HOME or /usr/local/cuda). Takes a few minutes (one build per mutant).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# name, kernel header, text, replacement, test
MUTANTS = [
    ("dwconv nchw: barrier after staging removed", "dwconv_bn_act_kernels.cuh",
     "                                                          : 0.f;\n    }\n    __syncthreads();",
     "                                                          : 0.f;\n    }", "test_dwconv_emu"),
    ("dwconv nchw: last tile element not staged", "dwconv_bn_act_kernels.cuh",
     "i < kInH * kInW; i += kTileThreads", "i < kInH * kInW - 1; i += kTileThreads", "test_dwconv_emu"),
    ("dwconv nchw: off-by-one output column bound", "dwconv_bn_act_kernels.cuh",
     "if (oy < Ho && ox < Wo) {", "if (oy < Ho && ox < Wo - 1) {", "test_dwconv_emu"),
    ("dwconv nchw: tile loop stride 1 instead of gridDim.y", "dwconv_bn_act_kernels.cuh",
     "t < tiles; t += gridDim.y", "t < tiles; t += 1", "test_dwconv_emu"),
    ("dwconv cl: channel guard off by one", "dwconv_bn_act_kernels.cuh",
     "  if (c < C) {\n    const float sc", "  if (c <= C) {\n    const float sc", "test_dwconv_emu"),
    ("dwconv cl: sums stored, not added atomically", "dwconv_bn_act_kernels.cuh",
     "atomicAdd(sums + n * C + c, total);", "sums[n * C + c] = total;", "test_dwconv_emu"),
    ("dwconv cl: unclamped last pixel chunk", "dwconv_bn_act_kernels.cuh",
     "p1 = p0 + kClPixels < pixels ? p0 + kClPixels : pixels;", "p1 = p0 + kClPixels;", "test_dwconv_emu"),
    ("dwconv launch: grid.y not capped", "dwconv_bn_act_kernels.cuh",
     "static_cast<unsigned>(l.tiles) < max_grid_y ? static_cast<unsigned>(l.tiles) : max_grid_y",
     "static_cast<unsigned>(l.tiles)", "test_dwconv_emu"),
    ("se_gate: barrier before the expand removed", "se_project_kernels.cuh",
     "    if (lane == 0) h[r] = swishf(acc + br[r]);\n  }\n  __syncthreads();",
     "    if (lane == 0) h[r] = swishf(acc + br[r]);\n  }", "test_se_project_emu"),
    ("se_gate: shuffle reduction one step short", "se_project_kernels.cuh",
     "for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync", "for (int off = 16; off > 1; off >>= 1) acc += "
     "__shfl_down_sync", "test_se_project_emu"),
    ("pw_epilogue: off-by-one chunk end", "se_project_kernels.cuh",
     "j < end; j += blockDim.x", "j <= end; j += blockDim.x", "test_se_project_emu"),
    ("scale_shift_swish: channel of the wrong layout", "scale_shift_swish_kernels.cuh",
     "y[i] = static_cast<scalar_t>(scale_shift_swish(static_cast<float>(x[i]), scale[c], shift[c]));",
     "y[i] = static_cast<scalar_t>(scale_shift_swish(static_cast<float>(x[i]), scale[channel_of(i, C, HW, false)], "
     "shift[c]));", "test_elementwise_emu"),
]


def cuda_include() -> str:
    for base in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if base and os.path.exists(os.path.join(base, "include", "cuda_fp16.h")):
            return os.path.join(base, "include")
    return ""


def run_mutant(m: tuple, tmp_root: str) -> tuple[str, bool, str]:
    name, header, old, new, test = m
    d = tempfile.mkdtemp(dir=tmp_root)
    shutil.copytree(os.path.join(ROOT, "csrc", "cuda"), os.path.join(d, "cuda"))
    path = os.path.join(d, "cuda", header)
    with open(path) as f:
        src = f.read()
    if src.count(old) != 1:
        return name, False, f"the text to mutate occurs {src.count(old)} times in {header} (update mutants.py)"
    with open(path, "w") as f:
        f.write(src.replace(old, new))
    exe = os.path.join(d, test)
    inc = cuda_include()
    cmd = ["g++", "-std=c++20", "-O0", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
           "-I" + os.path.join(d, "cuda"), "-I" + os.path.join(ROOT, "csrc", "tests"),
           "-I" + os.path.join(ROOT, "csrc", "include")] + (["-isystem", inc] if inc else []) + [
        os.path.join(ROOT, "csrc", "tests", "cudasim", test + ".cpp"), "-o", exe]
    build = subprocess.run(cmd, capture_output=True, text=True)
    if build.returncode != 0:
        return name, True, "caught at compile time: " + build.stderr.strip().splitlines()[-1][:100]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", CUDASIM_FAIL_FAST="1")
    run = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=900)
    out = (run.stdout + run.stderr).strip().splitlines()
    flagged = [line for line in out if "FAILED" in line or "ERROR" in line or "runtime error" in line]
    why = flagged[0] if flagged else (out[-1] if out else "")
    return name, run.returncode != 0, why[:140]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="run the mutants whose name contains this")
    args = ap.parse_args()
    todo = [m for m in MUTANTS if args.only in m[0]]
    with tempfile.TemporaryDirectory(prefix="cudasim_mutants_") as tmp, ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda m: run_mutant(m, tmp), todo))
    missed = 0
    for name, caught, why in results:
        missed += not caught
        print(f"{'caught' if caught else 'MISSED'}  {name}: {why}")
    print(f"{len(results) - missed} of {len(results)} planted bugs caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
