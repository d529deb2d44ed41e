"""The rating engine's fused CPU passes (dna_fast.ops: dwconv_bn_act's direct channels_last kernel, dwconv_stats,
swish_rows_, linear_swish, expand_dwconv, linear_sq_err, linear_col_dev) against their plain PyTorch references: odd
sizes, channel counts on and off the 8-wide fast path, empty inputs, extreme values, opcheck and clear errors."""

import pytest
import torch

from dna_fast import ops

pytestmark = pytest.mark.skipif(not ops.HAS_NATIVE, reason="dna_fast._C not built")

SPATIAL = [(1, 1), (2, 3), (7, 7), (9, 13), (15, 16), (28, 28)]


def _cl(x):
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("c", [8, 24, 40])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_dwconv_bn_act_channels_last_direct(c, k):
    # fp32 channels_last with C % 8 == 0 runs the register-tiled kernel (7-column tiles, padding skipped at edges)
    for n in (0, 1, 3):
        for h, w in SPATIAL:
            for stride in (1, 2):
                x = _cl(torch.randn(n, c, h, w))
                wt, sc, sh = torch.randn(c, 1, k, k) * 0.3, torch.rand(c) + 0.5, torch.randn(c) * 0.2
                y, sums = ops.dwconv_bn_act(x, wt, sc, sh, stride, with_sums=True)
                yr, sr = ops.dwconv_bn_act_reference(x, wt, sc, sh, stride, with_sums=True)
                assert n == 0 or y.is_contiguous(memory_format=torch.channels_last)
                torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(sums, sr, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("c", [5, 8, 32])
def test_dwconv_stats_matches_reference(c):
    for k in (3, 5, 7):
        for h, w in SPATIAL:
            for stride in (1, 2):
                x = torch.randn(2, c, h, w) + 3.0  # an offset: the row statistics must not cancel
                wt = torch.randn(c, 1, k, k) * 0.3
                got = ops.dwconv_stats(x, wt, stride)
                want = ops.dwconv_stats_reference(x, wt, stride)
                assert got[0].is_contiguous(memory_format=torch.channels_last)
                for a, b in zip(got, want):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
                # merged: the batch mean and biased variance of the conv output per channel
                mean, var = ops.merge_row_stats(got[1], got[2], got[0].shape[3])
                ref_var, ref_mean = torch.var_mean(want[0].double(), dim=(0, 2, 3), correction=0)
                torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(var, ref_var, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("c", [3, 8, 40])
def test_swish_rows_matches_reference(c):
    for rows, groups in ((0, 0), (1, 1), (13, 0), (64, 4), (64, 64)):
        x = torch.randn(rows, c) * 4
        for scale, shift in ((None, None), (None, torch.randn(c)), (torch.randn(c), torch.randn(c))):
            want, want_sums = ops.swish_rows_reference(x, scale, shift, groups)
            got = x.clone()
            sums = ops.swish_rows_(got, scale, shift, groups)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
            assert sums.shape == (groups, c)
            torch.testing.assert_close(sums, want_sums, rtol=1e-5, atol=1e-5)


def test_swish_rows_extreme_values():
    z = torch.tensor([-1e4, -200.0, -88.0, -80.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 88.0, 200.0, 1e4], dtype=torch.float32)
    x = z.repeat(8, 1).t().contiguous().view(-1, 8).clone()  # 8 channels: the vector path
    want = torch.nn.functional.silu(x)
    ops.swish_rows_(x)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x, want, rtol=1e-6, atol=1e-30)
    nan = torch.full((1, 8), float("nan"))
    ops.swish_rows_(nan)
    assert nan.isnan().all()


def test_linear_swish_matches_reference():
    for r, k, n in ((3136, 40, 360), (13, 7, 48), (5, 24, 8), (9, 16, 40), (4, 3, 5), (0, 8, 16)):
        x = torch.randn(r, k)
        w, b = torch.randn(k, n) * 0.3, torch.randn(n) * 0.2
        torch.testing.assert_close(ops.linear_swish(x, w, b), ops.linear_swish_reference(x, w, b), rtol=1e-5,
                                   atol=1e-5)
    x = torch.randn(10, 2 * 24)[:, ::2]  # a non-contiguous input
    w, b = torch.randn(24, 32), torch.randn(32)
    torch.testing.assert_close(ops.linear_swish(x, w, b), ops.linear_swish_reference(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c", [16, 40, 12])
def test_expand_dwconv_matches_reference(c):
    # the expansion computed row by row into a ring in front of the conv: every kernel size, stride, odd size
    for k in (3, 5, 7):
        for n, (h, w) in ((2, (9, 13)), (1, (1, 1)), (3, (7, 7)), (1, (16, 15))):
            for stride in (1, 2):
                x = _cl(torch.randn(n, 24, h, w))
                w1, b1 = torch.randn(24, c) * 0.3, torch.randn(c) * 0.2
                wd, sc, sh = torch.randn(c, 1, k, k) * 0.3, torch.rand(c) + 0.5, torch.randn(c) * 0.2
                got = ops.expand_dwconv(x, w1, b1, wd, sc, sh, stride)
                want = ops.expand_dwconv_reference(x, w1, b1, wd, sc, sh, stride)
                for a, b in zip(got, want):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
                got = ops.expand_dwconv(x, w1, b1, wd, stride=stride)
                want = ops.expand_dwconv_reference(x, w1, b1, wd, stride=stride)
                for a, b in zip(got, want):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cin", [8, 16, 40, 5])
@pytest.mark.parametrize("layout", ["channels_last", "nchw", "strided"])
def test_expand_dwconv_other_inputs(cin, layout):
    # input widths other than 24 (on and off the 8-wide path) and inputs that are not channels_last
    c, k = 48, 3
    for stride in (1, 2):
        x = torch.randn(2, cin, 9, 11)
        x = {"channels_last": _cl(x), "nchw": x.contiguous(),
             "strided": torch.randn(2, cin, 9, 22)[..., ::2]}[layout]
        w1, b1 = torch.randn(cin, c) * cin ** -0.5, torch.randn(c) * 0.2
        wd, sc, sh = torch.randn(c, 1, k, k) * 0.3, torch.rand(c) + 0.5, torch.randn(c) * 0.2
        for a, b in zip(ops.expand_dwconv(x, w1, b1, wd, sc, sh, stride),
                        ops.expand_dwconv_reference(x, w1, b1, wd, sc, sh, stride)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
        for a, b in zip(ops.expand_dwconv(x, w1, b1, wd, stride=stride),
                        ops.expand_dwconv_reference(x, w1, b1, wd, stride=stride)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_linear_sq_err_matches_reference():
    for r, k, n, groups in ((3136, 240, 80, 4), (784, 120, 40, 1), (37, 24, 16, 1), (10, 8, 5, 2), (0, 8, 16, 1)):
        x, w = torch.randn(r, k), torch.randn(k, n) * 0.2
        off, sh = torch.randn(r, n), torch.randn(n)
        gate = torch.rand(groups, k) if groups > 1 else None
        got = ops.linear_sq_err(x, w, off, sh, gate)
        assert all(t.dtype == torch.float64 and t.shape == (groups,) for t in got)  # (squared, absolute) per image
        torch.testing.assert_close(got, ops.linear_sq_err_reference(x, w, off, sh, gate), rtol=1e-6, atol=1e-6)
    x = torch.randn(64, 360)[:, 120:360]  # a column slice of a wider matrix, as the engine passes it
    w, off, sh, gate = torch.randn(240, 80) * 0.1, torch.randn(64, 80), torch.randn(80), torch.rand(4, 240)
    torch.testing.assert_close(ops.linear_sq_err(x, w, off, sh, gate), ops.linear_sq_err_reference(x, w, off, sh, gate),
                               rtol=1e-6, atol=1e-6)


def test_linear_col_dev_matches_reference():
    for r, k, n, groups in ((6272, 240, 80, 8), (37, 24, 16, 1), (10, 8, 5, 2), (0, 8, 16, 1)):
        x, w = torch.randn(r, k) + 0.5, torch.randn(k, n) * 0.2
        gate = torch.rand(groups, k) if groups > 1 else None
        mean = torch.randn(n)
        got = ops.linear_col_dev(x, w, mean, gate)
        assert got.dtype == torch.float64 and got.shape == (n,)
        torch.testing.assert_close(got, ops.linear_col_dev_reference(x, w, mean, gate), rtol=1e-6, atol=1e-6)


def test_opcheck():
    x = _cl(torch.randn(2, 8, 9, 7))
    torch.library.opcheck(torch.ops.dna_fast.dwconv_stats, (x, torch.randn(8, 1, 5, 5), 2))
    torch.library.opcheck(torch.ops.dna_fast.swish_rows_, (torch.randn(12, 16), torch.randn(16), torch.randn(16), 3))
    torch.library.opcheck(torch.ops.dna_fast.swish_rows_, (torch.randn(12, 16), None, None, 0))
    torch.library.opcheck(torch.ops.dna_fast.linear_swish, (torch.randn(9, 40), torch.randn(40, 24), torch.randn(24)))
    sq_args = (torch.randn(9, 24), torch.randn(24, 16), torch.randn(9, 16), torch.randn(16), torch.rand(3, 24))
    torch.library.opcheck(torch.ops.dna_fast.linear_sq_err, sq_args)
    torch.library.opcheck(torch.ops.dna_fast.linear_col_dev, (sq_args[0], sq_args[1], sq_args[3], sq_args[4]))
    exp_args = (x, torch.randn(8, 16), torch.randn(16), torch.randn(16, 1, 3, 3), torch.rand(16), torch.randn(16), 1)
    torch.library.opcheck(torch.ops.dna_fast.expand_dwconv_bn_act, exp_args)
    torch.library.opcheck(torch.ops.dna_fast.expand_dwconv_stats,
                          (x, torch.randn(8, 16), torch.randn(16), torch.randn(16, 1, 7, 7), 2))


def test_user_errors():
    with pytest.raises(RuntimeError, match="groups = 5 must be 0"):
        ops.swish_rows_(torch.randn(12, 8), None, None, 5)
    with pytest.raises(RuntimeError, match="contiguous 2-D"):
        ops.swish_rows_(torch.randn(12, 16)[:, ::2])
    with pytest.raises(RuntimeError, match=r"shift must have shape \[C\] = \[8\]"):
        ops.swish_rows_(torch.randn(12, 8), None, torch.randn(7))
    with pytest.raises(RuntimeError, match="unsupported kernel size 4"):
        ops.dwconv_stats(torch.randn(1, 8, 5, 5), torch.randn(8, 1, 4, 4))
    with pytest.raises(RuntimeError, match=r"expected x \[rows, K\] and weight \[K, N\]"):
        ops.linear_swish(torch.randn(4, 5), torch.randn(6, 8), torch.randn(8))
    with pytest.raises(RuntimeError, match=r"offset must have shape \[4, 8\]"):
        ops.linear_sq_err(torch.randn(4, 5), torch.randn(5, 8), torch.randn(3, 8), torch.randn(8))
    with pytest.raises(RuntimeError, match="groups dividing the 4 rows"):
        ops.linear_sq_err(torch.randn(4, 5), torch.randn(5, 8), torch.randn(4, 8), torch.randn(8), torch.rand(3, 5))
    with pytest.raises(RuntimeError, match=r"w1 must have shape \[Cin, C\]"):
        ops.expand_dwconv(torch.randn(1, 4, 5, 5), torch.randn(3, 8), torch.randn(8), torch.randn(8, 1, 3, 3))


@pytest.mark.parametrize("isa", ["avx2", "best"])
def test_vector_kernels_each_isa(isa, monkeypatch):
    """The GEMM and depthwise passes (linear_swish, expand_dwconv, linear_sq_err, linear_col_dev, dwconv_bn_act,
    dwconv_stats) on the AVX2 kernels (DNA_FAST_CPU_ISA=avx2) and on the best this CPU has (AVX-512 where present:
    nhwc_avx512.h's GEMMs), every column panel (48 / 16 / masked 8) and row tile (8 / 4 / 1), against the
    references; the AVX-512 kernels must run exactly when the CPU has AVX-512 and they are not turned off."""
    import dna_fast._C as C

    if isa == "avx2":
        monkeypatch.setenv("DNA_FAST_CPU_ISA", "avx2")
    else:
        monkeypatch.delenv("DNA_FAST_CPU_ISA", raising=False)
    before = C.cpu_vector_calls(512)
    for r, k, n in ((3136, 40, 360), (13, 7, 48), (29, 24, 8), (9, 16, 40), (100, 120, 24), (5, 240, 80)):
        x, w, b = torch.randn(r, k), torch.randn(k, n) * k ** -0.5, torch.randn(n) * 0.2
        torch.testing.assert_close(ops.linear_swish(x, w, b), ops.linear_swish_reference(x, w, b), rtol=1e-5,
                                   atol=1e-5)
        off, sh, gate = torch.randn(r, n), torch.randn(n), torch.rand(1, k)
        torch.testing.assert_close(ops.linear_sq_err(x, w, off, sh, gate),
                                   ops.linear_sq_err_reference(x, w, off, sh, gate), rtol=1e-6, atol=1e-6)
        mean = torch.randn(n)
        torch.testing.assert_close(ops.linear_col_dev(x, w, mean, gate),
                                   ops.linear_col_dev_reference(x, w, mean, gate), rtol=1e-6, atol=1e-6)
    x = _cl(torch.randn(2, 40, 14, 14))
    w1, b1 = torch.randn(40, 360) * 0.15, torch.randn(360) * 0.2
    wd, sc, sh = torch.randn(360, 1, 5, 5) * 0.3, torch.rand(360) + 0.5, torch.randn(360) * 0.2
    for a, b in zip(ops.expand_dwconv(x, w1, b1, wd, sc, sh, 1), ops.expand_dwconv_reference(x, w1, b1, wd, sc, sh, 1)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    # the depthwise row kernels beside them: every kernel size and stride
    for c, k, stride in ((24, 3, 1), (40, 5, 2), (360, 7, 1), (8, 3, 2)):
        x = _cl(torch.randn(2, c, 9, 13))
        wd, sc, sh = torch.randn(c, 1, k, k) * 0.3, torch.rand(c) + 0.5, torch.randn(c) * 0.2
        torch.testing.assert_close(ops.dwconv_bn_act(x, wd, sc, sh, stride),
                                   ops.dwconv_bn_act_reference(x, wd, sc, sh, stride), rtol=1e-5, atol=1e-5)
        for a, b in zip(ops.dwconv_stats(x, wd, stride), ops.dwconv_stats_reference(x, wd, stride)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    ran = C.cpu_vector_calls(512) > before
    assert ran == (isa == "best" and C.build_info()["cpu_isa_runtime"] == "avx512")
