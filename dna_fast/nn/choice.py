"""Choice layer, cell and block of the DNA supernet: every op of every layer has its own weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..space import BlockSpec, Candidate
from .mbconv import MBConvOp

__all__ = ["ChoiceLayer", "ChoiceCell", "ChoiceBlock"]


class ChoiceLayer(nn.Module):
    """One layer: ``ops[k]`` is the k-th op of the block's op list, each with its own weights."""

    def __init__(self, ops: Sequence[str], in_chs: int, out_chs: int, stride: int = 1, **op_kwargs) -> None:
        super().__init__()
        self.ops = nn.ModuleList(MBConvOp(o, in_chs, out_chs, stride, **op_kwargs) for o in ops)

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return self.ops[k](x)


class ChoiceCell(nn.Module):
    """One depth / width option of a block: ``layers[l]`` is a ``ChoiceLayer``.

    Layer 0 maps the block input to ``width`` with the block stride, middle layers keep ``width`` and the
    last layer maps to ``out_chs`` (the teacher stage channels during distillation).
    """

    def __init__(self, ops: Sequence[str], in_chs: int, width: int, out_chs: int, depth: int, stride: int,
                 **op_kwargs) -> None:
        super().__init__()
        layers = []
        for layer in range(depth):
            cin = in_chs if layer == 0 else width
            cout = out_chs if layer == depth - 1 else width
            layers.append(ChoiceLayer(ops, cin, cout, stride if layer == 0 else 1, **op_kwargs))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, ops: Sequence[int]) -> torch.Tensor:
        if len(ops) != len(self.layers):
            raise ValueError(f"{len(ops)} ops given for a cell of depth {len(self.layers)}")
        for layer, k in zip(self.layers, ops):
            x = layer(x, k)
        return x


class ChoiceBlock(nn.Module):
    """One supernet block: optional student stem (block 0) and one ``ChoiceCell`` per cell of the spec.

    Block 0 holds either one ``stem`` shared by its cells or (``cell_stems``, for ``distill.cells=parallel``) one
    stem per cell, ``stems[c]``, so that each cell trains as the authors' one-run-per-depth supernet does.
    """

    def __init__(self, spec: BlockSpec, stem: nn.Module | None = None, *,
                 cell_stems: Sequence[nn.Module] | None = None, **op_kwargs) -> None:
        super().__init__()
        if stem is not None and cell_stems is not None:
            raise ValueError("a block holds one shared stem or one stem per cell, not both")
        if cell_stems is not None and len(cell_stems) != len(spec.cells):
            raise ValueError(f"{len(cell_stems)} stems given for the {len(spec.cells)} cells of block {spec.index}")
        self.spec = spec
        self.stem = stem
        self.stems = nn.ModuleList(cell_stems) if cell_stems is not None else None
        has_stem = stem is not None or cell_stems is not None
        cin = spec.in_chs if not has_stem else spec.child_in_chs_options[0]
        self.cells = nn.ModuleList(
            ChoiceCell(spec.ops, cin, c.width, spec.out_chs, c.depth, spec.stride, **op_kwargs) for c in spec.cells)

    def stem_for(self, cell: int) -> nn.Module | None:
        """The stem a candidate of ``cell`` runs first (None for blocks after block 0)."""
        return self.stems[cell] if self.stems is not None else self.stem

    def path(self, candidate: Candidate) -> list[nn.Module]:
        """The op modules a candidate runs, in order (without the stem)."""
        cell = self.cells[candidate.cell]
        if len(candidate.ops) != len(cell.layers):
            raise ValueError(f"block {self.spec.index} cell {candidate.cell}: {len(candidate.ops)} ops given for "
                             f"depth {len(cell.layers)}")
        return [layer.ops[k] for layer, k in zip(cell.layers, candidate.ops)]

    def forward(self, x: torch.Tensor, candidate: Candidate) -> torch.Tensor:
        stem = self.stem_for(candidate.cell)
        if stem is not None:
            x = stem(x)
        for op in self.path(candidate):
            x = op(x)
        return x
