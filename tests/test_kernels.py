"""Fused MBConv kernels (issue 7) against their pure-PyTorch references: dwconv_bn_act, se_gate, pw_project and
mbconv_siblings over shapes, dtypes and layouts; half precision within 2x PyTorch's own error; gradients; opcheck;
torch.compile(fullgraph=True); clear user errors. CUDA variants are marked gpu and skip without a GPU."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES

from dna_fast import ops

pytestmark = pytest.mark.skipif(not ops.HAS_NATIVE, reason="dna_fast._C not built")

HALF = [torch.float16, torch.bfloat16]


def _layouts(x):
    """The same values as NCHW, channels_last and a non-contiguous view."""
    yield x
    yield x.to(memory_format=torch.channels_last)
    big = torch.zeros(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3], dtype=x.dtype, device=x.device)
    big[..., ::2] = x
    yield big[..., ::2]


def _half_ok(ours, eager, exact):
    """flash-attention's criterion: our half-precision error at most 2x that of eager PyTorch (both vs fp32)."""
    err = (ours.double() - exact.double()).abs().max().item()
    ref = (eager.double() - exact.double()).abs().max().item()
    assert err <= 2 * ref + 1e-6, (err, ref)


# ---------------------------------------------------------------- dwconv_bn_act


def dw_sample_inputs(device, dtype=torch.float32):
    """(x, weight, scale, shift, stride) over kernel sizes, strides, layouts, odd sizes, batch 0 / 1."""
    shapes = [(2, 8, 9, 9), (1, 5, 7, 11), (3, 4, 30, 28), (0, 4, 6, 6), (1, 3, 1, 1)]
    for i, shape in enumerate(shapes):
        for k in (3, 5, 7):
            for stride in (1, 2):
                x = torch.randn(shape, device=device).to(dtype)
                layouts = list(_layouts(x))
                c = shape[1]
                w = torch.randn(c, 1, k, k, device=device) * 0.3
                yield layouts[(i + k + stride) % 3], w, torch.randn(c, device=device), torch.randn(c, device=device), stride


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_dwconv_matches_reference(device, dtype):
    for x, w, sc, sh, s in dw_sample_inputs(device, dtype):
        y, sums = ops.dwconv_bn_act(x, w, sc, sh, s, with_sums=True)
        yr, sr = ops.dwconv_bn_act_reference(x, w, sc, sh, s, with_sums=True)
        assert y.dtype == x.dtype and y.shape == yr.shape and sums.dtype == torch.float32
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(y, yr, **tol)
        torch.testing.assert_close(sums, sr, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(ops.dwconv_bn_act(x, w, sc, sh, s), yr, **tol)  # without sums


@pytest.mark.parametrize("device", DEVICES)
def test_dwconv_keeps_memory_format(device):
    x = torch.randn(2, 8, 10, 10, device=device).to(memory_format=torch.channels_last)
    y = ops.dwconv_bn_act(x, torch.randn(8, 1, 3, 3, device=device), torch.ones(8, device=device),
                          torch.zeros(8, device=device))
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_dwconv_half_error_within_twice_pytorch(device):
    x = torch.randn(4, 32, 28, 28, device=device)
    for k, s in ((3, 1), (7, 2)):
        w, sc, sh = torch.randn(32, 1, k, k, device=device) * 0.3, torch.randn(32, device=device), torch.randn(
            32, device=device)
        exact = ops.dwconv_bn_act_reference(x, w, sc, sh, s)
        for dtype in HALF:
            xh, wh = x.to(dtype), w.to(dtype)
            eager = F.silu(F.conv2d(xh, wh, stride=s, padding=k // 2, groups=32) * sc.to(dtype).view(1, -1, 1, 1)
                           + sh.to(dtype).view(1, -1, 1, 1))
            _half_ok(ops.dwconv_bn_act(xh, w, sc, sh, s), eager, exact)


@pytest.mark.parametrize("device", DEVICES)
def test_dwconv_gradients_match_reference(device):
    for cl in (False, True):
        x = torch.randn(2, 6, 9, 8, device=device)
        x = x.to(memory_format=torch.channels_last) if cl else x
        for k, s in ((3, 1), (5, 2)):
            args = [x, torch.randn(6, 1, k, k, device=device), torch.randn(6, device=device),
                    torch.randn(6, device=device)]
            args = [a.detach().requires_grad_() for a in args]
            y, sums = ops.dwconv_bn_act(*args, s, with_sums=True)
            yr, sr = ops.dwconv_bn_act_reference(*args, s, with_sums=True)
            gy, gs = torch.randn_like(yr), torch.randn_like(sr)
            got = torch.autograd.grad((y * gy).sum() + (sums * gs).sum(), args)
            want = torch.autograd.grad((yr * gy).sum() + (sr * gs).sum(), args)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
            # only y used: no gradient flows from the sums
            got = torch.autograd.grad((ops.dwconv_bn_act(*args, s) * gy).sum(), args)
            want = torch.autograd.grad((ops.dwconv_bn_act_reference(*args, s) * gy).sum(), args)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_dwconv_opcheck(device):
    x = torch.randn(2, 4, 7, 6, device=device)
    w, sc, sh = torch.randn(4, 1, 5, 5, device=device), torch.randn(4, device=device), torch.randn(4, device=device)
    for xx in _layouts(x):
        for with_sums in (False, True):
            args = (xx.detach().requires_grad_(), w.requires_grad_(), sc.requires_grad_(), sh.requires_grad_(), 2,
                    with_sums)
            torch.library.opcheck(torch.ops.dna_fast.dwconv_bn_act, args)


@pytest.mark.parametrize("device", DEVICES)
def test_dwconv_user_errors(device):
    x = torch.randn(2, 4, 6, 6, device=device)
    sc = torch.ones(4, device=device)
    with pytest.raises(RuntimeError, match="unsupported kernel size 4"):
        ops.dwconv_bn_act(x, torch.randn(4, 1, 4, 4, device=device), sc, sc)
    with pytest.raises(RuntimeError, match=r"weight must have shape \[C, 1, k, k\]"):
        ops.dwconv_bn_act(x, torch.randn(3, 1, 3, 3, device=device), sc, sc)
    with pytest.raises(RuntimeError, match="unsupported stride 3"):
        ops.dwconv_bn_act(x, torch.randn(4, 1, 3, 3, device=device), sc, sc, stride=3)
    with pytest.raises(RuntimeError, match="4-D"):
        ops.dwconv_bn_act(x[0], torch.randn(4, 1, 3, 3, device=device), sc, sc)
