"""Benchmarks: `pytest benchmarks --benchmark-only`. Each asserts the fast result equals its reference first."""

import os
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _bench import format_line  # noqa: E402  (the [bench] line tools/bench_table.py parses)

HAS_GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")


def report(name: str, **figures) -> None:
    """Print measured figures on one line (shown with -s) and keep them for the results file."""
    print("\n" + format_line(name, figures))
    RESULTS.append({"name": name, **figures})


RESULTS: list = []


def cuda_time(f, repeats: int = 20) -> float:
    """Mean seconds of one call of ``f`` on the GPU: one warm-up call, then ``repeats`` calls between two CUDA
    events, synchronized before and after."""
    f()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        f()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats


def interleaved_min(f, g, repeats: int = 15) -> tuple[float, float]:
    """Best-of-n wall times of f and g, alternating the two calls after one warm-up call each: both see the same
    machine state, which keeps the ratio meaningful on a shared, loaded machine (where medians mostly measure the
    other processes)."""
    f(), g()
    tf = tg = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        t1 = time.perf_counter()
        g()
        t2 = time.perf_counter()
        tf, tg = min(tf, t1 - t0), min(tg, t2 - t1)
    return tf, tg
