"""DNA supernet: for every block, cell, layer and op its own module and weights.

Block ``i`` is distilled against teacher stage ``teacher_stage`` (Li et al., CVPR 2020): it reads the
teacher's previous stage feature (the image for block 0, which runs the student stem first) and its last
layer writes the teacher stage's channels. ``forward_block(i, x, candidate)`` runs one path.

Module names (``blocks[i].cells[c].layers[l].ops[k]`` = a timm ``InvertedResidual``; ``blocks[0].stem``, or
``blocks[0].stems[c]`` with a stem per cell, with ``conv_stem``, ``bn1``, ``ds``) map onto the timm child network;
see ``dna_fast.models.inherit_weights``.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence

import torch
from torch import nn

from .nn import ChoiceBlock, StudentStem, resolve_layers
from .space import Candidate, SearchSpace

__all__ = ["Supernet", "one_cell_space"]


def one_cell_space(space: SearchSpace | str, cell: int) -> SearchSpace:
    """``space`` with one cell per block: cell ``cell`` (a block with fewer cells keeps its last). The space of the
    authors' supernet for one depth (their ``StudentSuperNet(block_layers_num=...)``)."""
    space = SearchSpace.load(space)
    spec = copy.deepcopy(space.to_dict())
    for b in spec["blocks"]:
        b["cells"] = [b["cells"][min(cell, len(b["cells"]) - 1)]]
    return SearchSpace.from_dict(spec, name=f"{space.name}_cell{cell}")


class Supernet(nn.Module):
    """All blocks of a search space, each with every op of every layer of every cell.

    Args:
        space: a ``SearchSpace`` or the name / path of one.
        in_chans: image channels (block 0's stem input).
        norm_layer: norm class for every op (default BatchNorm2d).
        drop_path_rate: stochastic depth of every op's residual branch.
        cell_stems: one student stem per cell of block 0 (``blocks[0].stems[c]``) instead of one shared by its
            cells: with ``distill(..., cells="parallel")`` every cell of block 0 then trains exactly as a supernet
            holding only that cell would (the authors train one supernet per depth, each with its own stem).

    Attributes:
        space: the search space.
        blocks: ``nn.ModuleList`` of ``ChoiceBlock``; ``blocks[0].stem_for(c)`` is the student stem cell ``c`` runs.
        cell_stems: whether block 0 has a stem per cell.
    """

    def __init__(self, space: SearchSpace | str, in_chans: int = 3, norm_layer: type[nn.Module] | None = None,
                 drop_path_rate: float = 0.0, cell_stems: bool = False) -> None:
        super().__init__()
        self.space = SearchSpace.load(space)
        self.cell_stems = bool(cell_stems)
        act_layer, norm_layer = resolve_layers(self.space.act, norm_layer)
        kw = dict(act_layer=act_layer, norm_layer=norm_layer, drop_path_rate=drop_path_rate)
        blocks = []
        for b in self.space.blocks:
            if b.index != 0:
                blocks.append(ChoiceBlock(b, None, **kw))
            elif self.cell_stems:
                stems = [StudentStem(self.space.stem, in_chans, act_layer, norm_layer) for _ in b.cells]
                blocks.append(ChoiceBlock(b, cell_stems=stems, **kw))
            else:
                blocks.append(ChoiceBlock(b, StudentStem(self.space.stem, in_chans, act_layer, norm_layer), **kw))
        self.blocks = nn.ModuleList(blocks)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def forward_block(self, i: int, x: torch.Tensor, candidate: Candidate | str) -> torch.Tensor:
        """Run one path of block i (block 0 runs the stem first) on its distillation input."""
        if isinstance(candidate, str):
            candidate = self.space.parse(i, candidate)
        return self.blocks[i](x, candidate)

    def forward(self, x: torch.Tensor, choices: Sequence[Candidate]) -> list[torch.Tensor]:
        """Chain all blocks on an image (each block's output has the next block's input channels).

        Returns:
            The output of every block (shapes of ``space.block_io_shapes``' targets).
        """
        if len(choices) != len(self.blocks):
            raise ValueError(f"{len(choices)} choices given for {len(self.blocks)} blocks")
        outs = []
        for i, c in enumerate(choices):
            x = self.forward_block(i, x, c)
            outs.append(x)
        return outs

    def path_modules(self, i: int, candidate: Candidate) -> list[nn.Module]:
        """The op modules candidate runs in block i (without the stem)."""
        return self.blocks[i].path(candidate)

    def extract_cell(self, cell: int) -> Supernet:
        """A supernet of :func:`one_cell_space` (with a stem per cell) holding a copy of this supernet's weights of
        cell ``cell`` of every block (a block with fewer cells: its last) and of that cell's stem: e.g. the authors'
        one-depth supernet out of one distilled with ``cells="parallel"``."""
        last = [len(b.cells) - 1 for b in self.space.blocks]
        out = Supernet(one_cell_space(self.space, cell), cell_stems=True)
        src = self.state_dict()
        state = {}
        for key in out.state_dict():
            p = key.split(".")  # blocks.{i}.cells.0.* / blocks.0.stems.0.*
            i = int(p[1])
            c = min(cell, last[i])
            if p[2] == "stems" and not self.cell_stems:
                state[key] = src[".".join(["blocks", "0", "stem", *p[4:]])]
            else:
                state[key] = src[".".join(p[:3] + [str(c)] + p[4:])]
        out.load_state_dict(state)
        return out

    def op(self, i: int, cell: int, layer: int, k: int) -> nn.Module:
        """The module of op k of a layer."""
        return self.blocks[i].cells[cell].layers[layer].ops[k]

    def block_parameters(self, i: int) -> list[nn.Parameter]:
        """Parameters of block i (with the stem for block 0), e.g. for one optimizer per block."""
        return list(self.blocks[i].parameters())

    def sample(self, i: int, generator: random.Random | None = None) -> Candidate:
        """A uniformly random candidate of block i (uniform over all candidates of all cells)."""
        rng = generator or random
        b = self.space.blocks[i]
        n = self.space.num_candidates(i)
        r = rng.randrange(n)
        for c, cell in enumerate(b.cells):
            size = len(b.ops) ** cell.depth
            if r < size:
                ops = []
                for _ in range(cell.depth):
                    r, o = divmod(r, len(b.ops))
                    ops.append(o)
                return self.space.candidate(i, c, ops[::-1])
            r -= size
        raise AssertionError("unreachable")
