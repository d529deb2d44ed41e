"""Paired A/B of dwconv_bn_act's CPU routes (csrc/cpu/dwconv_route.h) at the benchmark's shapes.

    python tools/ab_routes.py [--rounds 40] [--threads 2] [--layout nchw|channels_last] [--routes direct,onednn_swish]
                              [--shapes c,h,k,s ...]

Each round times every route once (best of 3 calls), in an order that rotates every round, so no route always runs
right after another; per shape it prints each route's median time and the median over rounds of the per-round ratio
of the first route's time to each other's (with a 95 % bootstrap interval): above 1 means the other route is slower.
The routes are forced through DNA_FAST_DWCONV, which the op reads at every call. Two names are not routes: ``auto``
is the op as shipped (the route it picks for the shape), ``baseline`` the benchmark's eager sequence (conv with the BN
folded into its weight once, outside the timed call, then an in-place silu), so ``--routes auto,baseline`` is the
kernels table's row measured paired. An A/A control: name a route twice.
Time it on a quiet machine (docs/benchmarks.md says how the figures there were taken).
"""

from __future__ import annotations

import argparse
import ast
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dna_fast import ops

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "test_bench_kernels.py"


def bench_shapes() -> list[tuple]:
    """The benchmark's DW_SHAPES, read from its source (importing it would need the benchmarks' conftest)."""
    for node in ast.parse(BENCH.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DW_SHAPES":
            return ast.literal_eval(node.value)
    raise LookupError(f"no DW_SHAPES in {BENCH}")


def _time(fn, calls: int = 3) -> float:
    best = float("inf")
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def ab(shape, layout: str, routes: list[str], rounds: int, seed: int = 0) -> dict:
    c, h, k, s = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, c, h, h, generator=g)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    w, sc, sh = torch.randn(c, 1, k, k, generator=g) * 0.3, torch.randn(c, generator=g), torch.randn(c, generator=g)
    call = lambda: ops.dwconv_bn_act(x, w, sc, sh, s)  # noqa: E731
    wf = w * sc.view(-1, 1, 1, 1)
    baseline = lambda: F.silu(F.conv2d(x, wf, sh, stride=s, padding=k // 2, groups=c), inplace=True)  # noqa: E731
    ref = ops.dwconv_bn_act_reference(x, w, sc, sh, s)
    times = np.zeros((rounds, len(routes)))

    def use(route: str):
        os.environ.pop("DNA_FAST_DWCONV", None)
        if route not in ("auto", "baseline"):
            os.environ["DNA_FAST_DWCONV"] = route
        return baseline if route == "baseline" else call

    try:
        for r in routes:  # warm-up and a check that each route is right here
            torch.testing.assert_close(use(r)(), ref, rtol=1e-4, atol=1e-4)
        for j in range(rounds):
            for t in range(len(routes)):
                i = (j + t) % len(routes)
                times[j, i] = _time(use(routes[i]))
    finally:
        os.environ.pop("DNA_FAST_DWCONV", None)
    rng = np.random.default_rng(seed)
    out = {"median_ms": np.median(times, 0) * 1e3, "ratios": []}
    for i in range(1, len(routes)):
        ratio = times[:, i] / times[:, 0]
        boot = np.median(rng.choice(ratio, (2000, rounds)), 1)
        out["ratios"].append((np.median(ratio), *np.percentile(boot, [2.5, 97.5])))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layout", choices=("nchw", "channels_last"), default="nchw")
    p.add_argument("--routes", default="direct,onednn_swish")
    p.add_argument("--shapes", nargs="*", help="c,h,k,s (default: the benchmark's DW_SHAPES)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    routes = a.routes.split(",")
    shapes = [tuple(int(v) for v in s.split(",")) for s in a.shapes] if a.shapes else bench_shapes()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.2f}, "
          f"{a.threads} threads, {a.rounds} rounds, {a.layout}; ratio = {routes[0]} faster by")
    for shape in shapes:
        r = ab(shape, a.layout, routes, a.rounds)
        ms = " ".join(f"{n} {t:.2f} ms" for n, t in zip(routes, r["median_ms"]))
        rs = " ".join(f"vs {n} {m:.2f}x [{lo:.2f}, {hi:.2f}]" for n, (m, lo, hi) in zip(routes[1:], r["ratios"]))
        print(f"16x{shape[0]}x{shape[1]}x{shape[1]} k{shape[2]} s{shape[3]}: {ms}; {rs}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
