"""The fused scale-shift-swish op against its pure-PyTorch reference (extension-cpp style)."""

import pytest
import torch
from conftest import DEVICES

from dna_fast import ops

pytestmark = pytest.mark.skipif(not ops.HAS_NATIVE, reason="dna_fast._C not built")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def sample_inputs(device, dtype=torch.float32, requires_grad=False):
    """(x, scale, shift) over layouts and shapes: NCHW, channels_last, non-contiguous, batch 0 and 1, odd sizes."""

    def mk(x, c):
        scale = torch.randn(c, device=device)
        shift = torch.randn(c, device=device)
        x = x.to(device=device, dtype=dtype)
        if requires_grad:
            x, scale, shift = (t.detach().requires_grad_() for t in (x, scale, shift))
        return x, scale, shift

    yield mk(torch.randn(2, 3, 5, 7), 3)
    yield mk(torch.randn(4, 16, 9, 9).to(memory_format=torch.channels_last), 16)
    yield mk(torch.randn(3, 8, 10, 6)[:, :, ::2, 1:], 8)  # non-contiguous
    yield mk(torch.randn(6, 5, 4, 4).transpose(0, 1)[:, :6], 6)  # batch/channel swapped view
    yield mk(torch.randn(1, 24, 1, 1), 24)
    yield mk(torch.randn(0, 4, 3, 3), 4)


def _tol(dtype):
    return {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_reference(device, dtype):
    for x, scale, shift in sample_inputs(device, dtype):
        got = ops.scale_shift_swish(x, scale, shift)
        want = ops.scale_shift_swish_reference(x, scale, shift)
        assert got.dtype == x.dtype and got.shape == x.shape
        rtol, atol = _tol(dtype)
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_error_within_twice_pytorch(device):
    """flash-attention's criterion: our fp16/bf16 error vs fp32 at most 2x eager PyTorch's at the same precision."""
    x = torch.randn(8, 32, 14, 14, device=device)
    scale, shift = torch.randn(32, device=device), torch.randn(32, device=device)
    exact = ops.scale_shift_swish_reference(x, scale, shift).double()
    for dtype in (torch.float16, torch.bfloat16):
        xh = x.to(dtype)
        ours = ops.scale_shift_swish(xh, scale, shift).double()
        eager = torch.nn.functional.silu(xh * scale.to(dtype).view(1, -1, 1, 1) + shift.to(dtype).view(1, -1, 1, 1))
        assert (ours - exact).abs().max() <= 2 * (eager.double() - exact).abs().max() + 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_keeps_memory_format(device):
    x = torch.randn(2, 8, 5, 5, device=device).to(memory_format=torch.channels_last)
    y = ops.scale_shift_swish(x, torch.randn(8, device=device), torch.randn(8, device=device))
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_match_reference(device):
    for x, scale, shift in sample_inputs(device, torch.float32, requires_grad=True):
        if x.numel() == 0:
            continue
        g = torch.randn_like(x)
        got = torch.autograd.grad(ops.scale_shift_swish(x, scale, shift), (x, scale, shift), g)
        want = torch.autograd.grad(ops.scale_shift_swish_reference(x, scale, shift), (x, scale, shift), g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_double(device):
    x = torch.randn(2, 3, 4, 5, device=device, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(3, device=device, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(3, device=device, dtype=torch.float64, requires_grad=True)
    # the kernel computes in fp32, so compare against finite differences loosely
    assert torch.autograd.gradcheck(ops.scale_shift_swish, (x, scale, shift), eps=1e-3, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for x, scale, shift in sample_inputs(device, torch.float32, requires_grad=True):
        torch.library.opcheck(torch.ops.dna_fast.scale_shift_swish, (x, scale, shift))
    x = torch.randn(2, 3, 4, 4, device=device)
    torch.library.opcheck(
        torch.ops.dna_fast.scale_shift_swish_backward, (torch.randn_like(x), x, torch.randn(3, device=device),
                                                        torch.randn(3, device=device))
    )


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).to(device)

    def f(x, scale, shift):
        return ops.scale_shift_swish(conv(x), scale, shift).mean()

    x = torch.randn(2, 4, 6, 6, device=device)
    scale, shift = torch.randn(4, device=device), torch.randn(4, device=device)
    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(x, scale, shift), f(x, scale, shift))


@pytest.mark.parametrize("device", DEVICES)
def test_user_errors_are_clear(device):
    x = torch.randn(2, 3, 4, 4, device=device)
    with pytest.raises(RuntimeError, match="shape \\[C\\]"):
        ops.scale_shift_swish(x, torch.randn(4, device=device), torch.randn(3, device=device))
    with pytest.raises(RuntimeError, match="4-D"):
        ops.scale_shift_swish(torch.randn(3, 4, device=device), torch.randn(3, device=device),
                              torch.randn(3, device=device))



@pytest.mark.parametrize("device", DEVICES)
def test_records_a_graph_only_where_a_gradient_is_needed(device):
    """The fused ops skip the Python autograd kernel where nothing needs a gradient (ops._differentiable_call) and
    record their backward where something does: the same output either way."""
    x = torch.randn(2, 8, 9, 9, device=device)
    w, sc, sh = torch.randn(8, 1, 3, 3, device=device), torch.randn(8, device=device), torch.randn(8, device=device)
    plain = ops.dwconv_bn_act(x, w, sc, sh, 1)
    assert plain.grad_fn is None and not plain.requires_grad
    ws = w.clone().requires_grad_()
    y = ops.dwconv_bn_act(x, ws, sc, sh, 1)
    assert y.grad_fn is not None
    torch.testing.assert_close(y.detach(), plain)
    with torch.no_grad():
        assert ops.dwconv_bn_act(x, ws, sc, sh, 1).grad_fn is None
    y.sum().backward()
    assert ws.grad is not None and ws.grad.shape == w.shape
    z = ops.scale_shift_swish(x.clone().requires_grad_(), sc, sh)
    assert z.grad_fn is not None and ops.scale_shift_swish(x, sc, sh).grad_fn is None
