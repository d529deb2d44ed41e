"""The rating engine's CUDA path (issue 18): the CUDA twins of its fused passes (csrc/cuda/rating_kernels.cu) against
the references of ``dna_fast.ops``, and whole ratings through them equal to the naive reference.

Without a GPU, the same launchers and kernels run on CPU tensors through the CUDA emulator (``torch.ops.dna_fast_emu``,
``rate_block(..., kernels="cuda-emulated")``); with one, the GPU-marked tests run them on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import HAS_GPU_OPS
from scipy.stats import kendalltau
from test_rating import _assert_same, _data

from dna_fast import _rating_kernels as rk
from dna_fast import ops
from dna_fast.rating import rate_block, rate_block_naive

HAS_EMU = rk.has_emulated_kernels()
needs_emu = pytest.mark.skipif(not HAS_EMU, reason="extension built without the emulated CUDA operators")

# Where the CUDA path runs: the emulator on CPU tensors always; the GPU when there is one.
TARGETS = [
    pytest.param(("cpu", "emu"), marks=needs_emu, id="emulated"),
    pytest.param(("cuda", "cuda"), marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU_OPS, reason="needs a GPU")],
                 id="cuda"),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# fp32: accumulation order only; halves: the stored activation's rounding (the kernels accumulate in fp32)
RTOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One torch thread (conftest's ``one_thread``): the emulator is single threaded anyway."""


def _ns(target):
    return torch.ops.dna_fast_emu if target[1] == "emu" else torch.ops.dna_fast


def _cl(x):
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_sq_err_and_col_dev(target, dtype):
    dev, ns = target[0], _ns(target)
    # rows off the 64-row tile, K off the 16-wide step, N off the 64-column tile; a column slice (row stride > K)
    for rows, k, n, groups in ((1, 1, 1, 0), (37, 19, 5, 0), (3 * 45, 33, 70, 3), (2 * 64, 40, 24, 2)):
        wide = torch.randn(rows, k + 5).to(dtype)
        x = wide[:, 2:2 + k]
        w = (torch.randn(k, n) * 0.2).to(dtype)
        off, shift, mean = torch.randn(rows, n), torch.randn(n) * 0.5, torch.randn(n) * 0.5
        gate = torch.rand(groups, k) + 0.2 if groups else None
        args = [t.to(dev) if t is not None else None for t in (x, w, off, shift, gate, mean)]
        sq, ab = ns.linear_sq_err(*args[:5])
        want_sq, want_ab = ops.linear_sq_err_reference(x, w, off, shift, gate)
        assert sq.dtype == torch.float64 and sq.shape == want_sq.shape == (max(groups, 1),)
        torch.testing.assert_close(sq.cpu(), want_sq, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ab.cpu(), want_ab, rtol=1e-5, atol=1e-6)
        dev_ = ns.linear_col_dev(args[0], args[1], args[5], args[4])
        torch.testing.assert_close(dev_.cpu(), ops.linear_col_dev_reference(x, w, mean, gate), rtol=1e-5, atol=1e-6)
    # empty rows: the sums of nothing
    e = torch.zeros(0, 4, dtype=dtype, device=dev)
    sq, ab = ns.linear_sq_err(e, torch.ones(4, 3, device=dev), torch.zeros(0, 3, device=dev), torch.ones(3, device=dev))
    assert float(sq.sum()) == 0.0 and float(ab.sum()) == 0.0


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_expand_dwconv(target, dtype):
    dev, ns = target[0], _ns(target)
    for k in (3, 5, 7):
        for stride in (1, 2):
            # an image smaller than a tile, rows off the 8-wide tile, channels off the 32-channel chunk
            for n, cin, c, h, w in ((1, 3, 5, 1, 1), (2, 5, 33, 9, 13), (1, 13, 40, 15, 16)):
                x = _cl(torch.randn(n, cin, h, w).to(dtype))
                w1, b1 = torch.randn(cin, c) * 0.5, torch.randn(c) * 0.3
                wdw, sc, sh = torch.randn(c, 1, k, k) * 0.3, torch.rand(c) * 0.4 + 0.8, torch.randn(c) * 0.2
                xd, w1d, b1d, wdwd, scd, shd = (t.to(dev) for t in (x, w1, b1, wdw, sc, sh))
                y, sums = ns.expand_dwconv_bn_act(xd, w1d, b1d, wdwd, scd, shd, stride)
                yr, sr = ops.expand_dwconv_reference(x.float(), w1, b1, wdw, sc, sh, stride)
                assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
                torch.testing.assert_close(y.cpu().float(), yr, rtol=RTOL[dtype], atol=1e-4)
                torch.testing.assert_close(sums.cpu(), sr, rtol=1e-4, atol=1e-4)
                # statistics: the raw conv and its per-row mean / M2 (merged: the BN batch statistics)
                y2, mean, m2 = ns.expand_dwconv_stats(xd, w1d, b1d, wdwd, stride)
                yr2, meanr, m2r = ops.expand_dwconv_reference(x.float(), w1, b1, wdw, None, None, stride)
                torch.testing.assert_close(y2.cpu().float(), yr2, rtol=RTOL[dtype], atol=1e-4)
                torch.testing.assert_close(mean.cpu(), meanr, rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(m2.cpu(), m2r, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_swish_rows(target, dtype):
    dev, ns = target[0], _ns(target)
    for rows, c, groups in ((1, 1, 1), (13, 5, 0), (3 * 70, 40, 3)):
        x = (torch.randn(rows, c) * 3).to(dtype)
        for scale, shift in ((None, None), (torch.rand(c) + 0.5, torch.randn(c))):
            got = x.clone().to(dev)
            sums = ns.swish_rows_(got, None if scale is None else scale.to(dev),
                                  None if shift is None else shift.to(dev), groups)
            want, want_sums = ops.swish_rows_reference(x.float(), scale, shift, groups)
            torch.testing.assert_close(got.cpu().float(), want, rtol=RTOL[dtype], atol=1e-5)
            torch.testing.assert_close(sums.cpu(), want_sums, rtol=1e-5, atol=1e-4)


@needs_emu
def test_emulated_ops_clear_errors():
    ns = torch.ops.dna_fast_emu
    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match=r"linear_sq_err: offset must have shape \[4, 2\]"):
        ns.linear_sq_err(x, torch.randn(3, 2), torch.randn(3, 2), torch.randn(2))
    with pytest.raises(RuntimeError, match="gate must have shape"):
        ns.linear_col_dev(x, torch.randn(3, 2), torch.randn(2), torch.rand(3, 3))
    with pytest.raises(RuntimeError, match="unsupported kernel size 4"):
        ns.expand_dwconv_stats(_cl(torch.randn(1, 3, 5, 5)), torch.randn(3, 8), torch.randn(8),
                               torch.randn(8, 1, 4, 4), 1)


# ---- the engine's CUDA path end to end ----------------------------------------------------------------------------


def _subset(space, i: int) -> list[int]:
    """A few leaves of the first and the last branch of every cell of block ``i``: every layer of every cell runs
    (the walk visits only the prefixes of wanted candidates), at a fraction of the emulator's time."""
    k = len(space.blocks[i].ops)
    out, base = [], 0
    for cell in space.blocks[i].cells:
        size = k ** cell.depth
        out += [base, base + 1, base + size - 1]
        base += size
    return out


def _assert_same_subset(fast, ref, subset, rtol: float) -> None:
    assert list(fast.index) == list(ref.index)
    got, want = fast["loss"].to_numpy()[subset], ref["loss"].to_numpy()[subset]
    rel = np.abs(got - want) / np.abs(want)
    assert rel.max() <= rtol, f"max relative difference {rel.max():.3g} at {fast.index[subset[int(rel.argmax())]]}"
    assert np.isnan(np.delete(fast["loss"].to_numpy(), subset)).all()


@needs_emu
@pytest.mark.parametrize("with_calib", [False, True], ids=["stored-bn", "calib"])
@pytest.mark.parametrize("i", [1, 2])
def test_engine_cuda_emulated_equals_naive(mini, i, with_calib):
    """kernels="cuda-emulated": every fused pass of the walk through the emulated CUDA launchers (within 1e-4)."""
    pairs, cal = _data(mini.space, i, 16, batch=1, n=1, seed=i, calib=1 if with_calib else 0, like=mini)
    subset = _subset(mini.space, i)
    ref = rate_block_naive(mini, i, pairs, calib=cal, candidates=subset)
    fast = rate_block(mini, i, pairs, calib=cal, kernels="cuda-emulated", candidates=subset)
    _assert_same_subset(fast, ref, subset, rtol=1e-4)


@needs_emu
def test_engine_cuda_emulated_bf16(mini):
    """The engine's low-precision CUDA path (bf16 activations between the kernels, fp32 accumulation) on CPU: its
    losses are at most twice as far from the fp32 reference as the naive reference's own bf16 run (plus 1e-3)."""
    i = 1
    pairs, cal = _data(mini.space, i, 16, batch=1, n=1, seed=11, calib=1, like=mini)
    subset = _subset(mini.space, i)[-3:]  # the deepest cell
    ref32 = rate_block_naive(mini, i, pairs, calib=cal, candidates=subset)["loss"].to_numpy()[subset]
    naive = rate_block_naive(mini, i, pairs, calib=cal, candidates=subset, dtype=torch.bfloat16)
    fast = rate_block(mini, i, pairs, calib=cal, candidates=subset, dtype=torch.bfloat16, kernels="cuda-emulated")
    err_naive = np.max(np.abs(naive["loss"].to_numpy()[subset] - ref32) / ref32)
    err_fast = np.max(np.abs(fast["loss"].to_numpy()[subset] - ref32) / ref32)
    assert err_fast <= 2 * err_naive + 1e-3, f"bf16 CUDA path error {err_fast:.3g} vs the reference's {err_naive:.3g}"


@needs_emu
def test_engine_timed_choice_mixes_paths(mini, monkeypatch, capsys):
    """The per-layer-shape timing of "auto" on a GPU, run here with the emulated kernels as the fused side: each
    layer shape is timed once (cached), the choice is printed with progress, and whatever mix of fused and plain
    layers it picks rates exactly as the naive reference."""
    i = 1
    monkeypatch.setattr(rk, "resolve", lambda kernels, device, dtype: (rk.FusedOps(torch.ops.dna_fast_emu), True))
    monkeypatch.setattr(rk, "_REPEATS", 1)  # the emulator is slow; one timed run per path is enough here
    rk.clear_choices()
    pairs, cal = _data(mini.space, i, 16, batch=1, n=1, seed=7, calib=1, like=mini)
    subset = [0, 1]  # one path from the root of the first cell: each of its layer shapes, fewest nodes
    ref = rate_block_naive(mini, i, pairs, calib=cal, candidates=subset)
    fast = rate_block(mini, i, pairs, calib=cal, progress=True, candidates=subset)
    _assert_same_subset(fast, ref, subset, rtol=1e-4)
    made = rk.choices()
    depth = mini.space.blocks[i].cells[0].depth
    assert len(made) == 2 * depth  # every layer shape of the cell, in evaluation and in calibration mode
    assert all(v[0] in ("fused", "torch") and v[1] > 0 and v[2] > 0 for v in made.values())
    printed = capsys.readouterr()
    assert (printed.out + printed.err).count("rating kernels [") == 2 * depth
    # forced choices: fused everywhere (the emulator is far slower than plain PyTorch, so timing picks torch)
    for key in list(rk._CHOICES):
        rk._CHOICES[key] = (True, 0.0, 1.0)
    _assert_same_subset(rate_block(mini, i, pairs, calib=cal, candidates=subset), ref, subset, rtol=1e-4)
    rk.clear_choices()


def test_kernels_argument_errors(mini):
    pairs, _ = _data(mini.space, 1, 16, batch=1, n=1, seed=0)
    with pytest.raises(ValueError, match="kernels='gpu' is not one of"):
        rate_block(mini, 1, pairs, kernels="gpu")
    with pytest.raises(ValueError, match="runs the CUDA kernels on CPU tensors"):
        rk.resolve("cuda-emulated", torch.device("meta"), torch.float32)
    with pytest.raises(RuntimeError, match="no fused rating kernels for cpu in torch.bfloat16"):
        rk.resolve("fused", torch.device("cpu"), torch.bfloat16)
    assert rk.resolve("torch", torch.device("cpu"), torch.float32) == (None, False)


# ---- on a GPU ---------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU_OPS, reason="needs a CUDA GPU")
@pytest.mark.parametrize("with_calib", [False, True], ids=["stored-bn", "calib"])
def test_engine_cuda_fused_equals_naive(mini, with_calib):
    i = 1
    pairs, cal = _data(mini.space, i, 16, batch=4, n=2, seed=3, calib=2 if with_calib else 0, like=mini)
    sn = mini.to("cuda")
    try:
        ref = rate_block_naive(sn, i, pairs, calib=cal, device="cuda")
        for kernels in ("fused", "auto", "torch"):
            _assert_same(rate_block(sn, i, pairs, calib=cal, device="cuda", kernels=kernels), ref, rtol=1e-4)
    finally:
        mini.cpu()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU_OPS, reason="needs a CUDA GPU")
def test_engine_cuda_bf16_ranking(mini):
    i = 1
    pairs, cal = _data(mini.space, i, 16, batch=8, n=2, seed=5, calib=1, like=mini)
    ref = rate_block_naive(mini, i, pairs, calib=cal)["loss"].to_numpy()
    sn = mini.to("cuda")
    try:
        got = rate_block(sn, i, pairs, calib=cal, device="cuda", dtype=torch.bfloat16, kernels="fused")["loss"]
    finally:
        mini.cpu()
    tau = kendalltau(ref, got.to_numpy()).statistic
    assert np.isfinite(tau) and tau >= 0.98, f"Kendall tau {tau:.3f} of bf16 fused vs fp32 naive"
