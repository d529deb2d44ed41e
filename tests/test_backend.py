"""backend_info(): what was built and what runs. Not skipped without the extension: it says so there."""

from __future__ import annotations

import importlib.util
import os
import platform

import pytest
import torch

import dna_fast
from dna_fast import ops


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {w for line in f if line.startswith("flags") for w in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def test_backend_info_reports_the_build():
    info = dna_fast.backend_info()
    for key in ("version", "torch", "cpu_ops", "cpu_isa_build", "cpu_isa_runtime", "cpu_vector_kernels", "cuda_ops",
                "cuda_arch_list", "dali", "gpu"):
        assert key in info
    built = importlib.util.find_spec("dna_fast._C") is not None
    assert info["cpu_ops"] is built is ops.HAS_NATIVE  # a built extension that does not load fails here
    if info["cuda_ops"]:
        assert info["cuda_arch_list"] and info["cpu_ops"]
    if not built:
        assert info["cpu_isa_build"] is None and info["cpu_vector_kernels"] is False


needs_ext = pytest.mark.skipif(not ops.HAS_NATIVE, reason="dna_fast._C not built")


@needs_ext
def test_cpu_isa_matches_this_cpu():
    info = dna_fast.backend_info()
    flags = _cpu_flags()
    if platform.machine() not in ("x86_64", "AMD64") or not flags:
        assert info["cpu_isa_runtime"] == "baseline"
        return
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        want = "avx512"
    elif {"avx2", "fma"} <= flags:
        want = "avx2"
    else:
        want = "baseline"
    assert info["cpu_isa_runtime"] == want
    # setup.py compiles the AVX2 kernels when the build machine has AVX2 + FMA + F16C (this one, for make test),
    # unless DNA_FAST_NO_AVX2=1 asked for the portable build
    if {"avx2", "fma", "f16c"} <= flags and not os.environ.get("DNA_FAST_NO_AVX2"):
        assert info["cpu_isa_build"] in ("avx2", "avx512") and info["cpu_vector_kernels"] is True


@needs_ext
def test_vector_path_runs_where_the_cpu_has_it():
    """Each op with an AVX2 kernel goes through a vector kernel (the extension counts their calls, AVX-512 GEMMs
    included where the CPU has them) on fp32 with C % 8 == 0 when the CPU and the build have AVX2, and through the
    ATen fallback otherwise (C = 5)."""
    from dna_fast import _C

    vector = dna_fast.backend_info()["cpu_vector_kernels"]
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    c = 16
    w_dw, sc, sh = torch.randn(c, 1, 3, 3), torch.rand(c) + 0.5, torch.randn(c)
    calls = {
        "dwconv_bn_act": lambda c: ops.dwconv_bn_act(cl(torch.randn(2, c, 9, 9)), w_dw[:c], sc[:c], sh[:c], 1),
        "dwconv_stats": lambda c: ops.dwconv_stats(torch.randn(2, c, 9, 9), w_dw[:c], 2),
        "swish_rows_": lambda c: ops.swish_rows_(torch.randn(12, c), sc[:c], sh[:c], 3),
        "linear_swish": lambda c: ops.linear_swish(torch.randn(12, 8), torch.randn(8, c), torch.randn(c)),
        "expand_dwconv": lambda c: ops.expand_dwconv(cl(torch.randn(1, 8, 7, 7)), torch.randn(8, c), torch.randn(c),
                                                     w_dw[:c], sc[:c], sh[:c], 1),
        "linear_sq_err": lambda c: ops.linear_sq_err(torch.randn(12, 8), torch.randn(8, c), torch.randn(12, c),
                                                     torch.randn(c)),
    }
    for name, call in calls.items():
        before = _C.cpu_vector_calls()
        call(16)
        ran = _C.cpu_vector_calls() - before
        assert (ran > 0) == vector, f"{name}: {ran} AVX2 kernel calls, vector path expected: {vector}"
        before = _C.cpu_vector_calls()
        call(5)  # not a multiple of 8: the ATen fallback
        assert _C.cpu_vector_calls() == before, name
