"""The fused scale-shift-swish op vs the eager PyTorch sequence it replaces (x * s + b, then SiLU)."""

import time

import pytest
import torch
from conftest import report

from dna_fast import ops

pytestmark = pytest.mark.skipif(not ops.HAS_NATIVE, reason="dna_fast._C not built")

# dna space shapes (batch 16): block 1 hidden, block 2 expanded, block 4 expanded
SHAPES = [(16, 240, 28, 28), (16, 480, 14, 14), (16, 144, 56, 56)]


def _eager(x, scale, shift):
    return torch.nn.functional.silu(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))


def _median_time(f, *args, repeats=20):
    f(*args)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(*args)
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_scale_shift_swish_cpu(benchmark, shape, layout):
    x = torch.randn(shape)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    scale, shift = torch.randn(shape[1]), torch.randn(shape[1])
    torch.testing.assert_close(ops.scale_shift_swish(x, scale, shift), _eager(x, scale, shift), rtol=1e-5, atol=1e-5)
    benchmark(ops.scale_shift_swish, x, scale, shift)
    t_fused, t_eager = _median_time(ops.scale_shift_swish, x, scale, shift), _median_time(_eager, x, scale, shift)
    report(f"scale_shift_swish cpu {layout} {shape}", fused_ms=t_fused * 1e3, eager_ms=t_eager * 1e3,
           speedup=t_eager / t_fused)
