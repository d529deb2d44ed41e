"""Which implementation runs the fused passes of the rating engine (``dna_fast._rating_engine``), per device.

The engine's fused passes (``expand_dwconv``, ``swish_rows_``, ``linear_sq_err``, ``linear_col_dev``) exist as CPU
kernels (csrc/cpu/nhwc_kernels.cpp) and as CUDA kernels (csrc/cuda/rating_kernels.cu); the engine also has a plain
PyTorch path. ``rate_block(..., kernels=...)`` picks:

* ``"auto"`` (default): on CPU in fp32 the CPU kernels; on a CUDA device, per layer shape, the CUDA kernels or plain
  PyTorch, whichever ran faster when both were timed once on this GPU (the choice is cached for the process and
  printed with ``progress=True``); elsewhere plain PyTorch.
* ``"fused"``: the fused kernels of the device, without timing (an error where they do not exist).
* ``"torch"``: plain PyTorch everywhere.
* ``"cuda-emulated"``: CPU tensors through the CUDA kernels run by the CPU emulator (``torch.ops.dna_fast_emu``): the
  GPU code path (launchers, launch configuration, kernels) end to end without a GPU. Slow: for tests.

bf16 / fp16 on the CPU (``engine_dtype``): with ``"auto"`` a bf16 rating runs in bf16 (plain PyTorch, whose oneDNN
GEMMs and convs use the bf16 dot products) only where the CPU has AVX512-BF16 or AMX; elsewhere, and for fp16, the
fp32 CPU kernels rate instead (on an AVX2 CPU a bf16 GEMM ran 30x slower than fp32: docs/benchmarks.md).
``DNA_FAST_CPU_BF16=0`` turns the bf16 path off (fp32 kernels everywhere), like ``DNA_FAST_CPU_ISA=avx2`` for AVX-512.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable

import torch
from torch import Tensor

from . import ops as _ops

KERNELS = ("auto", "fused", "torch", "cuda-emulated")

# (device, dtype, mode, layer shape) -> (fused chosen, fused seconds, plain seconds)
_CHOICES: dict[tuple, tuple[bool, float, float]] = {}


class FusedOps:
    """The engine's fused passes from one operator namespace (``torch.ops.dna_fast`` on CUDA tensors,
    ``torch.ops.dna_fast_emu`` for the emulated CUDA path), with the signatures of ``dna_fast.ops``."""

    def __init__(self, namespace) -> None:
        self.ns = namespace

    def expand_dwconv(self, x: Tensor, w1: Tensor, b1: Tensor, w_dw: Tensor, scale: Tensor | None = None,
                      shift: Tensor | None = None, stride: int = 1) -> tuple[Tensor, ...]:
        if scale is None:
            return self.ns.expand_dwconv_stats(x, w1, b1, w_dw, stride)
        return self.ns.expand_dwconv_bn_act(x, w1, b1, w_dw, scale, shift, stride)

    def swish_rows_(self, x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None,
                    groups: int = 0) -> Tensor:
        return self.ns.swish_rows_(x, scale, shift, groups)

    def linear_sq_err(self, x: Tensor, weight: Tensor, offset: Tensor, shift: Tensor,
                      gate: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.ns.linear_sq_err(x, weight, offset, shift, gate)

    def linear_col_dev(self, x: Tensor, weight: Tensor, mean: Tensor, gate: Tensor | None = None) -> Tensor:
        return self.ns.linear_col_dev(x, weight, mean, gate)


def has_cuda_kernels() -> bool:
    """Whether the extension was built with the rating engine's CUDA kernels."""
    if not _ops.HAS_NATIVE:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("dna_fast::linear_sq_err", "CUDA")
    except RuntimeError:
        return False


def has_emulated_kernels() -> bool:
    """Whether the CUDA kernels compiled against the CPU emulator are built (``dna_fast._C_emu``, which registers
    ``torch.ops.dna_fast_emu``; imported here on first use)."""
    if not _ops.HAS_NATIVE:
        return False
    try:
        importlib.import_module(f"{__package__}._C_emu")
    except ImportError:
        return False
    try:  # an older _C_emu may lack the rating ops
        return torch._C._dispatch_has_kernel_for_dispatch_key("dna_fast_emu::linear_sq_err", "CPU")
    except RuntimeError:
        return False


def resolve(kernels: str, device: torch.device, dtype: torch.dtype) -> tuple[object | None, bool]:
    """(the fused passes to use or None for plain PyTorch, whether to choose per layer shape by timing)."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r} is not one of {', '.join(map(repr, KERNELS))}")
    if kernels == "torch":
        return None, False
    if kernels == "cuda-emulated":
        if device.type != "cpu":
            raise ValueError(f"kernels='cuda-emulated' runs the CUDA kernels on CPU tensors; got device {device}: "
                             "use kernels='fused' or 'auto' on a GPU")
        if not has_emulated_kernels():
            raise RuntimeError("kernels='cuda-emulated' needs dna_fast._C_emu (the CUDA launchers compiled against the "
                               "CPU emulator); build it: python setup.py build_ext --inplace (without "
                               "DNA_FAST_NO_EMU=1)")
        return FusedOps(torch.ops.dna_fast_emu), False
    if device.type == "cuda":
        if has_cuda_kernels():
            return FusedOps(torch.ops.dna_fast), kernels == "auto"
        if kernels == "fused":
            raise RuntimeError("kernels='fused' on a CUDA device needs the extension built with its CUDA kernels "
                               "(a CUDA build of torch and nvcc at install time); use kernels='auto' or 'torch'")
        return None, False
    if device.type == "cpu" and _ops.HAS_NATIVE and dtype == torch.float32:
        return _ops, False
    if kernels == "fused":
        raise RuntimeError(f"kernels='fused': no fused rating kernels for {device.type} in {dtype} (CPU: fp32 "
                           "only); use kernels='auto' or 'torch'")
    return None, False


def cpu_bf16_supported() -> bool:
    """Whether this CPU has bf16 dot products (AVX512-BF16 or AMX tiles) and ``DNA_FAST_CPU_BF16`` (read at each
    call) does not turn the bf16 rating path off (``0``)."""
    if os.environ.get("DNA_FAST_CPU_BF16", "1").strip() == "0":
        return False
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def engine_dtype(kernels: str, device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype the engine computes in for a requested ``dtype``: the request, except bf16 / fp16 on the CPU with
    ``kernels`` ``"auto"`` or ``"fused"`` and the extension built: there the fp32 CPU kernels rate, unless the request
    is bf16, ``kernels="auto"`` and the CPU has bf16 dot products (``cpu_bf16_supported``)."""
    if device.type != "cpu" or dtype == torch.float32 or kernels not in ("auto", "fused") or not _ops.HAS_NATIVE:
        return dtype
    if dtype == torch.bfloat16 and kernels == "auto" and cpu_bf16_supported():
        return dtype
    return torch.float32


_REPEATS = 3  # timed runs per path after one warm-up run (the best counts)


def _seconds(fn: Callable[[], None], device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up: lazy initialisation, cuDNN / cuBLAS heuristics
    sync()
    best = float("inf")
    for _ in range(_REPEATS):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def choose(key: tuple, fused: Callable[[], None], plain: Callable[[], None], device: torch.device,
           say: Callable[[str], None] | None = None) -> bool:
    """Whether the fused passes run for a layer shape: timed once per process (fused only when not slower)."""
    hit = _CHOICES.get(key)
    if hit is None:
        tf, tp = _seconds(fused, device), _seconds(plain, device)
        hit = (tf <= tp, tf, tp)
        _CHOICES[key] = hit
        if say is not None:
            say(f"rating kernels {describe(key)}: fused {tf * 1e3:.3f} ms, torch {tp * 1e3:.3f} ms -> "
                f"{'fused' if hit[0] else 'torch'}")
    return hit[0]


def describe(key: tuple) -> str:
    device, dtype, mode, shape = key
    return f"[{device} {str(dtype).replace('torch.', '')} {mode} {shape}]"


def choices() -> dict[str, tuple[str, float, float]]:
    """The choices made so far in this process: layer shape -> (``"fused"`` / ``"torch"``, fused s, torch s)."""
    return {describe(k): ("fused" if v[0] else "torch", v[1], v[2]) for k, v in _CHOICES.items()}


def clear_choices() -> None:
    """Forget the timed choices (the next rating times each layer shape again)."""
    _CHOICES.clear()
