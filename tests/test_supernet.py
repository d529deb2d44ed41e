"""Tests of dna_fast.supernet: structure, path forward against a plain reference, timm naming."""

import random

import pytest
import torch
from timm.models._efficientnet_blocks import InvertedResidual

from dna_fast.models import build
from dna_fast.space import SearchSpace
from dna_fast.supernet import Supernet


@pytest.fixture(scope="module")
def mini():
    torch.manual_seed(0)
    return Supernet("dna_mini").eval()


def test_structure_every_op_own_weights(mini):
    s = mini.space
    n_ops = 0
    ptrs = set()
    for i, b in enumerate(s.blocks):
        blk = mini.blocks[i]
        assert (blk.stem is not None) == (i == 0)
        assert len(blk.cells) == len(b.cells)
        for c, cell in enumerate(b.cells):
            assert len(blk.cells[c].layers) == cell.depth
            for layer in range(cell.depth):
                ops = blk.cells[c].layers[layer].ops
                assert len(ops) == len(b.ops)
                cin, cout, stride = b.layer_io(c, layer)
                for k, op in enumerate(ops):
                    assert isinstance(op, InvertedResidual)
                    assert op.op.name == b.ops[k]
                    assert op.conv_pw.in_channels == cin and op.conv_pwl.out_channels == cout
                    assert op.conv_dw.stride == (stride, stride) and op.conv_dw.kernel_size[0] == op.op.kernel
                    n_ops += 1
                    ptrs.update(p.data_ptr() for p in op.parameters())
    assert n_ops == sum(len(b.ops) * c.depth for b in s.blocks for c in b.cells)
    n_params = sum(1 for blk in mini.blocks for cell in blk.cells for p in cell.parameters())
    assert len(ptrs) == n_params  # no weight sharing between ops


def test_last_layer_outputs_teacher_channels(mini):
    for i, b in enumerate(mini.space.blocks):
        for c, cell in enumerate(b.cells):
            last = mini.blocks[i].cells[c].layers[cell.depth - 1].ops[0]
            first = mini.blocks[i].cells[c].layers[0].ops[0]
            assert last.conv_pwl.out_channels == b.out_chs
            assert first.conv_pw.in_channels == (b.in_chs if i else mini.space.stem_out_chs)


@pytest.mark.parametrize("name,size", [("dna_mini", 32), ("dna_mini", 27), ("dna_cells", 64)])
def test_forward_block_shapes_and_reference(name, size):
    torch.manual_seed(0)
    net = Supernet(name).eval()
    rng = random.Random(1)
    shapes = net.space.block_io_shapes(size)
    for i, (ins, tgt) in enumerate(shapes):
        for _ in range(2):
            cand = net.sample(i, rng)
            x = torch.randn(2, *ins)
            y = net.forward_block(i, x, cand)
            assert tuple(y.shape) == (2, *tgt)
            # plain reference: stem (block 0) then the chosen op of every layer, by explicit indexing
            ref = net.blocks[0].stem(x) if i == 0 else x
            for layer, k in enumerate(cand.ops):
                ref = net.blocks[i].cells[cand.cell].layers[layer].ops[k](ref)
            torch.testing.assert_close(y, ref, rtol=0, atol=0)
            # the string form runs the same path
            torch.testing.assert_close(net.forward_block(i, x, str(cand)), y, rtol=0, atol=0)


def test_gradient_only_on_path(mini):
    net = Supernet("dna_mini").train()
    cand = net.space.candidates(1)[5]
    x = torch.randn(2, *net.space.block_io_shapes()[1][0])
    net.forward_block(1, x, cand).square().mean().backward()
    on_path = {id(p) for m in net.path_modules(1, cand) for p in m.parameters()}
    for p in net.parameters():
        assert (p.grad is not None) == (id(p) in on_path)


def test_forward_chains_blocks(mini):
    s = mini.space
    choices = [s.candidates(i)[-1] for i in range(s.num_blocks)]
    x = torch.randn(1, 3, 32, 32)
    outs = mini(x, choices)
    assert [tuple(o.shape[1:]) for o in outs] == [t for _, t in s.block_io_shapes(32)]
    torch.testing.assert_close(outs[-1], mini.forward_block(3, outs[-2], choices[-1]))


def test_sample_valid_and_covers_cells(mini):
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        c = mini.sample(1, rng)
        assert mini.space.parse(1, str(c)) == c
        seen.add(c.cell)
    assert seen == {0, 1}
    assert mini.sample(1, random.Random(3)) == mini.sample(1, random.Random(3))


def test_names_match_timm_child(mini):
    """A middle layer's op has exactly the state_dict keys and shapes of the child's layer (timm builder)."""
    s = mini.space
    choices = [s.candidates(i)[-1] for i in range(s.num_blocks)]  # last cell, deepest in each block
    child = build(s, choices, num_classes=10)
    i = 1
    cand = choices[i]
    sup = mini.blocks[i].cells[cand.cell].layers[1].ops[cand.ops[1]].state_dict()
    ch = child.blocks[i + 1][1].state_dict()
    assert {k: v.shape for k, v in sup.items()} == {k: v.shape for k, v in ch.items()}
    stem = mini.blocks[0].stem
    assert {k: v.shape for k, v in stem.ds.state_dict().items()} == \
        {k: v.shape for k, v in child.blocks[0][0].state_dict().items()}
    assert stem.conv_stem.weight.shape == child.conv_stem.weight.shape


def test_load_by_name_or_space():
    s = SearchSpace.load("dna_mini")
    assert Supernet(s).space is s
    assert Supernet("dna_mini").space.name == "dna_mini"
