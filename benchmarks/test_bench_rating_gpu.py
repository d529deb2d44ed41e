"""GPU rating (issue 18): the engine's CUDA kernels vs its plain-PyTorch path vs the naive reference, and each kernel
against the device's peak. Marked gpu: skipped without a GPU (``pytest benchmarks -m gpu --benchmark-only -s``).

Block 1 (0-based) of ``dna`` (hidden width 40, 4 layers, 1296 candidates, 48x56x56 -> 80x28x28), batch 256, bf16:
``rate_block(kernels="fused")`` (every layer on the CUDA kernels), ``kernels="torch"`` (the engine's plain-PyTorch
path: cuBLAS GEMMs with BN folded in, cuDNN depthwise convs), ``kernels="auto"`` (per layer shape the faster of the
two, timed once; the choices are reported) and ``rate_block_naive`` in bf16 autocast on a fixed random 64 of the
candidates (its time scaled to all 1296). No figure is reported unless both engine paths agree with the fp32
reference on those candidates as closely as the naive bf16 reference does (2x rule, ``_bf16_checked``).

Kernels: each CUDA kernel at the shapes of block 1's second layer (batch 256, 28x28, the three kernel-size groups of
DNA's six ops), its achieved DRAM bandwidth (bytes it must move / time) and arithmetic rate (useful FLOPs / time)
against the device's peak (memory clock x bus width; fp32 FMA units x clock, from the device properties).
"""

from __future__ import annotations

import pytest
import torch
from conftest import cuda_time, gpu, report
from test_bench_rating import _bf16_checked, _timed, gpu_block1

from dna_fast import _rating_kernels as rk
from dna_fast.rating import rate_block, rate_block_naive

# fp32 FMA lanes per SM by compute capability (CUDA programming guide, arithmetic instructions table)
_FP32_LANES = {(7, 0): 64, (8, 0): 64, (8, 6): 128, (8, 9): 128, (9, 0): 128, (10, 0): 128, (12, 0): 128}


def _peaks() -> tuple[float | None, float | None]:
    """(DRAM bytes/s, fp32 FLOP/s) of the current device from its properties; None where torch does not say."""
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    mem_khz, bus_bits, clk_khz = (getattr(p, a, None) for a in ("memory_clock_rate", "memory_bus_width", "clock_rate"))
    bw = 2 * mem_khz * 1e3 * bus_bits / 8 if mem_khz and bus_bits else None  # double data rate
    lanes = _FP32_LANES.get((p.major, p.minor))
    flops = 2 * lanes * p.multi_processor_count * clk_khz * 1e3 if lanes and clk_khz else None
    return bw, flops


@gpu
@pytest.mark.gpu
def test_bench_rating_gpu_paths(benchmark):
    if not rk.has_cuda_kernels():
        pytest.skip("extension built without its CUDA kernels")
    dev = torch.device("cuda")
    sn, pairs, n, sample = gpu_block1()
    bf = torch.bfloat16
    rk.clear_choices()
    for kernels in ("fused", "torch", "auto"):  # warm-up (and the timed choice of "auto")
        rate_block(sn, 1, pairs, dtype=bf, candidates=sample[:4], kernels=kernels)
    rate_block_naive(sn, 1, pairs, dtype=bf, candidates=sample[:4])
    ref32 = rate_block_naive(sn, 1, pairs, candidates=sample)["loss"].to_numpy()
    naive, t_naive = _timed(lambda: rate_block_naive(sn, 1, pairs, dtype=bf, candidates=sample), dev)
    t_naive *= n / len(sample)
    times, losses = {}, {}
    for kernels in ("fused", "torch", "auto"):
        if kernels == "fused":
            out, t = _timed(lambda: benchmark.pedantic(rate_block, args=(sn, 1, pairs),
                                                       kwargs={"dtype": bf, "kernels": "fused"},
                                                       rounds=1, iterations=1), dev)
        else:
            out, t = _timed(lambda: rate_block(sn, 1, pairs, dtype=bf, kernels=kernels), dev)  # noqa: B023
        losses[kernels], times[kernels] = out["loss"].to_numpy(), t
        _bf16_checked(losses[kernels], naive["loss"].to_numpy(), ref32, sample)
    chosen = rk.choices()
    report("rating dna block 1 gpu batch 256 bf16 by kernel path",
           fused_cands_per_s=n / times["fused"], torch_cands_per_s=n / times["torch"],
           auto_cands_per_s=n / times["auto"], naive_cands_per_s=n / t_naive,
           fused_vs_torch=times["torch"] / times["fused"], auto_vs_torch=times["torch"] / times["auto"],
           fused_layers=sum(v[0] == "fused" for v in chosen.values()), timed_layers=len(chosen),
           device=torch.cuda.get_device_name())
    for shape, (pick, tf, tp) in chosen.items():
        print(f"[bench]   {shape}: fused {tf * 1e3:.3f} ms, torch {tp * 1e3:.3f} ms -> {pick}")


@gpu
@pytest.mark.gpu
def test_bench_rating_gpu_kernels_vs_peak(benchmark):
    if not rk.has_cuda_kernels():
        pytest.skip("extension built without its CUDA kernels")
    ns = torch.ops.dna_fast
    dev, bf = torch.device("cuda"), torch.bfloat16
    bw_peak, fl_peak = _peaks()
    n, h, w, cin = 256, 28, 28, 40
    x = torch.randn(n, cin, h, w, device=dev).to(bf).contiguous(memory_format=torch.channels_last)
    esize = x.element_size()
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)

    def emit(name: str, seconds: float, nbytes: float, flops: float) -> None:
        fig = {"us": seconds * 1e6, "GB_per_s": nbytes / seconds / 1e9, "TFLOP_per_s": flops / seconds / 1e12}
        if bw_peak:
            fig["of_peak_bw"] = nbytes / seconds / bw_peak
        if fl_peak:
            fig["of_peak_fp32"] = flops / seconds / fl_peak
        report(f"rating kernel {name}", **fig, device=torch.cuda.get_device_name())

    for k in (3, 5, 7):
        c = 40 * 3 + 40 * 6  # the e3 and e6 ops of one kernel size, concatenated
        w1, b1 = torch.randn(cin, c, device=dev) * 0.2, torch.randn(c, device=dev) * 0.1
        wdw = torch.randn(c, 1, k, k, device=dev) * 0.2
        sc, sh = torch.rand(c, device=dev) + 0.5, torch.randn(c, device=dev) * 0.1
        t = cuda_time(lambda: ns.expand_dwconv_bn_act(x, w1, b1, wdw, sc, sh, 1))  # noqa: B023
        emit(f"expand_dwconv_bn_act k{k} s1 [{n},{cin},{h},{w}] -> {c}", t,
             (x.numel() + n * h * w * c) * esize, 2.0 * n * h * w * c * (cin + k * k))
        t = cuda_time(lambda: ns.expand_dwconv_stats(x, w1, b1, wdw, 1))  # noqa: B023
        emit(f"expand_dwconv_stats k{k} s1 [{n},{cin},{h},{w}] -> {c}", t,
             (x.numel() + n * h * w * c) * esize, 2.0 * n * h * w * c * (cin + k * k))
    rows, kdim = n * h * w, 40 * 6
    hid = torch.randn(rows, kdim, device=dev).to(bf)
    wp = (torch.randn(kdim, 80, device=dev) * 0.1).to(bf)
    off, shift = torch.randn(rows, 80, device=dev), torch.randn(80, device=dev)
    gate, mean = torch.rand(n, kdim, device=dev), torch.randn(80, device=dev)
    t = cuda_time(lambda: ns.linear_sq_err(hid, wp, off, shift, gate))
    emit(f"linear_sq_err [{rows},{kdim}]x[{kdim},80]", t, hid.numel() * esize + off.numel() * 4,
         2.0 * rows * kdim * 80)
    t = cuda_time(lambda: ns.linear_col_dev(hid, wp, mean, gate))
    emit(f"linear_col_dev [{rows},{kdim}]x[{kdim},80]", t, hid.numel() * esize, 2.0 * rows * kdim * 80)
    t = cuda_time(lambda: ns.swish_rows_(hid, None, shift.new_zeros(kdim), n))
    emit(f"swish_rows_ [{rows},{kdim}]", t, 2 * hid.numel() * esize, 0.0)
