"""The fused scale-shift-swish op vs the eager PyTorch sequence it replaces (x * s + b, then SiLU).

Baseline: the best eager form of the same step, ``silu_(addcmul(shift, x, scale))``: one pass for the affine part
and the activation in place (one output allocation, as the fused op has), on the same tensor and layout. Both are
checked against each other first and timed as the best of 20 alternating calls (``conftest.interleaved_min``).
"""

import pytest
import torch
from conftest import interleaved_min, report

from dna_fast import ops

pytestmark = pytest.mark.skipif(not ops.HAS_NATIVE, reason="dna_fast._C not built")

# dna space shapes (batch 16): block 1 hidden, block 2 expanded, block 4 expanded
SHAPES = [(16, 240, 28, 28), (16, 480, 14, 14), (16, 144, 56, 56)]


def _eager(x, scale, shift):
    return torch.nn.functional.silu(torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1)), inplace=True)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_scale_shift_swish_cpu(benchmark, shape, layout):
    x = torch.randn(shape)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    scale, shift = torch.randn(shape[1]), torch.randn(shape[1])
    ref = torch.nn.functional.silu(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))
    torch.testing.assert_close(ops.scale_shift_swish(x, scale, shift), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_eager(x, scale, shift), ref, rtol=1e-5, atol=1e-5)
    benchmark(ops.scale_shift_swish, x, scale, shift)
    t_fused, t_eager = interleaved_min(lambda: ops.scale_shift_swish(x, scale, shift), lambda: _eager(x, scale, shift),
                                       repeats=20)
    report(f"scale_shift_swish cpu {layout} {shape}", fused_ms=t_fused * 1e3, eager_ms=t_eager * 1e3,
           speedup=t_eager / t_fused)
