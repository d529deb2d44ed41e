"""Fused MBConv kernels (issue 7) vs the eager PyTorch sequences they replace, at the dna space's shapes.

CPU (batch 16): dwconv_bn_act, se_gate, pw_project (output and loss), mbconv_siblings (all six ops of a layer).
GPU (marked gpu, batch 256, bf16, channels_last): a whole MBConv layer in eval mode vs eager (cuDNN) and
torch.compile, and the depthwise kernel's achieved memory bandwidth. Each asserts equality with the reference first.

Baselines: the eager PyTorch a user would write for the same eval-mode step, without avoidable overhead: the BN
scale folded into the conv weight and its shift into the bias once, outside the timed region (as any inference
deployment does), activations in place, the input in the same memory layout as the fused op's, no dtype conversion
inside the timed call; whole MBConv layers as timm modules under ``torch.inference_mode()`` (CPU) / ``no_grad`` and
``torch.compile`` (GPU). Each baseline is itself checked against the reference before timing. CPU times are best of
15 alternating calls (``conftest.interleaved_min``), so both sides see the same machine state.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import cuda_time, gpu, interleaved_min, report

from dna_fast import ops

pytestmark = pytest.mark.skipif(not ops.HAS_NATIVE, reason="dna_fast._C not built")


def _compare(name, benchmark, fused, eager, **extra):
    benchmark(fused)
    t_fused, t_eager = interleaved_min(fused, eager)
    report(name, fused_ms=t_fused * 1e3, eager_ms=t_eager * 1e3, speedup=t_eager / t_fused, **extra)


def _pc(v):
    return v.view(1, -1, 1, 1)


# (C, H, k, stride): block 1 (e3/e6 of 24 at 56x56 -> 28x28), block 2 (e6 of 40 at 28x28), block 3/4 (14x14)
DW_SHAPES = [(40, 56, 3, 1), (40, 56, 5, 1), (40, 56, 7, 1), (144, 56, 3, 2), (240, 28, 5, 1), (240, 28, 7, 2),
             (480, 14, 3, 1), (480, 14, 7, 1)]


@pytest.mark.parametrize("shape", DW_SHAPES, ids=lambda s: "c{}_h{}_k{}_s{}".format(*s))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_dwconv_bn_act_cpu(benchmark, shape, layout):
    c, h, k, s = shape
    x = torch.randn(16, c, h, h)
    x = x.to(memory_format=torch.channels_last) if layout == "channels_last" else x
    w, sc, sh = torch.randn(c, 1, k, k) * 0.3, torch.randn(c), torch.randn(c)
    wf = w * sc.view(-1, 1, 1, 1)  # eager: BN folded into the conv once, outside the timed call

    def eager():
        return F.silu(F.conv2d(x, wf, sh, stride=s, padding=k // 2, groups=c), inplace=True)

    ref = ops.dwconv_bn_act_reference(x, w, sc, sh, s)
    torch.testing.assert_close(ops.dwconv_bn_act(x, w, sc, sh, s), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eager(), ref, rtol=1e-4, atol=1e-4)
    _compare(f"dwconv_bn_act cpu {layout} 16x{c}x{h}x{h} k{k} s{s}", benchmark,
             lambda: ops.dwconv_bn_act(x, w, sc, sh, s), eager)


@pytest.mark.parametrize("cr", [(144, 6), (480, 20), (1152, 48)], ids=lambda t: f"c{t[0]}_r{t[1]}")
def test_se_gate_cpu(benchmark, cr):
    c, r = cr
    args = (torch.randn(16, c), torch.randn(r, c) * 0.1, torch.randn(r), torch.randn(c, r) * 0.1, torch.randn(c))
    torch.testing.assert_close(ops.se_gate(*args), ops.se_gate_reference(*args), rtol=1e-5, atol=1e-5)
    p, wr, br, we, be = args
    _compare(f"se_gate cpu 16x{c} r{r}", benchmark, lambda: ops.se_gate(*args),
             lambda: torch.sigmoid(F.linear(F.silu(F.linear(p, wr, br)), we, be)))


# (C mid, Co, H): block 1..4 projections at batch 16
PW_SHAPES = [(144, 24, 56), (240, 40, 28), (480, 80, 14), (672, 112, 14)]


@pytest.mark.parametrize("shape", PW_SHAPES, ids=lambda s: "c{}_co{}_h{}".format(*s))
@pytest.mark.parametrize("mode", ["output", "loss"])
def test_pw_project_cpu(benchmark, shape, mode):
    c, co, h = shape
    x, gate = torch.randn(16, c, h, h), torch.rand(16, c)
    w, sc, sh = torch.randn(co, c, 1, 1) * c ** -0.5, torch.randn(co), torch.randn(co)
    res = torch.randn(16, co, h, h)
    tgt = torch.randn(16, co, h, h) if mode == "loss" else None
    ref = ops.pw_project_reference(x, gate, w, sc, sh, res, tgt)
    torch.testing.assert_close(ops.pw_project(x, gate, w, sc, sh, res, tgt), ref, rtol=1e-4, atol=1e-3)
    wf = w * sc.view(-1, 1, 1, 1)  # eager: BN folded into the 1x1 conv once, outside the timed call

    def eager():
        y = F.conv2d(x * gate[:, :, None, None], wf, sh).add_(res)
        return y if tgt is None else y.sub_(tgt).square_().sum((1, 2, 3))

    torch.testing.assert_close(eager(), ref, rtol=1e-4, atol=1e-3)

    _compare(f"pw_project cpu {mode} 16x{c}x{h}x{h} -> {co}", benchmark,
             lambda: ops.pw_project(x, gate, w, sc, sh, res, tgt), eager)


def _dna_layer(c_in, c_out, stride, device="cpu", dtype=torch.float32):
    from dna_fast.nn.mbconv import MBConvOp

    mods = []
    for k in (3, 5, 7):
        for e in (3, 6):
            m = MBConvOp(f"ir_k{k}_e{e}_se0.25", c_in, c_out, stride).eval()
            for bn in (m.bn1, m.bn2, m.bn3):
                bn.running_var.uniform_(0.5, 2.0)
            mods.append(m.to(device=device, dtype=dtype))
    return mods


@pytest.mark.parametrize("layer", [(40, 40, 28), (80, 80, 14)], ids=lambda t: f"c{t[0]}_h{t[2]}")
def test_mbconv_siblings_cpu(benchmark, layer):
    """The rating engine's unit of work: all six DNA ops of a layer, per-sample losses vs a target."""
    c_in, c_out, h = layer
    mods = _dna_layer(c_in, c_out, 1)
    folded = [ops.fold_mbconv(m) for m in mods]
    x, tgt = torch.randn(16, c_in, h, h), torch.randn(16, c_out, h, h)
    torch.testing.assert_close(ops.mbconv_siblings(x, folded, 1, True, tgt),
                               ops.mbconv_siblings_reference(x, folded, 1, True, tgt), rtol=1e-4, atol=1e-2)

    @torch.inference_mode()
    def eager():
        return torch.stack([(m(x) - tgt).square().sum((1, 2, 3)) for m in mods])

    torch.testing.assert_close(eager(), ops.mbconv_siblings_reference(x, folded, 1, True, tgt), rtol=1e-4, atol=1e-2)

    _compare(f"mbconv_siblings cpu 6 ops 16x{c_in}x{h}x{h}", benchmark,
             lambda: ops.mbconv_siblings(x, folded, 1, True, tgt), eager)


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("layer", [(40, 40, 28), (80, 80, 14), (112, 112, 14)], ids=lambda t: f"c{t[0]}_h{t[2]}")
def test_gpu_mbconv_layer_bf16(benchmark, layer):
    """One MBConv layer (k5 e6), eval, bf16, batch 256, channels_last: fused vs eager (cuDNN) vs torch.compile;
    and all six sibling ops per call vs six eager modules."""
    c_in, c_out, h = layer
    mods = _dna_layer(c_in, c_out, 1, "cuda", torch.bfloat16)
    x = torch.randn(256, c_in, h, h, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    mods = [m.to(memory_format=torch.channels_last) for m in mods]
    folded = [ops.fold_mbconv(m) for m in mods]
    one, f_one = mods[3], [folded[3]]
    with torch.no_grad():
        exact = ops.mbconv_siblings_reference(x.float(), [ops.FoldedMBConv(*[None if t is None else t.float()
                                                                            for t in f_one[0]])], 1, True)[0]
        ours, eager_out = ops.mbconv_siblings(x, f_one, 1, True)[0], one(x)
        err_ours = (ours.float() - exact).abs().max().item()
        err_eager = (eager_out.float() - exact).abs().max().item()
        assert err_ours <= 2 * err_eager + 1e-2, (err_ours, err_eager)
        compiled = torch.compile(one)
        t_fused = cuda_time(lambda: ops.mbconv_siblings(x, f_one, 1, True), 50)
        t_eager = cuda_time(lambda: one(x), 50)
        t_compiled = cuda_time(lambda: compiled(x), 50)
        t_six = cuda_time(lambda: ops.mbconv_siblings(x, folded, 1, True), 50)
        t_six_eager = cuda_time(lambda: [m(x) for m in mods], 50)
        benchmark(lambda: (ops.mbconv_siblings(x, f_one, 1, True), torch.cuda.synchronize()))
    report(f"gpu mbconv layer bf16 256x{c_in}x{h}x{h} k5e6", fused_ms=t_fused * 1e3, eager_ms=t_eager * 1e3,
           compiled_ms=t_compiled * 1e3, speedup_vs_eager=t_eager / t_fused, speedup_vs_compile=t_compiled / t_fused,
           six_ops_fused_ms=t_six * 1e3, six_ops_eager_ms=t_six_eager * 1e3, six_ops_speedup=t_six_eager / t_six)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("shape", [(240, 28, 5, 1), (480, 14, 3, 1), (144, 56, 3, 2), (672, 14, 5, 1)],
                         ids=lambda s: "c{}_h{}_k{}_s{}".format(*s))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gpu_dwconv_bandwidth_bf16(benchmark, shape, layout):
    """Depthwise kernel, bf16, batch 256: achieved GB/s = (input read + output written) / time."""
    c, h, k, s = shape
    x = torch.randn(256, c, h, h, device="cuda", dtype=torch.bfloat16)
    x = x.to(memory_format=torch.channels_last) if layout == "channels_last" else x
    w, sc, sh = (torch.randn(c, 1, k, k, device="cuda") * 0.3, torch.randn(c, device="cuda"),
                 torch.randn(c, device="cuda"))
    y = ops.dwconv_bn_act(x, w, sc, sh, s)
    torch.testing.assert_close(y, ops.dwconv_bn_act_reference(x, w, sc, sh, s), rtol=2e-2, atol=2e-2)
    t = cuda_time(lambda: ops.dwconv_bn_act(x, w, sc, sh, s, with_sums=True), 50)
    # eager on the same tensor (same layout), BN folded into bf16 weights and bias once, outside the timed call
    wf, bf = (w * sc.view(-1, 1, 1, 1)).to(x.dtype), sh.to(x.dtype)

    def eager():
        return F.silu(F.conv2d(x, wf, bf, stride=s, padding=k // 2, groups=c), inplace=True)

    torch.testing.assert_close(eager(), ops.dwconv_bn_act_reference(x, w, sc, sh, s), rtol=2e-2, atol=2e-2)
    t_eager = cuda_time(eager, 50)
    benchmark(lambda: (ops.dwconv_bn_act(x, w, sc, sh, s), torch.cuda.synchronize()))
    gbs = (x.numel() + y.numel()) * x.element_size() / t / 1e9
    report(f"gpu dwconv_bn_act bf16 {layout} 256x{c}x{h}x{h} k{k} s{s}", ms=t * 1e3, gb_per_s=gbs,
           eager_ms=t_eager * 1e3, speedup=t_eager / t, device=torch.cuda.get_device_name())
