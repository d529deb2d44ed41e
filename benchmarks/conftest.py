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
    other processes). The order alternates too (f g, g f, f g, ...): neither side always runs right after the other,
    whose output and freed memory it would otherwise always inherit."""
    f(), g()
    best = [float("inf"), float("inf")]
    for i in range(repeats):
        for j in (0, 1) if i % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            (f, g)[j]()
            best[j] = min(best[j], time.perf_counter() - t0)
    return best[0], best[1]
