"""Builds dna_fast._C with torch.utils.cpp_extension (ninja).

CPU ops always; CUDA ops too when torch is a CUDA build and nvcc is found (TORCH_CUDA_ARCH_LIST, default
"8.0;9.0"). DNA_FAST_CPU_ONLY=1 forces a CPU-only build; DNA_FAST_DEBUG=1 builds with -O0 -g. Also
dna_fast._C_emu: the CUDA launchers compiled against the CPU emulator for the tests (DNA_FAST_NO_EMU=1 skips
it). A source that fails to compile fails the install: there is no silent fallback.
"""

import glob
import os
import shutil

from setuptools import setup


# torch guesses CUDA_HOME from `which nvcc`; where that is a wrapper or a symlink (/usr/local/bin/nvcc) the guess
# misses the toolkit's lib64. Ask nvcc where it lives before torch.utils.cpp_extension reads CUDA_HOME.
def _nvcc_home():
    import subprocess  # noqa: PLC0415

    try:
        out = subprocess.run(["nvcc", "-v", "--dryrun", "-c", "-x", "cu", "/dev/null"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (out.stdout + out.stderr).splitlines():
        if "_HERE_=" in line:
            return os.path.dirname(line.split("_HERE_=", 1)[1].strip())
    return None


if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and shutil.which("nvcc"):
    _home = _nvcc_home()
    if _home:
        os.environ["CUDA_HOME"] = _home

try:
    import torch  # noqa: E402
except ImportError:  # pip's isolated build environment holds no torch (pyproject.toml does not ask for one)
    raise SystemExit("dna_fast builds its extension against the torch already installed, and none was found: "
                     "install torch (>= 2.11) first, then `pip install --no-build-isolation .`") from None
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _cuda_wheel_includes() -> list:
    """Headers of the CUDA libraries torch's wheel depends on (cuSPARSE, cuBLAS, ...), installed by pip under
    nvidia/cu13/include: a bare CUDA toolkit may lack them, and ATen's CUDA headers include them."""
    try:
        import nvidia.cu13 as cu13  # noqa: PLC0415
    except ImportError:
        return []
    return [p for p in (os.path.join(d, "include") for d in cu13.__path__) if os.path.isdir(p)]


def _cpu_vector_flags() -> list:
    """AVX2 + FMA for ATen's at::vec::Vectorized in the CPU kernels, when the build machine has them (as every
    x86-64 server of the last decade does). DNA_FAST_NO_AVX2=1 builds the portable generic version."""
    if _flag("DNA_FAST_NO_AVX2"):
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return []
    if {"avx2", "fma", "f16c"} <= flags:
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    return []


def _extension():
    debug = _flag("DNA_FAST_DEBUG")
    with_cuda = (
        not _flag("DNA_FAST_CPU_ONLY") and torch.version.cuda is not None and CUDA_HOME is not None
        and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    )
    # relative paths: setuptools rejects absolute source paths
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += ["-std=c++20", "-fopenmp"] + _cpu_vector_flags()
    define_macros = []
    kwargs = dict(
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        extra_link_args=["-fopenmp"],
        define_macros=define_macros,
    )
    if with_cuda:
        arch_list = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        kwargs["include_dirs"] += _cuda_wheel_includes()
        nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "--use_fast_math"]
        nvcc += ["-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
        define_macros += [("WITH_CUDA", None), ("DNA_FAST_CUDA_ARCH_LIST", f'"{arch_list}"')]
        return CUDAExtension("dna_fast._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    return CppExtension("dna_fast._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)


def _emu_extension():
    """dna_fast._C_emu: the CUDA launchers of csrc/cuda compiled a second time, as host C++ against the CPU emulator
    (csrc/tests/cudasim/cudasim.h), registered for CPU tensors as torch.ops.dna_fast_emu.<op>: tests run the whole
    CUDA code path without a GPU (docs/emulator.md). Needs no nvcc; CUDA's include directory, when present, gives
    the emulator CUDA's own vector types. A module of its own, symbols hidden, so its host-compiled kernels never
    meet the nvcc-compiled ones of dna_fast._C. DNA_FAST_NO_EMU=1 skips it."""
    include_dirs = [os.path.join(ROOT, "csrc", d) for d in ("include", "tests", "cuda")]
    if CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_fp16.h")):
        include_dirs.append(os.path.join(CUDA_HOME, "include"))
    cxx = ["-O1", "-std=c++20", "-fvisibility=hidden", "-Wno-unknown-pragmas", "-Wno-sign-compare"]
    return CppExtension("dna_fast._C_emu", sorted(glob.glob("csrc/cuda/emu/*.cpp")), include_dirs=include_dirs,
                        extra_compile_args={"cxx": cxx})


setup(
    # DNA_FAST_SKIP_EXT=1: install the Python package only (the Makefile builds the extension in place, incrementally)
    ext_modules=[] if _flag("DNA_FAST_SKIP_EXT") else [_extension()] + ([] if _flag("DNA_FAST_NO_EMU")
                                                                       else [_emu_extension()]),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
