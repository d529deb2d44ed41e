"""Latency tables: structure, JSON round trip, additive columns, and the additive model against real forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("dna_fast.models")

from dna_fast._latency import LatencyTable, add_latency, latency_table, measure_latency  # noqa: E402
from dna_fast.space import SearchSpace  # noqa: E402


@pytest.fixture(scope="module")
def space():
    return SearchSpace.load("dna_mini")


@pytest.fixture(scope="module")
def lat(space):
    return latency_table(space, "cpu", 1, torch.float32, warmup=1, repeats=3, num_threads=1)


def test_table_shape_and_round_trip(space, lat, tmp_path):
    assert lat.space == "dna_mini" and lat.device.startswith("cpu") and lat.image_size == [32, 32]
    for i, b in enumerate(space.blocks):
        assert sorted(lat.ops[i]) == sorted(str(w) for w in b.child_in_chs_options)
        for table in lat.ops[i].values():
            assert [len(cell) for cell in table] == [c.depth for c in b.cells]
            assert all(len(layer) == len(b.ops) and min(layer) > 0 for cell in table for layer in cell)
    assert set(lat.head_ms) == {str(w) for w in space.blocks[-1].widths} and lat.stem_ms > 0
    lat.save(tmp_path / "lat.json")
    assert LatencyTable.load(tmp_path / "lat.json") == lat


def test_cost_shim_and_threads_restored(space):
    from dna_fast.cost import latency_table as shim

    before = torch.get_num_threads()
    t = shim(space, "cpu", 1, torch.float32, warmup=0, repeats=1, num_threads=1)
    assert torch.get_num_threads() == before and isinstance(t, LatencyTable)


def test_add_latency_is_additive(space, lat):
    from dna_fast.rating import rating_table

    rng = np.random.default_rng(0)
    tables = [rating_table(space, i, rng.random(space.num_candidates(i)), 1, 1.0, (32, 32))
              for i in range(space.num_blocks)]
    with_lat = add_latency(tables, lat, space)
    assert all("latency_ms" not in t.columns for t in tables)  # inputs untouched
    for i, t in enumerate(with_lat):
        row = int(rng.integers(len(t)))
        cand = space.parse(i, t.index[row])
        w = int(t["in_width"].iloc[row]) if "in_width" in t.columns else space.blocks[i].child_in_chs_options[0]
        expect = sum(lat.block(i, w)[cand.cell][layer][k] for layer, k in enumerate(cand.ops))
        expect += lat.stem_ms if i == 0 else 0.0
        expect += lat.head_ms[str(space.blocks[i].cells[cand.cell].width)] if i == len(tables) - 1 else 0.0
        assert t["latency_ms"].iloc[row] == pytest.approx(expect)
    # a chained architecture's summed column equals network_ms
    from dna_fast.search import search

    best = search(with_lat, {"latency_ms": 1e9})[0]
    assert best.costs["latency_ms"] == pytest.approx(lat.network_ms(space, best.choices))
    # a latency budget works like any other
    tight = sorted(a.costs["latency_ms"] for a in search(with_lat, {"latency_ms": 1e9}, top_k=50))[10]
    assert all(a.costs["latency_ms"] <= tight for a in search(with_lat, {"latency_ms": tight}, top_k=5))


def _counted_ms(fn, device, warmup, repeats):
    """Stands in for the timer: a deterministic "time" of ``fn()``, the MACs of its weights (per leaf module: its
    parameters times the output's spatial size), so the table's additive model can be checked exactly."""
    total = [0]

    def hook(m, args, out):
        if not any(True for _ in m.children()):
            n = sum(p.numel() for p in m.parameters(recurse=False))
            total[0] += n * (out.shape[-2] * out.shape[-1] if out.dim() == 4 else 1)

    h = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with torch.no_grad():
            fn()
    finally:
        h.remove()
    return float(total[0])


def test_additive_model_sums_the_network_exactly(space, monkeypatch):
    """With a deterministic timer, the table's prediction for an architecture is exactly the measurement of the whole
    child network: every op is timed at its real shapes and stride, the stem and head are counted once, nothing
    twice. (Real timings on a loaded machine would only allow an order-of-magnitude check; speed is benchmarked.)"""
    import dna_fast._latency as latency_mod
    from dna_fast import models

    monkeypatch.setattr(latency_mod, "_time_ms", _counted_ms)
    t = latency_table(space, "cpu", 1, torch.float32, warmup=0, repeats=1, num_threads=1)
    rng = np.random.default_rng(1)
    archs = [[space.candidates(i)[j] for i in range(space.num_blocks)] for j in (0, -1)]
    archs += [[space.candidates(i)[int(rng.integers(space.num_candidates(i)))] for i in range(space.num_blocks)]
              for _ in range(3)]
    for ch in archs:
        pred = t.network_ms(space, ch)
        meas = measure_latency(models.build(space, ch), (1, 3, 32, 32), "cpu", warmup=0, repeats=1)
        assert pred == meas, (ch, pred, meas)
    assert len({t.network_ms(space, ch) for ch in archs}) == len(archs)  # the archs differ in cost


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_latency_table(space):
    t = latency_table(space, "cuda", 8, torch.float32, warmup=2, repeats=5)
    assert t.device == torch.cuda.get_device_name(0)
    assert t.stem_ms > 0 and all(v > 0 for b in t.ops for tab in b.values() for c in tab for la in c for v in la)
