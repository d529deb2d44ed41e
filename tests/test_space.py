"""Tests of dna_fast.space: built-in spaces, candidate enumeration and encodings, spec validation."""

import copy
import itertools
import random
from pathlib import Path

import pytest
import yaml

from dna_fast.space import SPACES_DIR, Candidate, SearchSpace, builtin_spaces, parse_op

REPO = Path(__file__).resolve().parents[1]
BUILTIN = ["dna", "dna_cells", "dna_mini"]


def mini_spec():
    return yaml.safe_load((SPACES_DIR / "dna_mini.yaml").read_text())


def test_builtin_names_and_repo_copies():
    assert set(BUILTIN) <= set(builtin_spaces())
    for name in BUILTIN:
        # configs/spaces in the repo and the copies shipped in the package are the same files
        assert (REPO / "configs" / "spaces" / f"{name}.yaml").read_text() == (SPACES_DIR / f"{name}.yaml").read_text()
        by_name = SearchSpace.load(name)
        by_path = SearchSpace.load(REPO / "configs" / "spaces" / f"{name}.yaml")
        assert repr(by_name) == repr(by_path)
        assert by_name.name == name


def test_dna_space_matches_paper():
    s = SearchSpace.load("dna")
    assert [c.depth for b in s.blocks for c in b.cells] == [2, 4, 4, 4, 4, 1]
    assert [b.cells[0].width for b in s.blocks] == [24, 40, 80, 112, 192, 320]
    assert [b.stride for b in s.blocks] == [2, 2, 2, 1, 2, 1]
    assert [b.out_chs for b in s.blocks] == [48, 80, 160, 224, 384, 640]
    assert [b.in_chs for b in s.blocks] == [3, 48, 80, 160, 224, 384]
    assert [b.child_in_chs for b in s.blocks] == [16, 24, 40, 80, 112, 192]
    assert (s.stem.chs, s.stem.ds_chs, s.head_chs) == (32, 16, 1280)
    ops = {(o.kernel, o.exp_ratio, o.se_ratio) for o in s.blocks[0].op_specs}
    assert ops == set(itertools.product((3, 5, 7), (3.0, 6.0), (0.25,)))
    assert [s.num_candidates(i) for i in range(6)] == [36, 1296, 1296, 1296, 1296, 6]
    # distillation targets: B7 stages at strides 4, 8, 16, 16, 32, 32
    assert [t for _, t in s.block_io_shapes(224)] == [
        (48, 56, 56), (80, 28, 28), (160, 14, 14), (224, 14, 14), (384, 7, 7), (640, 7, 7)]
    assert s.block_io_shapes(224)[0][0] == (3, 224, 224)


def test_dna_mini_is_small():
    s = SearchSpace.load("dna_mini")
    assert s.default_image_size == 32
    assert any(c.depth >= 3 for b in s.blocks for c in b.cells)
    assert all(s.num_candidates(i) <= 400 for i in range(s.num_blocks))


@pytest.mark.parametrize("name", BUILTIN)
def test_candidates_order_and_count(name):
    s = SearchSpace.load(name)
    for i, b in enumerate(s.blocks):
        cands = s.candidates(i)
        assert len(cands) == s.num_candidates(i) == sum(len(b.ops) ** c.depth for c in b.cells)
        assert len(set(cands)) == len(cands)
        # cell-major, then lexicographic over op indices (layer 0 slowest)
        keys = [(c.cell, c.ops) for c in cands]
        assert keys == sorted(keys)
        for j in random.Random(i).sample(range(len(cands)), min(50, len(cands))):
            assert s.candidate_index(i, cands[j]) == j


@pytest.mark.parametrize("name", BUILTIN)
def test_encoding_round_trip(name):
    s = SearchSpace.load(name)
    rng = random.Random(0)
    for i in range(s.num_blocks):
        cands = s.candidates(i)
        for c in rng.sample(cands, min(200, len(cands))):
            text = str(c)
            assert text == s.format(i, c)
            assert s.parse(i, text) == c
            assert str(s.parse(i, text)) == text
            # op names in the string are the space's canonical names, cell as d<depth>w<width>
            cell_txt, ops_txt = text.split(":")
            assert cell_txt == s.blocks[i].cells[c.cell].label
            assert ops_txt.split("|") == [s.blocks[i].ops[k] for k in c.ops]
            # lenient forms: cell index and op indices, and a bare Candidate
            assert s.parse(i, f"c{c.cell}:" + "|".join(map(str, c.ops))) == c
            assert str(s.parse(i, Candidate(c.cell, c.ops))) == text


def test_parse_errors_name_block_and_layer():
    s = SearchSpace.load("dna")
    good = str(s.candidates(1)[7])
    bad_op = good.rsplit("|", 1)[0] + "|ir_k9_e6_se0.25"
    with pytest.raises(ValueError, match=r"block 1 layer 3: op .* not in this block's ops"):
        s.parse(1, bad_op)
    with pytest.raises(ValueError, match=r"block 1 layer 0: unknown op"):
        s.parse(1, "d4w40:conv3x3|" + good.split("|", 1)[1])
    with pytest.raises(ValueError, match=r"block 1 cell d4w40: 3 ops"):
        s.parse(1, good.rsplit("|", 1)[0])
    with pytest.raises(ValueError, match=r"block 1: unknown cell 'd9w9'"):
        s.parse(1, "d9w9:" + good.split(":")[1])
    with pytest.raises(ValueError, match=r"block 2 cell 0 layer 1: op index 6"):
        s.format(2, Candidate(0, (0, 6, 0, 0)))


def test_parse_op():
    op = parse_op("ir_k5_e3_se0.25")
    assert (op.kernel, op.exp_ratio, op.se_ratio, op.name) == (5, 3.0, 0.25, "ir_k5_e3_se0.25")
    assert parse_op("ir_k3_e6").se_ratio == 0.0
    assert op.block_str(2, 40) == "ir_r1_k5_s2_e3_c40_se0.25"
    for bad in ("ir_k4_e6_se0.25", "ds_k3_e6", "ir_k3", "ir_k3_e0_se0.25", ""):
        with pytest.raises(ValueError):
            parse_op(bad)


def test_child_in_chs_ambiguous():
    s = SearchSpace.load("dna_cells")
    assert s.blocks[4].child_in_chs_options == (96, 112)
    with pytest.raises(ValueError, match=r"block 4: child input width depends on block 3"):
        _ = s.blocks[4].child_in_chs


def _mut(path, value=None, delete=False):
    def f(spec):
        node = spec
        for k in path[:-1]:
            node = node[k]
        if delete:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return spec
    return f


MALFORMED = [
    ("unknown op", _mut(["blocks", 1, "ops"], ["ir_k3_e6_se0.25", "ir_k4_e6_se0.25"]),
     r"block 1 ops \[1\]: unknown op|block 1 ops \[1\]: op 'ir_k4"),
    ("unknown op globally", _mut(["ops", 2], "sep_conv_3x3"), r"ops \[2\]: unknown op 'sep_conv_3x3'"),
    ("in_chs does not chain", _mut(["blocks", 2, "in_chs"], 40), r"block 2: in_chs 40 does not chain.*teacher stage 2"),
    ("out_chs mismatch", _mut(["blocks", 0, "out_chs"], 16), r"block 0: out_chs 16 does not match teacher stage 1"),
    ("teacher stage missing", _mut(["blocks", 3, "teacher_stage"], 9), r"block 3: teacher stage 9 does not exist"),
    ("teacher stage order", _mut(["blocks", 2, "teacher_stage"], 1), r"block 2: teacher stage 1 must come after"),
    ("stride vs teacher", _mut(["blocks", 1, "stride"], 1), r"block 1: output stride 2 does not match teacher stage 2"),
    ("bad stride", _mut(["blocks", 1, "stride"], 3), r"block 1: stride must be 1 or 2"),
    ("missing cells", _mut(["blocks", 2, "cells"], delete=True), r"block 2: missing 'cells'"),
    ("bad cell", _mut(["blocks", 1, "cells", 1], [3]), r"block 1 cell 1: must be \[depth, width\]"),
    ("zero depth", _mut(["blocks", 1, "cells", 0], [0, 24]), r"block 1 cell 0: depth must be an integer >= 1"),
    ("width not /8", _mut(["blocks", 2, "cells", 0], [3, 30]), r"block 2 cell 0: width 30 is not a multiple of 8"),
    ("duplicate cells", _mut(["blocks", 0, "cells"], [[1, 16], [1, 16]]), r"block 0: duplicate cells"),
    ("duplicate ops", _mut(["ops"], ["ir_k3_e3_se0.25", "ir_k3_e3_se0.25"]), r"ops: duplicate ops"),
    ("unknown block key", _mut(["blocks", 0, "widht"], 3), r"block 0: unknown keys \['widht'\]"),
    ("no teacher", _mut(["teacher"], delete=True), r"teacher: missing"),
    ("bad teacher stage", _mut(["teacher", "stages", 1], {"chs": 24}), r"teacher stage 1: must be a mapping"),
    ("bad act", _mut(["act"], "tanhh"), r"unknown activation 'tanhh'"),
    ("bad stem", _mut(["stem", "stride"], 1), r"stem: stride must be 2"),
    ("blocks not list", _mut(["blocks"], {"a": 1}), r"'blocks' must be a non-empty list"),
]


@pytest.mark.parametrize("case,mutate,pattern", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_spec(case, mutate, pattern, tmp_path):
    spec = mutate(copy.deepcopy(mini_spec()))
    with pytest.raises(ValueError, match=pattern):
        SearchSpace.from_dict(spec, name="broken")
    # the same through a YAML file, with the space named in the message
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=r"search space dna_mini") as e:
        SearchSpace.load(path)
    assert len(str(e.value).splitlines()) == 1


def test_malformed_yaml_and_missing(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("blocks: [ {stride: 2\n  cells: ]]\n")
    with pytest.raises(ValueError, match=r"bad.yaml' is not valid YAML"):
        SearchSpace.load(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match=r"search space bad: the spec must be a mapping"):
        SearchSpace.load(path)
    with pytest.raises(ValueError, match=r"unknown search space 'nope'"):
        SearchSpace.load("nope")
    with pytest.raises(ValueError, match=r"does not exist"):
        SearchSpace.load(tmp_path / "missing.yaml")
