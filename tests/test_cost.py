"""Tests of dna_fast.cost against built timm children (numel and FlopCounterMode as the reference)."""

import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dna_fast import cost
from dna_fast.models import build
from dna_fast.space import SearchSpace


def _random_choices(space, rng):
    return [space.candidates(i)[rng.randrange(space.num_candidates(i))] for i in range(space.num_blocks)]


def _stage_macs(stage, x):
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        y = stage(x)
    return fc.get_total_flops() // 2, y


@pytest.mark.parametrize("name,size,num_classes", [
    ("dna_mini", 32, 10), ("dna_mini", 29, 0), ("dna", 64, 1000), ("dna_cells", 48, 100), ("dna_cells", 224, 1000),
])
def test_network_cost_equals_built_child(name, size, num_classes):
    s = SearchSpace.load(name)
    rng = random.Random(size)
    for _ in range(2 if size < 224 else 1):
        choices = _random_choices(s, rng)
        child = build(s, choices, num_classes=num_classes)
        assert cost.network_cost(s, choices, size, num_classes) == cost.measure(child, size)


@pytest.mark.parametrize("name,size", [("dna_mini", 32), ("dna", 64), ("dna_cells", 64)])
def test_candidate_cost_equals_child_stage(name, size):
    """Per block: the cost of a candidate equals numel and counted MACs of that stage of the child."""
    s = SearchSpace.load(name)
    rng = random.Random(1)
    choices = _random_choices(s, rng)
    child = build(s, choices, num_classes=10).eval()
    with torch.no_grad():
        x = child.blocks[0](child.bn1(child.conv_stem(torch.randn(1, 3, size, size))))
    width = s.stem_out_chs
    for i, cand in enumerate(choices):
        stage = child.blocks[i + 1]
        macs, x = _stage_macs(stage, x)
        got = cost.candidate_cost(s, i, cand, size, child_in_chs=width)
        assert got == {"params": sum(p.numel() for p in stage.parameters()), "macs": macs}
        # and layer by layer, op by op
        for layer, k in enumerate(cand.ops):
            c = cost.op_cost(s, i, cand.cell, layer, k, size, child_in_chs=width)
            assert c["params"] == sum(p.numel() for p in stage[layer].parameters())
        width = s.blocks[i].cells[cand.cell].width


def test_base_cost_equals_stem_head_classifier():
    s = SearchSpace.load("dna")
    choices = _random_choices(s, random.Random(0))
    child = build(s, choices, num_classes=1000)
    blocks = sum(cost.candidate_cost(s, i, c, 224)["params"] for i, c in enumerate(choices))
    total = sum(p.numel() for p in child.parameters())
    assert cost.base_cost(s, 224, 1000)["params"] == total - blocks
    assert cost.base_cost(s, 224, 10)["params"] == total - blocks - 990 * 1281


@pytest.mark.parametrize("name", ["dna_mini", "dna"])
def test_candidate_costs_vectorized_equal_loop(name):
    s = SearchSpace.load(name)
    for i in range(s.num_blocks):
        arr = cost.candidate_costs(s, i)
        cands = s.candidates(i)
        assert len(arr["params"]) == len(arr["macs"]) == len(cands)
        idx = range(len(cands)) if len(cands) <= 100 else random.Random(i).sample(range(len(cands)), 100)
        for j in idx:
            c = cost.candidate_cost(s, i, cands[j])
            assert (int(arr["params"][j]), int(arr["macs"][j])) == (c["params"], c["macs"])


def test_layer_cost_table_shape_and_monotone():
    s = SearchSpace.load("dna")
    t = cost.layer_cost_table(s, 1, 224)
    assert len(t) == 1 and len(t[0]) == 4 and all(len(layer) == 6 for layer in t[0])
    # ops are k3e3, k3e6, k5e3, k5e6, k7e3, k7e6: bigger kernel / expansion costs more
    for layer in t[0]:
        p = [c["params"] for c in layer]
        assert p[0] < p[2] < p[4] and p[1] < p[3] < p[5] and p[0] < p[1]


def test_ambiguous_width_needs_child_in_chs():
    s = SearchSpace.load("dna_cells")
    cand = s.candidates(4)[0]
    with pytest.raises(ValueError, match=r"block 4: child input width depends on block 3"):
        cost.candidate_cost(s, 4, cand)
    a = cost.candidate_cost(s, 4, cand, child_in_chs=96)
    b = cost.candidate_cost(s, 4, cand, child_in_chs=112)
    assert a["params"] < b["params"]
    with pytest.raises(ValueError, match="pass last_width"):
        cost.base_cost(SearchSpace.from_dict({**s.to_dict(), "blocks": s.to_dict()["blocks"][:5],
                                              "teacher": s.to_dict()["teacher"]}))


def test_latency_table_delegates(monkeypatch):
    """cost.latency_table is a thin shim over dna_fast._latency.latency_table (args and result pass through)."""
    import sys
    import types

    fake = types.ModuleType("dna_fast._latency")
    fake.latency_table = lambda *a, **k: ("table", a, k)
    monkeypatch.setitem(sys.modules, "dna_fast._latency", fake)
    assert cost.latency_table("dna_mini", 32, device="cpu") == ("table", ("dna_mini", 32), {"device": "cpu"})
