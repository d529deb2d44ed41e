"""Search spaces of DNA: blocks of choice layers distilled against the stages of a teacher.

DNA (Li et al., "Blockwisely Supervised Neural Architecture Search with Knowledge Distillation",
CVPR 2020, arXiv:1911.13053) cuts a teacher into stages and gives the student one *block* per
stage. A block has one or more *cells* (a depth and a hidden width, each with its own supernet
weights); every layer of a cell picks one op (an MBConv named like a timm block string without
repeat, stride and channels, e.g. ``ir_k3_e6_se0.25``).

Channel conventions (see ``BlockSpec``):

* During distillation block ``i`` reads the teacher's stage ``i - 1`` feature (``in_chs``; the image,
  3 channels, for block 0, which also runs the student stem) and the last layer of every cell
  writes the teacher's stage channels (``out_chs``) so both feature maps compare directly.
* In the child network every layer of a cell has the cell's hidden width; the first layer reads the
  previous block's hidden width (``child_in_chs``) or the stem's output for block 0.

A space is a YAML file (``configs/spaces/*.yaml``; the built-in ones ship inside the package) loaded
with ``SearchSpace.load(name_or_path)``. Every problem in a spec raises one ``ValueError`` that names
the block, cell, layer and problem.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "OpSpec", "CellSpec", "BlockSpec", "StemSpec", "TeacherSpec", "Candidate", "SearchSpace",
    "parse_op", "builtin_spaces", "SPACES_DIR",
]

SPACES_DIR = Path(__file__).resolve().parent / "configs" / "spaces"

_OP_RE = re.compile(r"^ir_k(?P<k>\d+)_e(?P<e>\d+(?:\.\d+)?)(?:_se(?P<se>\d*\.?\d+))?$")
_CELL_RE = re.compile(r"^d(?P<d>\d+)w(?P<w>\d+)$")
_ACTS = ("swish", "silu", "relu", "relu6", "hard_swish", "gelu")


def _num(v: float) -> str:
    """Shortest text of a number as timm block strings write it (6.0 -> '6', 0.25 -> '0.25')."""
    return f"{v:g}"


def _round_chs(chs: int) -> int:
    """timm's EfficientNet channel rounding (``round_channels`` at multiplier 1: nearest multiple of 8)."""
    new = max(8, int(chs + 4) // 8 * 8)
    return new + 8 if new < 0.9 * chs else new


@dataclass(frozen=True)
class OpSpec:
    """One MBConv choice: depthwise kernel, expansion ratio and SE ratio (of the layer's input channels).

    Attributes:
        kernel: depthwise kernel size (odd).
        exp_ratio: expansion ratio; mid channels = make_divisible(in_chs * exp_ratio).
        se_ratio: squeeze-excite channels as a fraction of the layer's input channels; 0 = no SE.
    """

    kernel: int
    exp_ratio: float
    se_ratio: float = 0.0

    @property
    def name(self) -> str:
        """Canonical op name, e.g. ``ir_k3_e6_se0.25``."""
        se = f"_se{_num(self.se_ratio)}" if self.se_ratio else ""
        return f"ir_k{self.kernel}_e{_num(self.exp_ratio)}{se}"

    def block_str(self, stride: int, out_chs: int) -> str:
        """timm arch_def string of one layer with this op, e.g. ``ir_r1_k3_s2_e6_c24_se0.25``."""
        se = f"_se{_num(self.se_ratio)}" if self.se_ratio else ""
        return f"ir_r1_k{self.kernel}_s{stride}_e{_num(self.exp_ratio)}_c{out_chs}{se}"

    def __str__(self) -> str:
        return self.name


def parse_op(name: str) -> OpSpec:
    """Parse an op name like ``ir_k5_e3_se0.25`` (kernel 5, expansion 3, SE 0.25).

    Raises:
        ValueError: the name is not of that form, or the kernel is even / the ratios are not positive.
    """
    m = _OP_RE.match(str(name).strip())
    if m is None:
        raise ValueError(f"unknown op {name!r}: expected 'ir_k<kernel>_e<expansion>[_se<ratio>]', "
                         "e.g. 'ir_k3_e6_se0.25'")
    op = OpSpec(int(m["k"]), float(m["e"]), float(m["se"]) if m["se"] else 0.0)
    if op.kernel % 2 == 0 or op.kernel < 1:
        raise ValueError(f"op {name!r}: depthwise kernel must be odd and positive")
    if op.exp_ratio <= 0 or not 0 <= op.se_ratio <= 1:
        raise ValueError(f"op {name!r}: expansion must be > 0 and SE ratio in [0, 1]")
    return op


@dataclass(frozen=True)
class CellSpec:
    """One depth / hidden-width option of a block; each cell has its own supernet weights."""

    depth: int
    width: int

    @property
    def label(self) -> str:
        """Readable label used in candidate strings, e.g. ``d4w80``."""
        return f"d{self.depth}w{self.width}"


@dataclass(frozen=True)
class StemSpec:
    """Student stem: conv kxk stride 2 -> ``chs``, BN, act, then a depthwise-separable block -> ``ds_chs``."""

    chs: int = 32
    kernel: int = 3
    stride: int = 2
    ds_chs: int = 16
    ds_kernel: int = 3
    ds_se: float = 0.25

    def block_str(self) -> str:
        """timm arch_def string of the depthwise-separable stem block."""
        se = f"_se{_num(self.ds_se)}" if self.ds_se else ""
        return f"ds_r1_k{self.ds_kernel}_s1_c{self.ds_chs}{se}"


@dataclass(frozen=True)
class TeacherSpec:
    """The teacher's stages as the space sees them: output channels and total stride of each stage.

    Attributes:
        model: name the teacher is created from (a timm model name, or a name dna_fast.teacher knows).
        stage_chs: output channels of each teacher stage.
        stage_reductions: total stride (w.r.t. the image) of each stage's output.
        extra: any further keys of the YAML ``teacher`` mapping, passed through for the teacher module.
    """

    model: str
    stage_chs: tuple[int, ...]
    stage_reductions: tuple[int, ...]
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class BlockSpec:
    """One block of the search space (distilled against one teacher stage).

    Attributes:
        index: position of the block.
        in_chs: distillation input channels: 3 for block 0 (the image), else the previous block's
            teacher stage channels.
        out_chs: teacher stage channels = distillation target channels = output of a cell's last
            layer in the supernet.
        stride: stride of a cell's first layer.
        cells: depth / hidden-width options.
        ops: op names every layer chooses from (index = op index of a candidate).
        teacher_stage: index into the teacher's stages.
        child_in_chs_options: the possible input widths in the child net (the previous block's cell
            widths, or the stem's output for block 0).
    """

    index: int
    in_chs: int
    out_chs: int
    stride: int
    cells: tuple[CellSpec, ...]
    ops: tuple[str, ...]
    teacher_stage: int
    child_in_chs_options: tuple[int, ...]

    @property
    def child_in_chs(self) -> int:
        """The true input width of this block in the child network.

        Raises:
            ValueError: the previous block has cells of different widths, so the width depends on that
                block's choice; use ``child_in_chs_options`` or pass the width explicitly.
        """
        if len(self.child_in_chs_options) != 1:
            raise ValueError(
                f"block {self.index}: child input width depends on block {self.index - 1}'s cell "
                f"(one of {list(self.child_in_chs_options)}); pass the width explicitly")
        return self.child_in_chs_options[0]

    @property
    def op_specs(self) -> tuple[OpSpec, ...]:
        return tuple(parse_op(o) for o in self.ops)

    @property
    def widths(self) -> tuple[int, ...]:
        """Distinct hidden widths of the cells, in cell order."""
        return tuple(dict.fromkeys(c.width for c in self.cells))

    @property
    def max_depth(self) -> int:
        return max(c.depth for c in self.cells)

    def layer_io(self, cell: int, layer: int, child: bool = False, child_in_chs: int | None = None
                 ) -> tuple[int, int, int]:
        """(in_chs, out_chs, stride) of one layer, in the supernet (default) or in the child net."""
        c = self.cells[cell]
        if not 0 <= layer < c.depth:
            raise IndexError(f"block {self.index} cell {cell}: layer {layer} out of range (depth {c.depth})")
        stride = self.stride if layer == 0 else 1
        if child:
            cin = (self.child_in_chs if child_in_chs is None else child_in_chs) if layer == 0 else c.width
            return cin, c.width, stride
        if layer == 0:
            cin = self.in_chs if self.index > 0 else self.child_in_chs_options[0]
        else:
            cin = c.width
        return cin, (self.out_chs if layer == c.depth - 1 else c.width), stride


@dataclass(frozen=True)
class Candidate:
    """One path through a block: a cell index and one op index per layer of that cell.

    ``str(candidate)`` is the canonical readable form (``d4w80:ir_k3_e6_se0.25|...``) for candidates
    made by ``SearchSpace.candidates`` / ``parse``; ``SearchSpace.format`` gives it for any candidate.
    """

    cell: int
    ops: tuple[int, ...]
    label: str | None = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(int(o) for o in self.ops))
        object.__setattr__(self, "cell", int(self.cell))

    def __str__(self) -> str:
        return self.label if self.label is not None else f"c{self.cell}:" + "|".join(map(str, self.ops))


def _err(where: str, problem: str) -> ValueError:
    return ValueError(f"{where}: {problem}")


def _as_int(v: Any, where: str, what: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise _err(where, f"{what} must be an integer >= {minimum}, got {v!r}")
    return v


def _as_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size[-2:]
    return int(h), int(w)


def _conv_out(size: int, kernel: int, stride: int) -> int:
    """Output size of a timm conv with symmetric padding ((stride - 1) + (kernel - 1)) // 2."""
    pad = ((stride - 1) + (kernel - 1)) // 2
    return (size + 2 * pad - kernel) // stride + 1


class SearchSpace:
    """A DNA search space: stem, blocks (each distilled against a teacher stage), head.

    Attributes:
        name: space name.
        blocks: list of ``BlockSpec``.
        stem: ``StemSpec``; ``stem_chs`` / ``stem_out_chs`` are shortcuts.
        head_chs: channels of the 1x1 head conv (timm ``num_features``).
        act: activation name (timm name; ``swish`` = SiLU).
        teacher: ``TeacherSpec``.
        default_image_size: image side the space is meant for (224 for dna, 32 for dna_mini).
        source: file the space was loaded from (None if built from a dict).
    """

    def __init__(self, spec: dict, name: str | None = None, source: str | None = None) -> None:
        self.source = source
        self._spec = spec
        self._parse(spec, name)

    # ------------------------------------------------------------------ loading and validation
    @classmethod
    def load(cls, name_or_path: str | Path) -> SearchSpace:
        """Load a built-in space by name (``dna``, ``dna_cells``, ``dna_mini``) or a YAML file by path.

        Raises:
            ValueError: unknown name, unreadable / malformed YAML, or an invalid spec.
        """
        if isinstance(name_or_path, SearchSpace):
            return name_or_path
        s = str(name_or_path)
        path = Path(s)
        if not (s.endswith((".yaml", ".yml")) or path.exists()):
            path = SPACES_DIR / f"{s}.yaml"
            if not path.exists():
                raise ValueError(f"unknown search space {s!r}: built-in spaces are {builtin_spaces()}, "
                                 "or pass the path of a YAML file")
        if not path.is_file():
            raise ValueError(f"search space file {str(path)!r} does not exist")
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"search space file {str(path)!r} is not valid YAML: {e}") from None
        return cls(spec, name=path.stem, source=str(path))

    @classmethod
    def from_dict(cls, spec: dict, name: str | None = None) -> SearchSpace:
        """Build a space from a mapping with the YAML schema."""
        return cls(spec, name=name)

    def to_dict(self) -> dict:
        """The spec mapping the space was built from (YAML schema)."""
        return dict(self._spec)

    def _parse(self, spec: Any, name: str | None) -> None:
        where = f"search space {name or '?'}"
        if not isinstance(spec, dict):
            raise _err(where, f"the spec must be a mapping with keys teacher, stem, head, ops, blocks; got "
                       f"{type(spec).__name__}")
        known = {"name", "description", "default_image_size", "act", "teacher", "stem", "head", "ops", "blocks"}
        unknown = set(spec) - known
        if unknown:
            raise _err(where, f"unknown keys {sorted(unknown)} (allowed: {sorted(known)})")
        self.name = str(spec.get("name", name or "space"))
        where = f"search space {self.name}"
        self.description = str(spec.get("description", ""))
        self.default_image_size = _as_int(spec.get("default_image_size", 224), where, "default_image_size", 8)
        self.act = str(spec.get("act", "swish"))
        if self.act not in _ACTS:
            raise _err(where, f"unknown activation {self.act!r} (one of {list(_ACTS)})")

        # teacher
        t = spec.get("teacher")
        if not isinstance(t, dict) or "stages" not in t:
            raise _err(f"{where} teacher", "missing: needs 'model' and 'stages' (list of {chs, reduction})")
        stages = t["stages"]
        if not isinstance(stages, list) or not stages:
            raise _err(f"{where} teacher", "'stages' must be a non-empty list of {chs, reduction}")
        chs, reds = [], []
        for j, st in enumerate(stages):
            w = f"{where} teacher stage {j}"
            if not isinstance(st, dict) or set(st) - {"chs", "reduction"} or "chs" not in st or "reduction" not in st:
                raise _err(w, f"must be a mapping {{chs: int, reduction: int}}, got {st!r}")
            chs.append(_as_int(st["chs"], w, "chs"))
            reds.append(_as_int(st["reduction"], w, "reduction"))
        extra = {k: v for k, v in t.items() if k not in ("model", "stages")}
        self.teacher = TeacherSpec(str(t.get("model", "")), tuple(chs), tuple(reds), extra)

        # stem and head
        st = spec.get("stem", {}) or {}
        if not isinstance(st, dict):
            raise _err(f"{where} stem", f"must be a mapping, got {st!r}")
        bad = set(st) - set(StemSpec.__dataclass_fields__)
        if bad:
            raise _err(f"{where} stem", f"unknown keys {sorted(bad)} (allowed: {list(StemSpec.__dataclass_fields__)})")
        self.stem = StemSpec(**st)
        for k in ("chs", "ds_chs", "kernel", "ds_kernel"):
            _as_int(getattr(self.stem, k), f"{where} stem", k)
        if self.stem.stride != 2:
            raise _err(f"{where} stem", "stride must be 2 (timm's EfficientNet stem is stride 2)")
        for k in ("chs", "ds_chs"):
            v = getattr(self.stem, k)
            if _round_chs(v) != v:
                raise _err(f"{where} stem", f"{k}={v} is not a multiple of 8 (timm would round it to {_round_chs(v)})")
        head = spec.get("head", {}) or {}
        if not isinstance(head, dict) or set(head) - {"chs"}:
            raise _err(f"{where} head", f"must be a mapping {{chs: int}}, got {head!r}")
        self.head_chs = _as_int(head.get("chs", 1280), f"{where} head", "chs", 0)

        # ops
        default_ops = spec.get("ops")
        if default_ops is not None:
            self._check_ops(default_ops, f"{where} ops")

        # blocks
        blocks = spec.get("blocks")
        if not isinstance(blocks, list) or not blocks:
            raise _err(where, "'blocks' must be a non-empty list")
        self.blocks: list[BlockSpec] = []
        prev_stage, prev_widths, reduction = -1, (self.stem.ds_chs,), self.stem.stride
        allowed = {"stride", "cells", "ops", "teacher_stage", "in_chs", "out_chs"}
        for i, b in enumerate(blocks):
            w = f"{where} block {i}"
            if not isinstance(b, dict):
                raise _err(w, f"must be a mapping with keys {sorted(allowed)}, got {b!r}")
            bad = set(b) - allowed
            if bad:
                raise _err(w, f"unknown keys {sorted(bad)} (allowed: {sorted(allowed)})")
            for k in ("stride", "cells", "teacher_stage"):
                if k not in b:
                    raise _err(w, f"missing '{k}'")
            stride = _as_int(b["stride"], w, "stride")
            if stride not in (1, 2):
                raise _err(w, f"stride must be 1 or 2, got {stride}")
            ts = _as_int(b["teacher_stage"], w, "teacher_stage", 0)
            if ts >= len(chs):
                raise _err(w, f"teacher stage {ts} does not exist (the teacher has stages 0..{len(chs) - 1})")
            if ts <= prev_stage:
                raise _err(w, f"teacher stage {ts} must come after the previous block's stage {prev_stage}")
            reduction *= stride
            if reduction != reds[ts]:
                raise _err(w, f"output stride {reduction} does not match teacher stage {ts} "
                           f"(reduction {reds[ts]}): fix the block strides or the teacher stage")
            in_chs = 3 if i == 0 else chs[prev_stage]
            out_chs = chs[ts]
            if "in_chs" in b and b["in_chs"] != in_chs:
                src = "the image (3 channels)" if i == 0 else f"teacher stage {prev_stage} ({in_chs} channels)"
                raise _err(w, f"in_chs {b['in_chs']!r} does not chain: the input is {src}")
            if "out_chs" in b and b["out_chs"] != out_chs:
                raise _err(w, f"out_chs {b['out_chs']!r} does not match teacher stage {ts} ({out_chs} channels)")
            cells_raw = b["cells"]
            if not isinstance(cells_raw, list) or not cells_raw:
                raise _err(w, "'cells' must be a non-empty list of [depth, width]")
            cells = []
            for c, cr in enumerate(cells_raw):
                wc = f"{w} cell {c}"
                if isinstance(cr, dict) and set(cr) == {"depth", "width"}:
                    cr = [cr["depth"], cr["width"]]
                if not isinstance(cr, (list, tuple)) or len(cr) != 2:
                    raise _err(wc, f"must be [depth, width] or {{depth, width}}, got {cr!r}")
                d = _as_int(cr[0], wc, "depth")
                wd = _as_int(cr[1], wc, "width")
                if _round_chs(wd) != wd:
                    raise _err(wc, f"width {wd} is not a multiple of 8 (timm would round it to {_round_chs(wd)})")
                cells.append(CellSpec(d, wd))
            if len(set(cells)) != len(cells):
                raise _err(w, f"duplicate cells {[c.label for c in cells]}")
            ops = b.get("ops", default_ops)
            if ops is None:
                raise _err(w, "no ops: give 'ops' for the block or for the whole space")
            ops = self._check_ops(ops, f"{w} ops")
            self.blocks.append(BlockSpec(i, in_chs, out_chs, stride, tuple(cells), ops, ts, tuple(prev_widths)))
            prev_stage, prev_widths = ts, tuple(dict.fromkeys(c.width for c in cells))
        last_widths = prev_widths
        if self.head_chs == 0 and len(last_widths) > 1:
            raise _err(f"{where} head", "chs 0 (no head conv) needs a single width in the last block")
        if self.head_chs and _round_chs(self.head_chs) != self.head_chs:
            raise _err(f"{where} head", f"chs {self.head_chs} is not a multiple of 8")
        if reduction > 32:
            raise _err(where, f"total stride {reduction} exceeds 32 (timm's EfficientNet output_stride)")

    @staticmethod
    def _check_ops(ops: Any, where: str) -> tuple[str, ...]:
        if not isinstance(ops, list) or not ops:
            raise _err(where, "must be a non-empty list of op names like 'ir_k3_e6_se0.25'")
        names = []
        for k, o in enumerate(ops):
            try:
                names.append(parse_op(o).name)
            except ValueError as e:
                raise _err(f"{where} [{k}]", str(e)) from None
        if len(set(names)) != len(names):
            raise _err(where, f"duplicate ops in {names}")
        return tuple(names)

    # ------------------------------------------------------------------ shapes
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def stem_chs(self) -> int:
        return self.stem.chs

    @property
    def stem_out_chs(self) -> int:
        """Channels after the stem's depthwise-separable block (= block 0's child input)."""
        return self.stem.ds_chs

    def stem_output_size(self, image_size: int | Sequence[int]) -> tuple[int, int]:
        """(H, W) after the stem."""
        h, w = _as_image_size(image_size)
        return _conv_out(h, self.stem.kernel, self.stem.stride), _conv_out(w, self.stem.kernel, self.stem.stride)

    def block_io_shapes(self, image_size: int | Sequence[int] | None = None
                        ) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
        """Per block ((C, H, W) of its distillation input, (C, H, W) of its distillation target).

        Block 0's input is the image; block i's target is its teacher stage's feature map.
        """
        image_size = self.default_image_size if image_size is None else image_size
        h, w = _as_image_size(image_size)
        inp = (3, h, w)
        h, w = self.stem_output_size((h, w))
        out = []
        for b in self.blocks:
            # the output size of a stride-s timm conv with odd kernel does not depend on the kernel
            h, w = _conv_out(h, 3, b.stride), _conv_out(w, 3, b.stride)
            tgt = (b.out_chs, h, w)
            out.append((inp, tgt))
            inp = tgt
        return out

    def block_input_hw(self, image_size: int | Sequence[int] | None = None) -> list[tuple[int, int]]:
        """(H, W) of each block's input in the child network (block 0: the stem's output)."""
        image_size = self.default_image_size if image_size is None else image_size
        io = self.block_io_shapes(image_size)
        return [self.stem_output_size(image_size)] + [tuple(tgt[1:]) for _, tgt in io[:-1]]

    # ------------------------------------------------------------------ candidates
    def _block(self, i: int) -> BlockSpec:
        if not 0 <= i < len(self.blocks):
            raise IndexError(f"block {i} out of range: {self.name} has blocks 0..{len(self.blocks) - 1}")
        return self.blocks[i]

    def num_candidates(self, i: int) -> int:
        """Number of candidates of block i (over all its cells)."""
        b = self._block(i)
        return sum(len(b.ops) ** c.depth for c in b.cells)

    def format(self, i: int, candidate: Candidate) -> str:
        """Canonical string of a candidate of block i: ``d<depth>w<width>:<op>|<op>|...``."""
        b = self._block(i)
        self._check_candidate(i, candidate)
        return b.cells[candidate.cell].label + ":" + "|".join(b.ops[k] for k in candidate.ops)

    def _check_candidate(self, i: int, cand: Candidate) -> None:
        b = self.blocks[i]
        if not 0 <= cand.cell < len(b.cells):
            raise ValueError(f"block {i}: cell {cand.cell} out of range (0..{len(b.cells) - 1})")
        depth = b.cells[cand.cell].depth
        if len(cand.ops) != depth:
            raise ValueError(f"block {i} cell {cand.cell}: {len(cand.ops)} ops given for depth {depth}")
        for layer, k in enumerate(cand.ops):
            if not 0 <= k < len(b.ops):
                raise ValueError(f"block {i} cell {cand.cell} layer {layer}: op index {k} out of range "
                                 f"(0..{len(b.ops) - 1})")

    def candidate(self, i: int, cell: int, ops: Sequence[int]) -> Candidate:
        """A checked candidate carrying its canonical string."""
        c = Candidate(cell, tuple(ops))
        return Candidate(c.cell, c.ops, self.format(i, c))

    def iter_candidates(self, i: int) -> Iterator[Candidate]:
        """Candidates of block i in the fixed order: cell-major, then op indices lexicographic (layer 0 slowest)."""
        b = self._block(i)
        for c, cell in enumerate(b.cells):
            for ops in itertools.product(range(len(b.ops)), repeat=cell.depth):
                yield Candidate(c, ops, cell.label + ":" + "|".join(b.ops[k] for k in ops))

    def candidates(self, i: int) -> list[Candidate]:
        """Every candidate of block i in the fixed order (see ``iter_candidates``)."""
        return list(self.iter_candidates(i))

    def candidate_index(self, i: int, candidate: Candidate) -> int:
        """Position of a candidate in ``candidates(i)``."""
        b = self._block(i)
        self._check_candidate(i, candidate)
        k = len(b.ops)
        idx = sum(k ** c.depth for c in b.cells[: candidate.cell])
        pos = 0
        for o in candidate.ops:
            pos = pos * k + o
        return idx + pos

    def parse(self, i: int, s: str | Candidate) -> Candidate:
        """Turn a candidate string back into a ``Candidate``.

        Accepts the canonical form ``d4w80:ir_k3_e6_se0.25|ir_k5_e3_se0.25|...``, and leniently a cell
        index (``c1`` or ``1``) instead of the label and op indices instead of names.

        Raises:
            ValueError: naming the block, layer and problem.
        """
        if isinstance(s, Candidate):
            return self.candidate(i, s.cell, s.ops)
        b = self._block(i)
        text = str(s).strip()
        if ":" not in text:
            if len(b.cells) != 1:
                raise ValueError(f"block {i}: candidate {text!r} has no cell (write '<cell>:<op>|<op>...', cells "
                                 f"{[c.label for c in b.cells]})")
            cell_txt, ops_txt = b.cells[0].label, text
        else:
            cell_txt, ops_txt = text.split(":", 1)
        cell_txt = cell_txt.strip()
        labels = [c.label for c in b.cells]
        if cell_txt in labels:
            cell = labels.index(cell_txt)
        elif re.fullmatch(r"c?\d+", cell_txt):
            cell = int(cell_txt.lstrip("c"))
            if cell >= len(b.cells):
                raise ValueError(f"block {i}: cell {cell} out of range (cells {labels})")
        else:
            raise ValueError(f"block {i}: unknown cell {cell_txt!r} in {text!r} (cells {labels})")
        parts = [p.strip() for p in ops_txt.split("|")] if ops_txt.strip() else []
        depth = b.cells[cell].depth
        if len(parts) != depth:
            raise ValueError(f"block {i} cell {labels[cell]}: {len(parts)} ops in {text!r}, expected {depth}")
        ops = []
        for layer, p in enumerate(parts):
            if p.isdigit() and int(p) < len(b.ops):
                ops.append(int(p))
                continue
            try:
                name = parse_op(p).name
            except ValueError as e:
                raise ValueError(f"block {i} layer {layer}: {e}") from None
            if name not in b.ops:
                raise ValueError(f"block {i} layer {layer}: op {p!r} is not in this block's ops {list(b.ops)}")
            ops.append(b.ops.index(name))
        return self.candidate(i, cell, ops)

    # ------------------------------------------------------------------ misc
    def total_candidates(self) -> int:
        """Number of whole architectures (product over blocks)."""
        return math.prod(self.num_candidates(i) for i in range(len(self.blocks)))

    def __repr__(self) -> str:
        blocks = ", ".join(f"[{'/'.join(c.label for c in b.cells)} s{b.stride} {b.in_chs}->{b.out_chs}]"
                           for b in self.blocks)
        stem = f"{self.stem.chs}->{self.stem.ds_chs}"
        return f"SearchSpace({self.name!r}, stem={stem}, blocks={blocks}, head={self.head_chs})"


def builtin_spaces() -> list[str]:
    """Names of the search spaces shipped with the package."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
