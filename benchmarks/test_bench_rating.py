"""Rating speed (issue 9): the trie engine vs the one-candidate-at-a-time reference on block 1 of dna.

Block 1 (0-based) of ``dna``: hidden width 40, 4 layers, 1296 candidates, 48x56x56 teacher input -> 80x28x28 target.
CPU: batch 8, with and without BN recalibration; target >= 10x (asserted: >= 5x, see the NOTE below). Both engines
run on one thread, then both on every core (``DNA_BENCH_THREAD_COUNTS=1,2`` sets the list).

Baseline: ``rate_block_naive``, the original's rating loop: for every candidate its own path of timm modules, its
BNs reset and recalibrated in place (the original's ``reset_bn_eval``), then its forward on every batch, under
``torch.inference_mode()`` (the original rates under ``torch.no_grad()``), NCHW fp32 as the original runs it. It
is fair because it is what a user of the original gets, without its avoidable overheads (no autograd graph, no
copy of the path per candidate). ``DNA_BENCH_NAIVE_CHANNELS_LAST=1`` runs the baseline channels_last instead (the
engine's own layout; measured within noise of NCHW on the loaded 2-core VM, 2026-12-01).

Protocol: both engines are first warmed up at the full batch (the first large run in a process pays the allocator's
warm-up, which would flip a one-shot comparison), then each runs once, timed alone: the reference on a fixed random
quarter of the candidates (its time scaled to all 1296; ``DNA_BENCH_NAIVE_SAMPLE=k``: k of them, for a quick run;
``DNA_BENCH_FULL_NAIVE=1``: all of them) and the engine on all 1296. No figure is reported unless the engine equals
the reference (rel 1e-4) on every candidate the reference ran.

Memory: peak RSS growth (polled every ms) while rating a 2-layer and a 4-layer block of the same width (36 and 1296
candidates, batch 8, with calib), each in a fresh process.
GPU (``-m gpu``): batch 256 bf16 vs the naive reference in bf16 autocast (same sampling), candidates/s, and the wall
time to rate all six blocks of dna on 20 batches (data made and checked before the timed region).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import gpu, report

from dna_fast._rating_kernels import cpu_bf16_supported
from dna_fast.rating import rate_block, rate_block_naive
from dna_fast.space import SearchSpace
from dna_fast.supernet import Supernet

THREAD_COUNTS = sorted({int(t) for t in os.environ.get("DNA_BENCH_THREAD_COUNTS", f"1,{os.cpu_count() or 1}")
                        .split(",")})
FULL = os.environ.get("DNA_BENCH_FULL_NAIVE", "0") == "1"
NAIVE_SAMPLE = int(os.environ.get("DNA_BENCH_NAIVE_SAMPLE", "0"))  # 0: a quarter of the candidates
NAIVE_CL = os.environ.get("DNA_BENCH_NAIVE_CHANNELS_LAST", "0") == "1"


def _space(blocks: slice | list = slice(0, 2)):
    spec = SearchSpace.load("dna").to_dict()
    spec["blocks"] = spec["blocks"][blocks] if isinstance(blocks, slice) else blocks
    return SearchSpace.from_dict(spec, name="dna_bench")


def _perturb(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(f, device="cpu"):
    """(result, wall seconds) of f() alone, synchronized on a GPU."""
    _sync(device)
    t0 = time.perf_counter()
    out = f()
    _sync(device)
    return out, time.perf_counter() - t0


def _max_rel(a, b) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


def rating_work(supernet, i: int, hw: tuple[int, int]) -> dict:
    """The exact work of rating block ``i`` per image of ``hw`` input pixels, read off the supernet's op modules (the
    teacher-width input, the block's output width): ``trie_macs`` (each node at level L of a cell's trie, K**L of
    them, runs all K ops of layer L once), ``naive_macs`` (each of the K**depth candidates runs its own path), their
    ratio ``sharing``, and the 1x1-conv GEMMs of the trie as {(rows per image, K, N): times per image}."""
    trie = naive = 0
    gemms: dict[tuple, int] = {}
    for cell in supernet.blocks[i].cells:
        depth, size = len(cell.layers), hw
        for level, layer in enumerate(cell.layers):
            k = len(layer.ops)
            macs, out_hw = 0, size
            for op in layer.ops:
                cin, mid = op.conv_pw.in_channels, op.conv_pw.out_channels
                cout, kk, st = op.conv_pwl.out_channels, op.conv_dw.kernel_size[0], op.conv_dw.stride[0]
                out_hw = ((size[0] - 1) // st + 1, (size[1] - 1) // st + 1)
                pix, opix = size[0] * size[1], out_hw[0] * out_hw[1]
                rd = 0 if isinstance(op.se, torch.nn.Identity) else op.se.conv_reduce.out_channels
                macs += pix * cin * mid + opix * mid * kk * kk + opix * mid * cout + 2 * mid * rd
                for key in ((pix, cin, mid), (opix, mid, cout)):  # expansion, projection
                    gemms[key] = gemms.get(key, 0) + k ** level
            trie += k ** level * macs
            naive += k ** (depth - 1) * macs  # every op of this layer sits in k**(depth - 1) candidates
            size = out_hw
    return {"trie_macs": trie, "naive_macs": naive, "sharing": naive / trie, "gemms": gemms}


def gemm_roof(gemms: dict, batch: int, dtype=torch.float32, device="cpu", repeats: int = 3) -> float:
    """FLOP/s of plain ``torch.mm`` over the trie's 1x1-conv GEMMs at ``batch`` images (each shape timed, best of
    ``repeats``, on the current threads; weighted by how often the trie runs it): the rate a perfect engine would
    reach on its pointwise work."""
    flops = seconds = 0.0
    for (rows, k, n), times in gemms.items():
        a = torch.randn(rows * batch, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        torch.mm(a, b)
        best = min(_timed(lambda: torch.mm(a, b), device)[1] for _ in range(repeats))  # noqa: B023
        flops += 2.0 * rows * batch * k * n * times
        seconds += best * times
    return flops / seconds


def cpu_block1(threads: int, with_calib: bool = False):
    """The CPU benchmarks' case: block 1 of dna (BN statistics perturbed) on ``threads`` threads, one batch of 8
    random 48x56x56 -> 80x28x28 pairs, and a calibration batch of 8 where asked: (supernet, pairs, calib or None)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    sn = Supernet(_space()).eval()
    _perturb(sn)
    g = torch.Generator().manual_seed(1)
    pairs = [(torch.randn(8, 48, 56, 56, generator=g), torch.randn(8, 80, 28, 28, generator=g))]
    return sn, pairs, [torch.randn(8, 48, 56, 56, generator=g)] if with_calib else None


@pytest.mark.parametrize("threads", THREAD_COUNTS, ids=[f"{t}thr" for t in THREAD_COUNTS])
@pytest.mark.parametrize("with_calib", [False, True], ids=["stored-bn", "calib"])
def test_bench_rating_cpu_block1(benchmark, with_calib, threads):
    sn, pairs, calib = cpu_block1(threads, with_calib)
    n = sn.space.num_candidates(1)
    k = n if FULL else (NAIVE_SAMPLE or n // 4)
    sample = np.sort(np.random.default_rng(0).choice(n, min(k, n), replace=False))
    naive_sn, naive_pairs, naive_calib = sn, pairs, calib
    if NAIVE_CL:
        import copy

        cl = torch.channels_last
        naive_sn = copy.deepcopy(sn).to(memory_format=cl)
        naive_pairs = [(x.contiguous(memory_format=cl), t) for x, t in pairs]
        naive_calib = None if calib is None else [x.contiguous(memory_format=cl) for x in calib]
    # warm-up at the full batch, both engines (allocator, oneDNN primitives, lazy inits)
    rate_block_naive(naive_sn, 1, naive_pairs, calib=naive_calib, candidates=sample[:4])
    rate_block(sn, 1, pairs, calib=calib, candidates=np.arange(6))

    ref, t_naive = _timed(lambda: rate_block_naive(naive_sn, 1, naive_pairs, calib=naive_calib, candidates=sample))
    t_naive *= n / len(sample)
    fast, t_fast = _timed(lambda: benchmark.pedantic(rate_block, args=(sn, 1, pairs), kwargs={"calib": calib},
                                                     rounds=1, iterations=1))
    rel = _max_rel(fast["loss"].to_numpy()[sample], ref["loss"].to_numpy()[sample])
    assert rel <= 1e-4, f"fast differs from the reference by {rel:.3g}"
    report(f"rating dna block 1 cpu batch 8 {'calib' if with_calib else 'stored BN'} {threads} thread(s)",
           fast_s=t_fast, naive_s=t_naive, naive_sampled=len(sample), ratio=t_naive / t_fast,
           cands_per_s=n / t_fast, threads=threads, max_rel_diff=rel, target_10x_met=t_naive / t_fast >= 10,
           naive_layout="channels_last" if NAIVE_CL else "nchw")
    _report_work("cpu batch 8 " + ("calib" if with_calib else "stored BN") + f" {threads} thread(s)", sn, pairs,
                 t_fast, t_naive, calib is not None)
    # NOTE the target is 10x; the assertion guards against regressions (prefix sharing alone gives ~6x)
    # rather than failing every run on a noisy shared machine.
    assert t_naive / t_fast >= 5, f"only {t_naive / t_fast:.1f}x faster than the reference"


def _report_work(what: str, supernet, pairs, t_fast: float, t_naive: float, calib: bool, dtype=torch.float32,
                 device="cpu") -> dict:
    """Print the work behind a rating time against its roofs: the exact MACs the trie and the naive loop evaluated
    (calibration walks the trie once more, on one batch of the same size: counted), the GFLOP/s each achieved, and
    the rate of plain GEMMs of the trie's 1x1-conv shapes measured now on the same threads. The ceiling of the
    ratio is sharing x (GEMM roof / the naive loop's rate): the engine at the GEMM roof."""
    batch, hw = pairs[0][0].shape[0], tuple(pairs[0][0].shape[-2:])
    w = rating_work(supernet, 1, hw)
    passes = 2 if calib else 1  # the calibration walk visits every node once more (the naive loop: every path)
    trie, naive = w["trie_macs"] * batch * passes, w["naive_macs"] * batch * passes
    roof = gemm_roof(w["gemms"], batch, dtype, device)
    fig = {"trie_gmac": trie / 1e9, "naive_gmac": naive / 1e9, "sharing": w["sharing"],
           "engine_gflop_s": 2 * trie / t_fast / 1e9, "naive_gflop_s": 2 * naive / t_naive / 1e9,
           "gemm_roof_gflop_s": roof / 1e9, "engine_of_roof": 2 * trie / t_fast / roof,
           "naive_of_roof": 2 * naive / t_naive / roof,
           "ratio_ceiling": w["sharing"] * roof / (2 * naive / t_naive), "ratio": t_naive / t_fast,
           "threads": torch.get_num_threads(), "dtype": str(dtype).replace("torch.", "")}
    report(f"rating work dna block 1 {what}", **fig)
    return fig


# the bf16 CPU path (issue 25): where the CPU has bf16 dot products, or forced to run the same code here
FORCE_CPU_BF16 = os.environ.get("DNA_BENCH_FORCE_CPU_BF16") == "1"


@pytest.mark.host_bf16
@pytest.mark.skipif(not (cpu_bf16_supported() or FORCE_CPU_BF16),
                    reason="needs AVX512-BF16 or AMX (DNA_BENCH_FORCE_CPU_BF16=1 runs it anyway, untimed in effect)")
@pytest.mark.parametrize("threads", THREAD_COUNTS, ids=[f"{t}thr" for t in THREAD_COUNTS])
def test_bench_rating_cpu_bf16_block1(benchmark, threads):
    """The bf16 CPU rating path against the fp32 engine, side by side on the same block, batch, threads (goal:
    >= 2x on a CPU with AVX512-BF16 or AMX). Fair: both are the shipped engine at its best for its dtype (fp32: the
    fused CPU kernels; bf16: ``kernels="auto"``, which takes the bf16 path only on such a CPU), timed one after the
    other after a warm-up of both. Checked first: the bf16 losses no further from the fp32 reference than twice
    autocast's own bf16 run (sampled candidates), and their Kendall tau against fp32 over all 1296 reported. Printed
    with each dtype's GEMM roof measured now: the ceiling of the speedup is about the ratio of the two roofs.
    Forced on a CPU without bf16 dot products it runs the same bf16 code (``kernels="torch"``) and its time says
    nothing about the goal (``forced`` in the figures)."""
    from scipy.stats import kendalltau

    sn, pairs, _ = cpu_block1(threads)
    n = sn.space.num_candidates(1)
    sample = np.sort(np.random.default_rng(0).choice(n, 16, replace=False))
    bf = torch.bfloat16
    forced = not cpu_bf16_supported()
    kernels = "torch" if forced else "auto"
    rate_block(sn, 1, pairs, candidates=np.arange(6))  # warm-up of both paths at the full batch
    rate_block(sn, 1, pairs, dtype=bf, kernels=kernels, candidates=np.arange(6))
    ref32 = rate_block_naive(sn, 1, pairs, candidates=sample)["loss"].to_numpy()
    naive_bf = rate_block_naive(sn, 1, pairs, dtype=bf, candidates=sample)["loss"].to_numpy()
    fp32, t32 = _timed(lambda: rate_block(sn, 1, pairs))
    fast, t16 = _timed(lambda: benchmark.pedantic(rate_block, args=(sn, 1, pairs),
                                                  kwargs={"dtype": bf, "kernels": kernels}, rounds=1, iterations=1))
    f32, f16 = fp32["loss"].to_numpy(), fast["loss"].to_numpy()
    err_fast, err_naive = _bf16_checked(f16, naive_bf, ref32, sample)  # naive runs: NaN outside the sample
    tau = float(kendalltau(f16, f32).statistic)
    w = rating_work(sn, 1, (56, 56))
    flop = 2 * w["trie_macs"] * 8  # the trie's exact work on the batch of 8
    roof32, roof16 = gemm_roof(w["gemms"], 8), gemm_roof(w["gemms"], 8, bf)
    report(f"rating dna block 1 cpu batch 8 stored BN bf16 vs fp32 engine {threads} thread(s)", fp32_s=t32,
           bf16_s=t16, speedup=t32 / t16, target_2x_met=bool(t32 / t16 >= 2 and not forced), forced=forced,
           kendall_vs_fp32=tau, top10_same=bool(set(np.argsort(f16)[:10]) == set(np.argsort(f32)[:10])),
           bf16_rel_err=err_fast, autocast_bf16_rel_err=err_naive, gemm_roof_fp32_gflop_s=roof32 / 1e9,
           gemm_roof_bf16_gflop_s=roof16 / 1e9, roof_ratio=roof16 / roof32,
           engine_fp32_gflop_s=flop / t32 / 1e9, engine_bf16_gflop_s=flop / t16 / 1e9, threads=threads)


_MEM_SCRIPT = r"""
import json, resource, sys, threading, time, torch
from dna_fast.rating import rate_block
from dna_fast.space import SearchSpace
from dna_fast.supernet import Supernet
torch.set_num_threads(1)
depth = int(sys.argv[1])
spec = SearchSpace.load("dna").to_dict()
spec["blocks"] = spec["blocks"][:2]
spec["blocks"][1] = dict(spec["blocks"][1], cells=[[depth, 40]])
sn = Supernet(SearchSpace.from_dict(spec, name="mem")).eval()
g = torch.Generator().manual_seed(0)
pairs = [(torch.randn(8, 48, 56, 56, generator=g), torch.randn(8, 80, 28, 28, generator=g))]
calib = [torch.randn(8, 48, 56, 56, generator=g)]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
peak, done = [0], []
def poll():
    while not done:
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)
rate_block(sn, 1, [(p[0][:1], p[1][:1]) for p in pairs])  # warm up: lazy inits outside the measurement
before = rss()
th = threading.Thread(target=poll)
th.start()
rate_block(sn, 1, pairs, calib=calib)
done.append(1)
th.join()
print(json.dumps({"depth": depth, "peak_growth_mb": (peak[0] - before) / 2**20, "before_mb": before / 2**20}))
"""


def test_bench_rating_memory(benchmark):
    def run(depth):
        # a fixed mmap threshold makes glibc map every tensor over 64 KB and unmap it when freed, so RSS follows the
        # live tensors instead of what the heap keeps cached
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
        out = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, str(depth)], check=True, capture_output=True,
                             text=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    two = benchmark.pedantic(lambda: run(2), rounds=1, iterations=1)
    four = run(4)
    ratio = four["peak_growth_mb"] / max(two["peak_growth_mb"], 1e-9)
    report("rating peak memory growth, width 40, batch 8, calib (2 layers: 36 cands, 4 layers: 1296 cands)",
           two_layers_mb=two["peak_growth_mb"], four_layers_mb=four["peak_growth_mb"], ratio=ratio,
           rss_before_mb=two["before_mb"])
    assert ratio <= 1.5


def _bf16_checked(fast_bf16, naive_bf16, ref32, sample) -> tuple[float, float]:
    """The engine's bf16 losses are at most twice as far from the fp32 reference as the reference's own bf16 run
    (plus 1e-3): the flash-attention rule for a low-precision kernel. Returns both errors (max rel over sample)."""
    err_fast = _max_rel(fast_bf16[sample], ref32[sample])
    err_naive = _max_rel(naive_bf16[sample], ref32[sample])
    assert err_fast <= 2 * err_naive + 1e-3, f"bf16 engine error {err_fast:.3g} vs the reference's {err_naive:.3g}"
    return err_fast, err_naive


# the GPU check's dry run (benchmarks/gpu/check.py --dry-run): test_bench_rating_gpu_block1 runs a small CPU stand-in
# of itself (batch 2, 8x8 inputs, 8 sampled candidates), so its figures reach the check's rating summary
DRY_RUN = os.environ.get("DNA_GPU_CHECK_DRY_RUN") == "1" and not torch.cuda.is_available()


def gpu_block1(batch: int = 256, sampled: int = 64, device: str = "cuda", hw: int = 56):
    """The GPU benchmarks' case: block 1 of dna on ``device`` (BN statistics perturbed), one batch of ``batch``
    random 48 x hw x hw -> 80 x hw/2 x hw/2 pairs, and a fixed random sample of ``sampled`` candidates for the naive
    reference: (supernet, pairs, number of candidates, sample)."""
    torch.manual_seed(0)
    dev = torch.device(device)
    sn = Supernet(_space()).eval().to(dev)
    _perturb(sn)
    pairs = [(torch.randn(batch, 48, hw, hw, device=dev), torch.randn(batch, 80, hw // 2, hw // 2, device=dev))]
    n = sn.space.num_candidates(1)
    return sn, pairs, n, np.sort(np.random.default_rng(0).choice(n, sampled, replace=False))


@pytest.mark.skipif(not (torch.cuda.is_available() or DRY_RUN), reason="needs a CUDA GPU")
@pytest.mark.gpu
def test_bench_rating_gpu_block1(benchmark):
    from scipy.stats import kendalltau

    dev = torch.device("cpu" if DRY_RUN else "cuda")
    sn, pairs, n, sample = gpu_block1(2, 8, "cpu", 8) if DRY_RUN else gpu_block1()
    bf = torch.bfloat16
    rate_block(sn, 1, pairs, dtype=bf, candidates=sample[:4])  # warm up kernels
    rate_block_naive(sn, 1, pairs, dtype=bf, candidates=sample[:4])
    # checks first: bf16 engine vs the fp32 reference, ranking vs the fp32 engine
    ref32 = rate_block_naive(sn, 1, pairs, candidates=sample)["loss"].to_numpy()
    fp32 = rate_block(sn, 1, pairs)["loss"].to_numpy()
    naive, t_naive = _timed(lambda: rate_block_naive(sn, 1, pairs, dtype=bf, candidates=sample), dev)
    t_naive *= n / len(sample)
    fast, t_fast = _timed(lambda: benchmark.pedantic(rate_block, args=(sn, 1, pairs), kwargs={"dtype": bf},
                                                     rounds=1, iterations=1), dev)
    fast_l = fast["loss"].to_numpy()
    err_fast, err_naive = _bf16_checked(fast_l, naive["loss"].to_numpy(), ref32, sample)
    tau = float(kendalltau(fast_l, fp32).statistic)
    device_name = "cpu stand-in (dry run)" if DRY_RUN else torch.cuda.get_device_name()
    report("rating dna block 1 gpu batch 256 bf16", fast_s=t_fast, naive_s=t_naive, ratio=t_naive / t_fast,
           cands_per_s=n / t_fast, kendall_vs_fp32=tau, top1_same=int(fast_l.argmin() == fp32.argmin()),
           fp32_engine_vs_reference=_max_rel(fp32[sample], ref32[sample]), bf16_rel_err=err_fast,
           naive_bf16_rel_err=err_naive, device=device_name)
    # bf16 accuracy against fp32 over the sample (median and max relative error, the engine's and autocast's) and
    # the work against the GPU's bf16 GEMM rate measured now: what a lent GPU answers in one run
    fast_s, naive_s = fast_l[sample], naive["loss"].to_numpy()[sample]
    e_fast, e_naive = np.abs(fast_s - ref32[sample]) / ref32[sample], np.abs(naive_s - ref32[sample]) / ref32[sample]
    report("rating dna block 1 gpu batch 256 bf16 accuracy vs fp32", median_rel_err=float(np.median(e_fast)),
           max_rel_err=float(e_fast.max()), autocast_median_rel_err=float(np.median(e_naive)),
           autocast_max_rel_err=float(e_naive.max()), no_worse_than_autocast=bool(
               np.median(e_fast) <= np.median(e_naive) and e_fast.max() <= e_naive.max()))
    _report_work("gpu batch 256 bf16", sn, pairs, t_fast, t_naive, False, torch.bfloat16, dev)
    assert DRY_RUN or t_naive / t_fast >= 25


@gpu
@pytest.mark.gpu
def test_bench_rating_gpu_all_blocks(benchmark):
    """Every block's data is made, and the engine checked on a few candidates of that block against the reference,
    before its timed call; only ``rate_block`` itself is timed."""
    torch.manual_seed(0)
    dev = torch.device("cuda")
    sn = Supernet("dna").eval().to(dev)
    shapes = sn.space.block_io_shapes(224)
    batches = 20
    bf = torch.bfloat16
    rng = np.random.default_rng(0)
    total, wall = 0, 0.0
    for i, ((ci, hi, wi), (co, ho, wo)) in enumerate(shapes):
        pairs = [(torch.randn(256, ci, hi, wi, device=dev), torch.randn(256, co, ho, wo, device=dev))
                 for _ in range(batches)]
        n = sn.space.num_candidates(i)
        few = np.sort(rng.choice(n, min(n, 4), replace=False))
        check = pairs[:1]
        _bf16_checked(rate_block(sn, i, check, dtype=bf)["loss"].to_numpy(),
                      rate_block_naive(sn, i, check, dtype=bf, candidates=few)["loss"].to_numpy(),
                      rate_block_naive(sn, i, check, candidates=few)["loss"].to_numpy(), few)
        if i == 0:
            benchmark.pedantic(rate_block, args=(sn, i, pairs), kwargs={"dtype": bf}, rounds=1, iterations=1)
        _, dt = _timed(lambda: rate_block(sn, i, pairs, dtype=bf), dev)  # noqa: B023 (called at once)
        wall += dt
        total += n
        pairs = check = None  # freed before the next block's data
    report("rating all six dna blocks, gpu, 20 batches of 256, bf16", wall_s=wall, candidates=total,
           cands_per_s=total / wall, device=torch.cuda.get_device_name())
