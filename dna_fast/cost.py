"""Exact cost model: params and MACs of every op, candidate and whole child network, from shapes.

Counts are those of the timm child network that ``dna_fast.models.build`` makes: hidden widths, the true
input width of each block, timm's channel rounding (``make_divisible``) and SE width. Params equal
``sum(p.numel() for p in child.parameters())``; MACs equal the FLOPs that
``torch.utils.flop_counter.FlopCounterMode`` counts for one image, divided by 2 (convolutions and the
classifier's matmul; BN, activations, pooling and the SE gate are free in that count).

Costs are additive over blocks, except that a block's first layer reads the previous block's hidden width:
in spaces whose previous block has cells of several widths, pass ``child_in_chs`` (``network_cost`` does
this itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from timm.layers import make_divisible
from torch import nn

from .space import Candidate, OpSpec, SearchSpace, _as_image_size, _conv_out, parse_op

__all__ = [
    "mbconv_cost", "op_cost", "layer_cost_table", "candidate_cost", "candidate_costs", "base_cost",
    "network_cost", "measure", "latency_table",
]

Cost = dict  # {"params": int, "macs": int}


def _cost(params: int, macs: int) -> Cost:
    return {"params": int(params), "macs": int(macs)}


def _add(*costs: Cost) -> Cost:
    return _cost(sum(c["params"] for c in costs), sum(c["macs"] for c in costs))


def _se_cost(chs: int, rd: int) -> Cost:
    """timm SqueezeExcite on ``chs`` channels reduced to ``rd``: two biased 1x1 convs at 1x1 spatial."""
    return _cost(2 * chs * rd + rd + chs, 2 * chs * rd)


def mbconv_cost(op: str | OpSpec, in_chs: int, out_chs: int, stride: int, in_hw: tuple[int, int]) -> Cost:
    """Params and MACs (one image) of a timm ``InvertedResidual`` made from a DNA op.

    Args:
        op: op name or ``OpSpec``.
        in_chs: input channels.
        out_chs: output channels.
        stride: depthwise stride.
        in_hw: input (H, W).
    """
    op = parse_op(op) if isinstance(op, str) else op
    h, w = in_hw
    ho, wo = _conv_out(h, op.kernel, stride), _conv_out(w, op.kernel, stride)
    mid = make_divisible(in_chs * op.exp_ratio)
    params = in_chs * mid + 2 * mid + mid * op.kernel ** 2 + 2 * mid + mid * out_chs + 2 * out_chs
    macs = h * w * in_chs * mid + ho * wo * mid * op.kernel ** 2 + ho * wo * mid * out_chs
    c = _cost(params, macs)
    if op.se_ratio:
        # NOTE same float order as timm's builder: rd = round(mid * (se_ratio / exp_ratio))
        c = _add(c, _se_cost(mid, round(mid * (op.se_ratio / op.exp_ratio))))
    return c


def op_cost(space: SearchSpace, i: int, cell: int, layer: int, op: int, image_size: Any = None,
            child_in_chs: int | None = None) -> Cost:
    """Cost of op ``op`` (index) in layer ``layer`` of cell ``cell`` of block ``i``, as the child has it."""
    b = space.blocks[i]
    cin, cout, stride = b.layer_io(cell, layer, child=True, child_in_chs=child_in_chs)
    hw = space.block_input_hw(image_size)[i]
    if layer > 0:
        hw = (_conv_out(hw[0], 3, b.stride), _conv_out(hw[1], 3, b.stride))
    return mbconv_cost(b.op_specs[op], cin, cout, stride, hw)


def layer_cost_table(space: SearchSpace, i: int, image_size: Any = None, child_in_chs: int | None = None
                     ) -> list[list[list[Cost]]]:
    """``table[cell][layer][op]`` = cost of that op in the child network."""
    b = space.blocks[i]
    return [[[op_cost(space, i, c, layer, k, image_size, child_in_chs) for k in range(len(b.ops))]
             for layer in range(cell.depth)] for c, cell in enumerate(b.cells)]


def candidate_cost(space: SearchSpace, i: int, cand: Candidate | str, image_size: Any = None,
                   child_in_chs: int | None = None) -> Cost:
    """Params and MACs of one candidate of block ``i`` in the child network.

    Args:
        space: the search space.
        i: block index.
        cand: a candidate (or its string).
        image_size: image side or (H, W); default the space's.
        child_in_chs: input width of the block in the child; default ``blocks[i].child_in_chs`` (needed
            when the previous block has cells of several widths).
    """
    cand = space.parse(i, cand)
    return _add(*(op_cost(space, i, cand.cell, layer, k, image_size, child_in_chs)
                  for layer, k in enumerate(cand.ops)))


def candidate_costs(space: SearchSpace, i: int, image_size: Any = None, child_in_chs: int | None = None
                    ) -> dict[str, np.ndarray]:
    """Costs of every candidate of block ``i`` in ``space.candidates(i)`` order, as int64 arrays.

    Returns:
        ``{"params": array, "macs": array}`` of length ``space.num_candidates(i)``.
    """
    table = layer_cost_table(space, i, image_size, child_in_chs)
    out: dict[str, list[np.ndarray]] = {"params": [], "macs": []}
    for cell in table:
        for key in out:
            acc = np.zeros((), dtype=np.int64)
            for layer in cell:  # layer 0 slowest: broadcast so the last layer is the fastest axis
                acc = acc[..., None] + np.array([c[key] for c in layer], dtype=np.int64)
            out[key].append(acc.reshape(-1))
    return {k: np.concatenate(v) for k, v in out.items()}


def base_cost(space: SearchSpace, image_size: Any = None, num_classes: int = 1000,
              last_width: int | None = None) -> Cost:
    """Cost of everything outside the blocks: stem, ds block, head conv, classifier.

    Args:
        last_width: hidden width of the last block (needed only if its cells have several widths).
    """
    image_size = space.default_image_size if image_size is None else image_size
    h, w = _as_image_size(image_size)
    s = space.stem
    ho, wo = space.stem_output_size((h, w))
    stem = _cost(3 * s.chs * s.kernel ** 2 + 2 * s.chs, ho * wo * 3 * s.chs * s.kernel ** 2)
    ds = _cost(s.chs * s.ds_kernel ** 2 + 2 * s.chs + s.chs * s.ds_chs + 2 * s.ds_chs,
               ho * wo * (s.chs * s.ds_kernel ** 2 + s.chs * s.ds_chs))
    if s.ds_se:
        ds = _add(ds, _se_cost(s.chs, round(s.chs * (s.ds_se / 1.0))))
    last = space.blocks[-1]
    if last_width is None:
        if len(last.widths) != 1:
            raise ValueError(f"block {last.index}: cells of several widths {list(last.widths)}: pass last_width")
        last_width = last.widths[0]
    fh, fw = space.block_io_shapes((h, w))[-1][1][1:]
    feat = space.head_chs or last_width
    head = _cost(last_width * space.head_chs + 2 * space.head_chs, fh * fw * last_width * space.head_chs)
    cls = _cost(feat * num_classes + num_classes, feat * num_classes) if num_classes > 0 else _cost(0, 0)
    return _add(stem, ds, head, cls)


def network_cost(space: SearchSpace, choices: Sequence[Candidate | str], image_size: Any = None,
                 num_classes: int = 1000) -> Cost:
    """Params and MACs of the whole child network of ``choices`` (one candidate per block)."""
    if len(choices) != space.num_blocks:
        raise ValueError(f"{len(choices)} choices given for the {space.num_blocks} blocks of {space.name}")
    choices = [space.parse(i, c) for i, c in enumerate(choices)]
    width = space.stem_out_chs
    parts = []
    for i, cand in enumerate(choices):
        parts.append(candidate_cost(space, i, cand, image_size, child_in_chs=width))
        width = space.blocks[i].cells[cand.cell].width
    return _add(base_cost(space, image_size, num_classes, last_width=width), *parts)


def measure(model: nn.Module, image_size: Any, in_chans: int = 3) -> Cost:
    """Reference: params by ``numel`` and MACs by ``FlopCounterMode`` (FLOPs / 2) for one image (eval mode)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    h, w = _as_image_size(image_size)
    params = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(torch.zeros(1, in_chans, h, w))
    finally:
        model.train(was_training)
    flops = fc.get_total_flops()
    return _cost(params, flops // 2)


def latency_table(*args, **kwargs):
    """Measured latency per op (see ``dna_fast._latency.latency_table``)."""
    from ._latency import latency_table as _latency_table

    return _latency_table(*args, **kwargs)
