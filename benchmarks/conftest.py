"""Benchmarks: `pytest benchmarks --benchmark-only`. Each asserts the fast result equals its reference first."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

HAS_GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")


def report(name: str, **figures) -> None:
    """Print measured figures on one line (shown with -s) and keep them for the results file."""
    line = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"\n[bench] {name}: {line}")
    RESULTS.append({"name": name, **figures})


RESULTS: list = []
