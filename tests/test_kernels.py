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


def _rounded_tol(dtype):
    """Tolerance of an op that computes in fp32 and rounds its output to ``dtype`` against a reference that does the
    same: one unit of ``dtype``'s rounding (an fp32 difference in the last bits can round the other way), an fp32
    error otherwise."""
    if dtype in (torch.float16, torch.bfloat16):
        return dict(rtol=torch.finfo(dtype).eps, atol=1e-5)
    return dict(rtol=1e-5, atol=1e-5)


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
                sc, sh = torch.randn(c, device=device), torch.randn(c, device=device)
                yield layouts[(i + k + stride) % 3], w, sc, sh, stride


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_dwconv_matches_reference(device, dtype):
    for x, w, sc, sh, s in dw_sample_inputs(device, dtype):
        y, sums = ops.dwconv_bn_act(x, w, sc, sh, s, with_sums=True)
        yr, sr = ops.dwconv_bn_act_reference(x, w, sc, sh, s, with_sums=True)
        assert y.dtype == x.dtype and y.shape == yr.shape and sums.dtype == torch.float32
        tol = _rounded_tol(dtype)
        torch.testing.assert_close(y, yr, **tol)
        torch.testing.assert_close(sums, sr, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(ops.dwconv_bn_act(x, w, sc, sh, s), yr, **tol)  # without sums


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_dwconv_nchw_direct_kernel_wide_planes(device, dtype):
    # NCHW with k = 3 and an output width >= 24 runs the direct row kernel (elsewhere oneDNN + the fused epilogue):
    # both strides, output widths around the switch, odd heights
    for stride in (1, 2):
        for w in (47, 48, 49, 50, 61) if stride == 2 else (23, 24, 25, 33):
            x = torch.randn(2, 5, 13, w, device=device).to(dtype)
            wt, sc, sh = torch.randn(5, 1, 3, 3, device=device) * 0.3, torch.randn(5, device=device), torch.randn(
                5, device=device)
            y, sums = ops.dwconv_bn_act(x, wt, sc, sh, stride, with_sums=True)
            yr, sr = ops.dwconv_bn_act_reference(x, wt, sc, sh, stride, with_sums=True)
            assert y.is_contiguous() and y.shape == yr.shape
            torch.testing.assert_close(y, yr, **_rounded_tol(dtype))
            torch.testing.assert_close(sums, sr, rtol=1e-4, atol=1e-3)


def test_dwconv_nchw_route_table():
    """Where the NCHW CPU routes go (csrc/cpu/dwconv_route.h): the direct kernel only where it measured faster than
    eager (k = 3, stride 1, output width >= 24); elsewhere oneDNN's conv with the BN folded in and swish as its
    post-op where the torch build has it (else the eager sequence itself), at the shapes where the fused kernels
    measured 0.85-0.99x eager."""
    from dna_fast import _C

    other = "onednn_swish" if _C.onednn_conv_swish_available() else "eager"
    assert _C.dwconv_route(3, 1, 56) == "direct" and _C.dwconv_route(3, 1, 24) == "direct"
    for k, stride, wo in ((3, 1, 23), (3, 2, 28), (5, 1, 56), (7, 1, 56), (5, 1, 28), (7, 2, 14), (3, 1, 14)):
        assert _C.dwconv_route(k, stride, wo) == other, (k, stride, wo)


def test_dwconv_channels_last_route_table():
    """channels_last fp32 (C % 8 == 0): the AVX2 register-tiled kernel at k = 3, where it measured 1.14-1.20x eager;
    oneDNN's conv + swish post-op (else the eager sequence) at k = 5 / 7, where it measured 0.88-1.04x
    (csrc/cpu/dwconv_route.h)."""
    from dna_fast import _C

    if _C.dwconv_route(3, 1, 56, channels_last=True) == "conv_epilogue":
        pytest.skip("the AVX2 channels_last kernel is not built in")
    other = "onednn_swish" if _C.onednn_conv_swish_available() else "eager"
    for k, stride, wo in ((3, 1, 56), (3, 2, 28), (3, 1, 14), (3, 1, 7)):
        assert _C.dwconv_route(k, stride, wo, channels_last=True) == "direct", (k, stride, wo)
    for k, stride, wo in ((5, 1, 56), (7, 1, 56), (5, 1, 28), (7, 2, 14), (7, 1, 14)):
        assert _C.dwconv_route(k, stride, wo, channels_last=True) == other, (k, stride, wo)


def _skip_missing_route(route):
    from dna_fast import _C

    if route == "onednn_swish" and not _C.onednn_conv_swish_available():
        pytest.skip("this torch build has no mkldnn::_convolution_pointwise")


@pytest.mark.parametrize("route", ["direct", "onednn_swish", "eager"])
def test_dwconv_channels_last_both_routes_match_reference(monkeypatch, route):
    """Each channels_last route forced on every kernel size (DNA_FAST_DWCONV): equal to the reference, with and
    without the SE sums, and the output stays channels_last."""
    from dna_fast import _C

    if _C.dwconv_route(3, 1, 56, channels_last=True) == "conv_epilogue":
        pytest.skip("the AVX2 channels_last kernel is not built in")
    _skip_missing_route(route)
    monkeypatch.setenv("DNA_FAST_DWCONV", route)
    shapes = ((2, 8, 14, 14, 3, 1), (1, 16, 9, 11, 5, 1), (2, 8, 15, 28, 7, 2), (1, 24, 7, 7, 5, 2))
    for n, c, h, w, k, stride in shapes:
        assert _C.dwconv_route(k, stride, (w - 1) // stride + 1, channels_last=True) == route
        x = torch.randn(n, c, h, w).to(memory_format=torch.channels_last)
        wt, sc, sh = torch.randn(c, 1, k, k) * 0.3, torch.randn(c), torch.randn(c)
        y, sums = ops.dwconv_bn_act(x, wt, sc, sh, stride, with_sums=True)
        yr, sr = ops.dwconv_bn_act_reference(x, wt, sc, sh, stride, with_sums=True)
        assert y.is_contiguous(memory_format=torch.channels_last) and y.shape == yr.shape
        torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sums, sr, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(ops.dwconv_bn_act(x, wt, sc, sh, stride), yr, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("route", ["direct", "onednn_swish", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_dwconv_nchw_both_routes_match_reference(monkeypatch, route, dtype):
    """Each NCHW route forced on shapes that normally take the other (DNA_FAST_DWCONV; the direct kernel exists for
    k = 3 only): each equals the reference, with and without the SE sums."""
    from dna_fast import _C

    _skip_missing_route(route)
    monkeypatch.setenv("DNA_FAST_DWCONV", route)
    shapes = [(2, 5, 13, 30, 3, 1), (1, 4, 9, 11, 3, 1), (2, 6, 15, 28, 3, 2), (1, 3, 8, 7, 3, 2)]
    if route != "direct":
        shapes += [(1, 4, 9, 11, 5, 1), (1, 3, 8, 7, 7, 2)]
    for n, c, h, w, k, stride in shapes:
        wo = (w - 1) // stride + 1
        assert _C.dwconv_route(k, stride, wo) == route
        x = torch.randn(n, c, h, w).to(dtype)
        wt, sc, sh = torch.randn(c, 1, k, k) * 0.3, torch.randn(c), torch.randn(c)
        y, sums = ops.dwconv_bn_act(x, wt, sc, sh, stride, with_sums=True)
        yr, sr = ops.dwconv_bn_act_reference(x, wt, sc, sh, stride, with_sums=True)
        assert y.dtype == dtype and y.is_contiguous() and y.shape == yr.shape
        torch.testing.assert_close(y, yr, **_rounded_tol(dtype))
        torch.testing.assert_close(sums, sr, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(ops.dwconv_bn_act(x, wt, sc, sh, stride), yr, **_rounded_tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_fp64_inputs_compute_in_fp32_and_keep_dtype(device):
    # every op takes fp64 (computing in fp32, as documented) and returns fp64 close to the fp64-input reference
    x = torch.randn(2, 8, 9, 30, device=device, dtype=torch.float64)
    w, sc, sh = torch.randn(8, 1, 3, 3, device=device) * 0.3, torch.randn(8, device=device), torch.randn(
        8, device=device)
    for s in (1, 2):
        for xx in (x, x.to(memory_format=torch.channels_last)):
            y, sums = ops.dwconv_bn_act(xx, w, sc, sh, s, with_sums=True)
            yr, sr = ops.dwconv_bn_act_reference(xx, w, sc, sh, s, with_sums=True)
            assert y.dtype == torch.float64
            torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(sums, sr.to(sums.dtype), rtol=1e-4, atol=1e-3)
    p, wr, br, we, be = next(se_sample_inputs(device))
    g = ops.se_gate(p.double(), wr, br, we, be)
    assert g.dtype == torch.float64
    torch.testing.assert_close(g, ops.se_gate_reference(p.double(), wr, br, we, be), rtol=1e-5, atol=1e-5)
    for args in list(pw_sample_inputs(device))[:4]:
        args = tuple(a.double() if a is not None and i in (0, 5, 6) else a for i, a in enumerate(args))
        got, want = ops.pw_project(*args), ops.pw_project_reference(*args)
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


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


# ---------------------------------------------------------------- se_gate


def se_sample_inputs(device, dtype=torch.float32):
    for n, c, r in ((4, 48, 6), (1, 144, 10), (0, 8, 2), (3, 1152, 48)):
        yield (torch.randn(n, c, device=device).to(dtype), torch.randn(r, c, device=device) * 0.2,
               torch.randn(r, device=device), torch.randn(c, r, device=device) * 0.3, torch.randn(c, device=device))
    p = torch.randn(8, 40, device=device).to(dtype)[::2]  # non-contiguous rows
    yield p, torch.randn(5, 40, device=device), torch.randn(5, device=device), torch.randn(40, 5, device=device), \
        torch.randn(40, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_se_gate_matches_reference(device, dtype):
    for args in se_sample_inputs(device, dtype):
        got, want = ops.se_gate(*args), ops.se_gate_reference(*args)
        assert got.dtype == dtype and got.shape == args[0].shape
        torch.testing.assert_close(got, want, **_rounded_tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_se_gate_opcheck_and_errors(device):
    for args in se_sample_inputs(device):
        torch.library.opcheck(torch.ops.dna_fast.se_gate, args)
    p, wr, br, we, be = next(se_sample_inputs(device))
    with pytest.raises(RuntimeError, match=r"w_reduce must be \[R, C\]"):
        ops.se_gate(p, wr[:, :-1], br, we, be)
    with pytest.raises(RuntimeError, match=r"w_expand must be \[C, R\]"):
        ops.se_gate(p, wr, br, we.t(), be)
    with pytest.raises(RuntimeError, match="2-D"):
        ops.se_gate(p[None], wr, br, we, be)


# ---------------------------------------------------------------- pw_project


def pw_sample_inputs(device, dtype=torch.float32):
    """(x, gate, weight, scale, shift, residual, target) with and without residual / target, over layouts."""
    for i, (n, c, co, h, w) in enumerate(((2, 48, 24, 7, 9), (1, 144, 40, 5, 5), (0, 8, 8, 3, 3), (3, 16, 16, 1, 1))):
        x = torch.randn(n, c, h, w, device=device).to(dtype)
        x = list(_layouts(x))[i % 3]
        gate = torch.rand(n, c, device=device)
        weight = torch.randn(co, c, 1, 1, device=device) * c ** -0.5
        sc, sh = torch.randn(co, device=device), torch.randn(co, device=device)
        res = torch.randn(n, co, h, w, device=device).to(dtype)
        tgt = torch.randn(n, co, h, w, device=device).to(dtype)
        yield x, gate, weight, sc, sh, None, None
        yield x, gate, weight, sc, sh, res, None
        yield x, gate, weight, sc, sh, res.to(memory_format=torch.channels_last), tgt
        yield x, gate, weight, sc, sh, None, tgt


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_pw_project_matches_reference(device, dtype):
    for args in pw_sample_inputs(device, dtype):
        got, want = ops.pw_project(*args), ops.pw_project_reference(*args)
        assert got.shape == want.shape and got.dtype == want.dtype
        if args[-1] is not None:  # losses: fp32 sums of squares of rounded outputs (a few outputs may round the
            # other way: each moves the sum by ~2 |error| ulp, far below one ulp of the sum)
            torch.testing.assert_close(got, want, rtol=_rounded_tol(dtype)["rtol"], atol=1e-3)
        else:
            torch.testing.assert_close(got, want, **_rounded_tol(dtype))
            if args[0].is_contiguous(memory_format=torch.channels_last) and args[0].shape[2] > 1:
                assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_pw_project_half_error_within_twice_pytorch(device):
    x, gate = torch.randn(4, 144, 14, 14, device=device), torch.rand(4, 144, device=device)
    w, sc, sh = torch.randn(40, 144, 1, 1, device=device) * 0.1, torch.randn(40, device=device), torch.randn(
        40, device=device)
    res = torch.randn(4, 40, 14, 14, device=device)
    exact = ops.pw_project_reference(x, gate, w, sc, sh, res)
    for dtype in HALF:
        xh, gh, wh, rh = x.to(dtype), gate.to(dtype), w.to(dtype), res.to(dtype)
        eager = F.conv2d(xh * gh[:, :, None, None], wh) * sc.to(dtype).view(1, -1, 1, 1) + sh.to(dtype).view(
            1, -1, 1, 1) + rh
        _half_ok(ops.pw_project(xh, gate, w, sc, sh, rh), eager, exact)


@pytest.mark.parametrize("device", DEVICES)
def test_pw_project_opcheck_and_errors(device):
    for args in pw_sample_inputs(device):
        torch.library.opcheck(torch.ops.dna_fast.pw_project, args)
    x, gate, w, sc, sh, _, tgt = list(pw_sample_inputs(device))[3]
    with pytest.raises(RuntimeError, match=r"gate must be \[N, C\]"):
        ops.pw_project(x, gate[:, :-1], w, sc, sh)
    with pytest.raises(RuntimeError, match=r"weight must be \[Co, C, 1, 1\]"):
        ops.pw_project(x, gate, w[:, :-1], sc, sh)
    with pytest.raises(RuntimeError, match="target must be"):
        ops.pw_project(x, gate, w, sc, sh, target=tgt[:, :-1])


# ---------------------------------------------------------------- mbconv_siblings


def _dna_layer(c_in, c_out, stride, kinds=((3, 3), (3, 6), (5, 3), (5, 6), (7, 3), (7, 6))):
    """The six DNA ops of one layer as timm InvertedResidual modules with random BN statistics (eval mode)."""
    from dna_fast.nn.mbconv import MBConvOp

    mods = []
    for k, e in kinds:
        m = MBConvOp(f"ir_k{k}_e{e}_se0.25", c_in, c_out, stride).eval()
        for bn in (m.bn1, m.bn2, m.bn3):
            bn.running_mean.normal_(0, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.normal_(0, 0.2)
        mods.append(m)
    return mods


def test_fold_mbconv_reference_matches_timm_module():
    mods = _dna_layer(16, 16, 1)
    x = torch.randn(2, 16, 9, 9)
    want = torch.stack([m(x) for m in mods]).detach()
    got = ops.mbconv_siblings_reference(x, [ops.fold_mbconv(m) for m in mods], 1, residual=True)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_mbconv_siblings_matches_reference(device, dtype):
    for c_in, c_out, stride, hw, cl in ((16, 16, 1, 11, False), (16, 24, 2, 9, True)):
        mods = [m.to(device) for m in _dna_layer(c_in, c_out, stride)]
        folded = [ops.FoldedMBConv(*[None if t is None else t.to(device) for t in ops.fold_mbconv(m)]) for m in mods]
        x = torch.randn(3, c_in, hw, hw, device=device).to(dtype)
        x = x.to(memory_format=torch.channels_last) if cl else x
        res = c_in == c_out and stride == 1
        got = ops.mbconv_siblings(x, folded, stride, residual=res)
        target = torch.randn(got.shape[1:], device=device).to(dtype)
        losses = ops.mbconv_siblings(x, folded, stride, residual=res, target=target)
        assert losses.shape == (len(folded), 3) and losses.dtype == torch.float32
        if dtype == torch.float32:
            torch.testing.assert_close(got, ops.mbconv_siblings_reference(x, folded, stride, residual=res),
                                       rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(losses, ops.mbconv_siblings_reference(x, folded, stride, res, target),
                                       rtol=1e-4, atol=1e-3)
            continue
        # half precision: error vs the fp32 result on the same (rounded) input at most twice that of the timm
        # modules run eagerly in this precision
        exact = ops.mbconv_siblings_reference(x.float(), folded, stride, residual=res)
        with torch.no_grad():
            eager = torch.stack([m.to(dtype)(x) for m in mods]).float()
        _half_ok(got, eager, exact)
        t = target.float()
        _half_ok(losses, (eager - t).square().sum((2, 3, 4)), (exact - t).square().sum((2, 3, 4)))


def test_mbconv_siblings_user_errors():
    folded = [ops.fold_mbconv(m) for m in _dna_layer(8, 16, 1, kinds=((3, 3), (5, 6)))]
    x = torch.randn(1, 8, 5, 5)
    with pytest.raises(ValueError, match="residual needs stride 1"):
        ops.mbconv_siblings(x, folded, 1, residual=True)
    with pytest.raises(ValueError, match="does not take 4 input channels"):
        ops.mbconv_siblings(x[:, :4], folded)
    with pytest.raises(ValueError, match="target must have shape"):
        ops.mbconv_siblings(x, folded, target=torch.randn(1, 16, 4, 4))


# ---------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    mods = _dna_layer(8, 8, 1, kinds=((3, 3), (5, 6)))
    folded = [ops.FoldedMBConv(*[None if t is None else t.to(device) for t in ops.fold_mbconv(m)]) for m in mods]
    x, target = torch.randn(2, 8, 6, 6, device=device), torch.randn(2, 8, 6, 6, device=device)
    op = folded[0]

    def f(x, target):
        y, sums = ops.dwconv_bn_act(x, torch.ones(8, 1, 3, 3, device=device), op.scale3, op.shift3, 1, True)
        g = ops.se_gate(sums / 36, op.w_se_reduce[:, :8], op.b_se_reduce, op.w_se_expand[:8], op.b_se_expand[:8])
        loss = ops.pw_project(y, g, op.w_project[:, :8, None, None], op.scale3, op.shift3, x, target)
        return loss + ops.mbconv_siblings(x, folded, 1, True, target).sum(0)

    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(x, target), f(x, target))


def test_ab_routes_tool_times_each_route_and_checks_it(capsys):
    """tools/ab_routes.py (the paired A/B behind docs/benchmarks.md's route figures): each route is checked against
    the reference and timed every round; one line per shape with a ratio and its interval, the env switch restored."""
    import os
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import ab_routes

    assert ab_routes.main(["--rounds", "3", "--threads", "1", "--routes", "direct,eager,eager",
                           "--shapes", "8,9,3,2", "8,7,7,1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# ") and len(lines) == 3
    assert "16x8x9x9 k3 s2: direct" in lines[1] and lines[1].count("vs eager") == 2
    assert "DNA_FAST_DWCONV" not in os.environ
    assert ab_routes.bench_shapes()[0] == (40, 56, 3, 1)
    assert ab_routes.main(["--rounds", "2", "--threads", "1", "--routes", "auto,baseline", "--shapes", "8,9,7,2"]) == 0
    assert "auto" in capsys.readouterr().out and "DNA_FAST_DWCONV" not in os.environ
