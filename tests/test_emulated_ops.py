"""The CUDA ops' whole code path on CPU tensors: their launchers (csrc/cuda/*.cu), launch configuration and kernels,
compiled against the CPU emulator (csrc/tests/cudasim) into dna_fast._C_emu and registered as torch.ops.dna_fast_emu.*
(issue 17), checked against the pure-PyTorch references of dna_fast/ops.py on small shapes: every dtype, kernel
size, stride and layout the CUDA ops take, odd and empty shapes, and their user errors. See docs/emulator.md."""

import pytest
import torch

from dna_fast import ops

emu = pytest.importorskip("dna_fast._C_emu", reason="dna_fast._C_emu not built (DNA_FAST_NO_EMU=1 or no extension)")

EMU = torch.ops.dna_fast_emu
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _tol(dtype):
    """The op computes in fp32 and rounds once to ``dtype``, as the reference does: one unit of that rounding."""
    if dtype in (torch.float16, torch.bfloat16):
        return dict(rtol=torch.finfo(dtype).eps, atol=1e-5)
    return dict(rtol=1e-5, atol=1e-5)


def _layouts(x):
    """The same values as NCHW, channels_last and a non-contiguous view."""
    yield x
    yield x.to(memory_format=torch.channels_last)
    big = torch.zeros(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype)
    big[..., ::2] = x
    yield big[..., ::2]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_schemas_match_the_cuda_ops():
    """dna_fast_emu::<op> has the schema of dna_fast::<op> (ops_emu.cpp repeats them; this keeps them equal)."""
    if not ops.HAS_NATIVE:
        pytest.skip("dna_fast._C not built")
    names = ["scale_shift_swish", "scale_shift_swish_backward", "dwconv_bn_act", "se_gate", "pw_project"]
    for name in names:
        ours = str(getattr(EMU, name).default._schema).replace("dna_fast_emu::", "")
        theirs = str(getattr(torch.ops.dna_fast, name).default._schema).replace("dna_fast::", "")
        assert ours == theirs, name


@pytest.mark.parametrize("dtype", DTYPES)
def test_dwconv_bn_act(dtype):
    g = _gen(0)
    cases = 0
    for shape in [(2, 5, 9, 11), (1, 33, 7, 6)]:  # odd sizes; > 32 channels (two channels_last blocks)
        for k in (3, 5, 7):
            for stride in (1, 2):
                x = torch.randn(shape, generator=g).to(dtype)
                c = shape[1]
                w = torch.randn(c, 1, k, k, generator=g) * 0.3
                scale, shift = torch.randn(c, generator=g), torch.randn(c, generator=g)
                for j, xl in enumerate(_layouts(x)):
                    y, sums = EMU.dwconv_bn_act(xl, w, scale, shift, stride, True)
                    ref, ref_sums = ops.dwconv_bn_act_reference(xl, w, scale, shift, stride, with_sums=True)
                    assert y.dtype == dtype and y.shape == ref.shape
                    torch.testing.assert_close(y, ref, **_tol(dtype))
                    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-4 * (1 + k * k))
                    cl = xl.is_contiguous(memory_format=torch.channels_last) and not xl.is_contiguous()
                    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
                    if j == 0:
                        y2, none = EMU.dwconv_bn_act(xl, w, scale, shift, stride, False)
                        assert none.numel() == 0
                        torch.testing.assert_close(y2, y, rtol=0, atol=0)
                    cases += 1
    assert cases == 2 * 3 * 2 * 3
    # tiny: one pixel
    y, _ = EMU.dwconv_bn_act(torch.ones(1, 1, 1, 1, dtype=dtype), torch.ones(1, 1, 3, 3), torch.ones(1),
                             torch.zeros(1), 1, False)
    torch.testing.assert_close(y, torch.nn.functional.silu(torch.ones(1, 1, 1, 1)).to(dtype), **_tol(dtype))


def test_dwconv_bn_act_empty_and_errors():
    w, s = torch.randn(4, 1, 3, 3), torch.ones(4)
    y, sums = EMU.dwconv_bn_act(torch.randn(0, 4, 6, 6), w, s, s, 1, True)
    assert y.shape == (0, 4, 6, 6) and sums.shape == (0, 4)
    with pytest.raises(RuntimeError, match="unsupported kernel size 4"):
        EMU.dwconv_bn_act(torch.randn(1, 4, 6, 6), torch.randn(4, 1, 4, 4), s, s, 1, False)
    with pytest.raises(RuntimeError, match="unsupported stride 3"):
        EMU.dwconv_bn_act(torch.randn(1, 4, 6, 6), w, s, s, 3, False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_shift_swish_forward_backward(dtype):
    g = _gen(1)
    for shape in [(2, 3, 5, 7), (1, 40, 3, 1), (3, 1, 1, 1)]:
        x = torch.randn(shape, generator=g).to(dtype)
        grad = torch.randn(shape, generator=g).to(dtype)
        scale, shift = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
        for xl in _layouts(x):
            y = EMU.scale_shift_swish(xl, scale, shift)
            torch.testing.assert_close(y, ops.scale_shift_swish_reference(xl, scale, shift), **_tol(dtype))
            gz = EMU.scale_shift_swish_backward(grad, xl, scale, shift)
            z = xl.float() * scale[:, None, None] + shift[:, None, None]
            s = torch.sigmoid(z)
            ref = (grad.float() * s * (1 + z * (1 - s))).to(dtype)
            torch.testing.assert_close(gz, ref, **_tol(dtype))
    assert EMU.scale_shift_swish(torch.randn(0, 3, 2, 2), torch.ones(3), torch.ones(3)).shape == (0, 3, 2, 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_se_gate(dtype):
    g = _gen(2)
    for n, c, r in [(2, 5, 1), (3, 33, 9), (1, 300, 40)]:
        pooled = torch.randn(n, c, generator=g).to(dtype)
        wr, br = torch.randn(r, c, generator=g) * 0.2, torch.randn(r, generator=g)
        we, be = torch.randn(c, r, generator=g) * 0.2, torch.randn(c, generator=g)
        gate = EMU.se_gate(pooled, wr, br, we, be)
        assert gate.dtype == dtype
        torch.testing.assert_close(gate, ops.se_gate_reference(pooled, wr, br, we, be), **_tol(dtype))
    with pytest.raises(RuntimeError, match="48 KiB"):
        EMU.se_gate(torch.randn(1, 12000), torch.randn(400, 12000), torch.randn(400), torch.randn(12000, 400),
                    torch.randn(12000))


def _half_ok(ours, eager, exact):
    """flash-attention's criterion: our half-precision error at most 2x that of eager PyTorch (both vs fp32)."""
    err = (ours.double() - exact.double()).abs().max().item()
    ref = (eager.double() - exact.double()).abs().max().item()
    assert err <= 2 * ref + 1e-6, (err, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pw_project(dtype):
    g = _gen(3)
    half = dtype in (torch.float16, torch.bfloat16)
    for n, c, co, h, w in [(2, 6, 5, 3, 7), (1, 3, 9, 20, 70)]:  # the second: several epilogue blocks per sample
        x = torch.randn(n, c, h, w, generator=g).to(dtype)
        gate = torch.rand(n, c, generator=g)
        weight = torch.randn(co, c, 1, 1, generator=g) * 0.3
        scale, shift = torch.randn(co, generator=g), torch.randn(co, generator=g)
        res = torch.randn(n, co, h, w, generator=g).to(dtype)
        tgt = torch.randn(n, co, h, w, generator=g).to(dtype)
        for xl in _layouts(x):
            for r in (None, res):
                out = EMU.pw_project(xl, gate, weight, scale, shift, r, None)
                loss = EMU.pw_project(xl, gate, weight, scale, shift, r, tgt)
                assert out.dtype == dtype and loss.shape == (n,) and loss.dtype == torch.float32
                if not half:
                    torch.testing.assert_close(out, ops.pw_project_reference(xl, gate, weight, scale, shift, r, None),
                                               **_tol(dtype))
                    torch.testing.assert_close(loss, ops.pw_project_reference(xl, gate, weight, scale, shift, r, tgt),
                                               rtol=1e-5, atol=1e-4)
                    continue
                # the GEMM runs in x.dtype (cuBLAS on a GPU, at::bmm here): against the fp32 result, at most twice
                # the error of eager PyTorch computing in that dtype
                rf = None if r is None else r.float()
                exact = ops.pw_project_reference(xl.float(), gate, weight, scale, shift, rf, None)
                z = torch.nn.functional.conv2d(xl * gate.to(dtype)[:, :, None, None], weight.to(dtype))
                eager = (z.float() * scale[:, None, None] + shift[:, None, None] + (0 if r is None else rf)).to(dtype)
                _half_ok(out, eager, exact)
                # the loss sums squares of differences whose rounding errors partly cancel: within dtype's epsilon
                # (relative) of the fp32 loss; eager PyTorch's own loss is checked to meet the same bound
                exact_loss = (exact - tgt.float()).square().sum((1, 2, 3))
                eager_loss = (eager.float() - tgt.float()).square().sum((1, 2, 3))
                eps = torch.finfo(dtype).eps
                torch.testing.assert_close(eager_loss, exact_loss, rtol=eps, atol=0)
                torch.testing.assert_close(loss, exact_loss, rtol=eps, atol=0)
