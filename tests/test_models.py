"""Tests of dna_fast.models: timm children, arch_def round trips, weight inheritance, DNA-a..d."""

import random

import pytest
import timm
import torch
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet

from dna_fast import cost, models
from dna_fast.models import (
    DNA_ARCH_DEFS,
    DNA_PAPER,
    arch_def,
    build,
    choices_from_arch_def,
    dna_choices,
    inherit_weights,
)
from dna_fast.space import SearchSpace
from dna_fast.supernet import Supernet


def _random_choices(space, seed):
    rng = random.Random(seed)
    return [space.candidates(i)[rng.randrange(space.num_candidates(i))] for i in range(space.num_blocks)]


@pytest.mark.parametrize("name", ["dna", "dna_cells", "dna_mini"])
def test_arch_def_round_trip_and_build(name):
    s = SearchSpace.load(name)
    for seed in range(2):
        choices = _random_choices(s, seed)
        arch = arch_def(s, choices)
        assert len(arch) == s.num_blocks + 1
        assert choices_from_arch_def(s, arch) == choices
        m = build(s, choices, num_classes=7)
        assert isinstance(m, EfficientNet)
        # one timm stage per block, one layer per chosen op, with the cell's width and the op's kernel
        for i, cand in enumerate(choices):
            stage = m.blocks[i + 1]
            assert len(stage) == len(cand.ops)
            width = s.blocks[i].cells[cand.cell].width
            for layer, k in enumerate(cand.ops):
                op = s.blocks[i].op_specs[k]
                assert stage[layer].conv_pwl.out_channels == width
                assert stage[layer].conv_dw.kernel_size == (op.kernel, op.kernel)
                assert stage[layer].conv_dw.stride[0] == (s.blocks[i].stride if layer == 0 else 1)
        y = m.eval()(torch.randn(1, 3, 64, 64))
        assert y.shape == (1, 7)


def test_choices_from_arch_def_errors():
    s = SearchSpace.load("dna")
    arch = arch_def(s, _random_choices(s, 0))
    bad = [list(st) for st in arch]
    bad[2][1] = "ir_r1_k9_s1_e6_c40_se0.25"
    with pytest.raises(ValueError, match=r"block 1 layer 1: op ir_k9_e6_se0.25 is not in the block's ops"):
        choices_from_arch_def(s, bad)
    with pytest.raises(ValueError, match=r"block 3: depth 3 width 112 is not a cell"):
        choices_from_arch_def(s, arch[:4] + [arch[4][:3]] + arch[5:])
    with pytest.raises(ValueError, match=r"block 0 layer 0: stride 1"):
        choices_from_arch_def(s, [arch[0], [arch[1][0].replace("_s2_", "_s1_")] + arch[1][1:]] + arch[2:])


def _matching_space():
    """A space whose teacher channels equal the hidden widths, so every supernet tensor fits the child."""
    return SearchSpace.from_dict({
        "name": "match", "default_image_size": 32,
        "teacher": {"model": "none", "stages": [{"chs": 16, "reduction": 4}, {"chs": 24, "reduction": 8},
                                                {"chs": 32, "reduction": 8}]},
        "stem": {"chs": 16, "ds_chs": 16}, "head": {"chs": 64},
        "ops": ["ir_k3_e3_se0.25", "ir_k5_e6_se0.25", "ir_k3_e6"],
        "blocks": [{"stride": 2, "teacher_stage": 0, "cells": [[2, 16]]},
                   {"stride": 2, "teacher_stage": 1, "cells": [[3, 24]]},
                   {"stride": 1, "teacher_stage": 2, "cells": [[2, 32]]}],
    })


def test_inherit_weights_exact_when_shapes_match():
    s = _matching_space()
    torch.manual_seed(0)
    sup = Supernet(s)
    for p in sup.parameters():  # make BN affine / running stats non-trivial
        p.data.normal_()
    for mod in sup.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2)
    sup.eval()
    choices = _random_choices(s, 3)
    child = build(s, choices, num_classes=5).eval()
    report = inherit_weights(child, sup, choices)
    head = {k for k in child.state_dict() if k.split(".")[0] in ("conv_head", "bn2", "classifier")}
    assert set(report.not_copied) == head
    assert len(report.copied) + len(head) == len(child.state_dict())
    # the child's trunk now computes exactly the supernet path, stage by stage
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = sup(x, choices)
        h = child.blocks[0](child.bn1(child.conv_stem(x)))
        for i in range(s.num_blocks):
            h = child.blocks[i + 1](h)
            torch.testing.assert_close(h, feats[i])


def test_inherit_weights_reports_mismatches():
    s = SearchSpace.load("dna_mini")
    sup = Supernet(s)
    choices = _random_choices(s, 1)
    child = build(s, choices, num_classes=10)
    report = inherit_weights(child, sup, choices)
    src = sup.state_dict()
    csd = child.state_dict()
    for key in report.copied:
        assert key in csd
    # copied tensors equal their source; every not-copied tensor has a reason
    for key in report.copied:
        parts = key.split(".")
        if parts[0] == "blocks" and parts[1] != "0":
            i, layer = int(parts[1]) - 1, int(parts[2])
            cand = choices[i]
            skey = f"blocks.{i}.cells.{cand.cell}.layers.{layer}.ops.{cand.ops[layer]}." + ".".join(parts[3:])
            torch.testing.assert_close(csd[key], src[skey], rtol=0, atol=0)
    for key, why in report.not_copied.items():
        assert "shape" in why or "no supernet source" in why
        parts = key.split(".")
        if parts[0] == "blocks":
            i, layer = int(parts[1]) - 1, int(parts[2])
            last = len(choices[i].ops) - 1
            # only a block's first layer (input width) or last layer (output width) can differ
            assert (layer == 0 and i > 0) or (layer == last and parts[3] in ("conv_pwl", "bn3"))
    assert "conv_stem.weight" in report.copied and "blocks.0.0.conv_dw.weight" in report.copied
    assert "classifier.weight" in report.not_copied and "inherited" in str(report)


def test_timm_registration():
    assert set(DNA_ARCH_DEFS) <= set(timm.list_models("dna_*"))
    m = timm.create_model("dna_b", num_classes=10, drop_rate=0.1)
    assert isinstance(m, EfficientNet) and m.num_classes == 10
    assert m.pretrained_cfg["first_conv"] == "conv_stem"
    assert m.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def _layers(arch):
    """Decoded timm layer args, one dict per layer (timm's builder uses the stride of a stage's first layer only)."""
    out = []
    for stage in decode_arch_def(arch):
        for j, la in enumerate(stage):
            la = {k: v for k, v in la.items() if k != "se_layer"}
            la["stride"] = la["stride"] if j == 0 else 1
            out.append(la)
    return out


@pytest.mark.parametrize("name", sorted(DNA_ARCH_DEFS))
def test_dna_models_match_paper(name):
    s = SearchSpace.load("dna_cells")
    choices = dna_choices(name)  # dna_cells contains all four
    # the space's arch_def for these choices is the published one, layer for layer
    assert _layers(arch_def(s, choices)) == _layers(DNA_ARCH_DEFS[name])
    model = getattr(models, name)()
    measured = cost.measure(model, 224)
    assert measured == cost.network_cost(s, choices, 224, 1000)
    paper = DNA_PAPER[name]
    assert abs(measured["params"] / 1e6 - paper["params_m"]) <= 0.05
    assert abs(measured["macs"] / 1e6 / paper["macs_m"] - 1) <= 0.05
