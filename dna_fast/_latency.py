"""Measured latency tables: every op of every layer of a search space, timed at the child network's shapes.

The latency of a child network is modelled as additive: stem (+ its depthwise-separable block), one term per
layer (that layer's op at that layer's input shape, including the true input width of each block's first layer
in the child), and the head (+ pooling and classifier). ``latency_table`` measures every term on one device
(CUDA events after warm-up on a GPU; the median wall time after warm-up on a CPU); ``LatencyTable`` saves and
loads them as JSON with the device name, turns them into per-candidate ``latency_ms`` (``add_latency``) so a
latency budget works like a MACs budget, and predicts whole networks (``network_ms``), which
``measure_latency`` checks against a real forward pass.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._io import atomic_write_json

__all__ = ["LatencyTable", "latency_table", "measure_latency", "add_latency"]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def _time_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median time of ``fn()`` in ms over ``repeats`` runs after ``warmup`` runs."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        else:
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def measure_latency(model: nn.Module, input_shape: Sequence[int], device: Any = "cpu",
                    dtype: torch.dtype = torch.float32, *, warmup: int = 10, repeats: int = 30,
                    channels_last: bool = False) -> float:
    """Measured latency (ms) of ``model`` on one input of ``input_shape`` (eval mode, no grad)."""
    device = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(device=device, dtype=dtype, memory_format=fmt)
    x = torch.randn(*input_shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
    return _time_ms(lambda: model(x), device, warmup, repeats)


@dataclass
class LatencyTable:
    """Per-op latencies (ms) of a search space on one device.

    Attributes:
        device: the device's name (GPU model or CPU).
        space: the search space's name.
        batch_size, dtype, image_size: the measuring conditions.
        ops: ``ops[i][in_width][cell][layer][op]`` (``in_width`` as a string key, JSON-style): the latency of op
            ``op`` in that layer of block ``i`` when the block's input has ``in_width`` channels (only layer 0
            depends on it).
        stem_ms: stem convolution + the depthwise-separable stem block.
        head_ms: ``{last block width: head conv + pooling + classifier}``.
    """

    device: str
    space: str
    batch_size: int
    dtype: str
    image_size: list[int]
    ops: list[dict[str, list[list[list[float]]]]]
    stem_ms: float
    head_ms: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        """Writes JSON (atomically)."""
        atomic_write_json(path, self.__dict__, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        with open(path) as f:
            d = json.load(f)
        return cls(**d)

    def block(self, i: int, in_width: int | None = None) -> list[list[list[float]]]:
        """``table[cell][layer][op]`` of block ``i`` (the per-op form ``rating.rate`` accepts)."""
        opts = self.ops[i]
        if in_width is None:
            if len(opts) != 1:
                raise ValueError(f"block {i}: input widths {sorted(opts)}: pass in_width")
            return next(iter(opts.values()))
        try:
            return opts[str(int(in_width))]
        except KeyError:
            raise ValueError(f"block {i}: no latency for input width {in_width} (have {sorted(opts)})") from None

    def candidate_ms(self, i: int, cand: Any, in_width: int | None = None) -> float:
        """Additive latency of one candidate (a ``Candidate``; parse strings with ``space.parse`` first)."""
        t = self.block(i, in_width)
        return float(sum(t[cand.cell][layer][k] for layer, k in enumerate(cand.ops)))

    def network_ms(self, space: Any, choices: Sequence[Any]) -> float:
        """Predicted latency of a whole child network: stem + the chosen ops + head."""
        cands = [space.parse(i, c) for i, c in enumerate(choices)]
        width = space.stem_out_chs
        total = self.stem_ms
        for i, c in enumerate(cands):
            total += self.candidate_ms(i, c, width)
            width = space.blocks[i].cells[c.cell].width
        return total + self.head_ms[str(width)]


def _op_module(space: Any, op: Any, cin: int, cout: int, stride: int) -> nn.Module:
    """The timm InvertedResidual the child network has for this op (made by timm's builder, as models.build)."""
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    from .models import _model_kwargs

    kw = _model_kwargs(space, decode_arch_def([[op.block_str(stride, cout)]]), 0)
    kw["stem_size"] = cin
    m = EfficientNet(**kw).blocks[0][0]
    got = m.conv_pw.in_channels
    if got != cin:  # timm rounds stem widths to multiples of 8
        raise ValueError(f"cannot build an op with {cin} input channels (timm made {got})")
    return m


def latency_table(space: Any, device: Any = "cpu", batch_size: int = 1, dtype: torch.dtype = torch.float32, *,
                  image_size: Any = None, warmup: int = 10, repeats: int = 30, channels_last: bool = False,
                  num_classes: int = 1000, num_threads: int | None = None, progress: bool = False) -> LatencyTable:
    """Measures every op of every layer of ``space`` at the child network's shapes.

    Args:
        space: a ``SearchSpace`` or its name.
        device: where to measure (CUDA events on a GPU, wall time on a CPU).
        batch_size: images per forward.
        dtype: parameter and input dtype (e.g. ``torch.bfloat16`` on a GPU).
        image_size: image side or (H, W); default the space's.
        warmup, repeats: runs before timing and timed runs (the median is kept).
        channels_last: measure in channels-last memory format.
        num_classes: classifier outputs (head term).
        num_threads: CPU threads while measuring (default: torch's current setting); restored afterwards.
        progress: show a tqdm bar.
    """
    old_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        return _latency_table(space, device, batch_size, dtype, image_size, warmup, repeats, channels_last,
                              num_classes, progress)
    finally:
        torch.set_num_threads(old_threads)


def _latency_table(space, device, batch_size, dtype, image_size, warmup, repeats, channels_last, num_classes,
                   progress) -> LatencyTable:
    from . import models
    from .space import SearchSpace, _as_image_size, _conv_out

    space = SearchSpace.load(space) if not isinstance(space, SearchSpace) else space
    device = torch.device(device)
    size = _as_image_size(space.default_image_size if image_size is None else image_size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    in_hw = space.block_input_hw(size)

    def timed(module: nn.Module, shape: Sequence[int]) -> float:
        module = module.eval().to(device=device, dtype=dtype, memory_format=fmt)
        x = torch.randn(*shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
        return _time_ms(lambda: module(x), device, warmup, repeats)

    jobs = []
    for i, b in enumerate(space.blocks):
        for cin in b.child_in_chs_options:
            for c, cell in enumerate(b.cells):
                for layer in range(cell.depth):
                    for k in range(len(b.ops)):
                        jobs.append((i, cin, c, layer, k))
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="latency")
    ops: list[dict[str, list[list[list[float]]]]] = [{} for _ in space.blocks]
    cache: dict[tuple, float] = {}
    for i, cin, c, layer, k in jobs:
        b = space.blocks[i]
        cell = b.cells[c]
        table = ops[i].setdefault(str(cin), [[[0.0] * len(b.ops) for _ in range(cl.depth)] for cl in b.cells])
        hw = in_hw[i]
        if layer > 0:
            hw = (_conv_out(hw[0], 3, b.stride), _conv_out(hw[1], 3, b.stride))
        lin, lout, stride = b.layer_io(c, layer, child=True, child_in_chs=cin)
        key = (b.ops[k], lin, lout, stride, hw)
        if key not in cache:  # equal shapes (e.g. a layer shared by several cells) are measured once
            cache[key] = timed(_op_module(space, b.op_specs[k], lin, lout, stride), (batch_size, lin, *hw))
        table[c][layer][k] = cache[key]
    # stem + ds block, and the head per last width, from real child networks
    first = [space.candidate(i, 0, [0] * b.cells[0].depth) for i, b in enumerate(space.blocks)]
    child = models.build(space, first, num_classes=num_classes)
    stem = nn.Sequential(child.conv_stem, child.bn1, child.blocks[0])
    stem_ms = timed(stem, (batch_size, 3, *size))
    head_ms = {}
    fh, fw = space.block_io_shapes(size)[-1][1][1:]
    for w in space.blocks[-1].widths:
        cell = next(j for j, cl in enumerate(space.blocks[-1].cells) if cl.width == w)
        ch = models.build(space, first[:-1] + [space.candidate(len(first) - 1, cell, [0] * space.blocks[-1].cells[
            cell].depth)], num_classes=num_classes)
        head = nn.Sequential(ch.conv_head, ch.bn2, ch.global_pool, ch.classifier)
        head_ms[str(w)] = timed(head, (batch_size, w, fh, fw))
    return LatencyTable(
        device=_device_name(device), space=space.name, batch_size=batch_size, dtype=str(dtype).replace("torch.", ""),
        image_size=list(size), ops=ops, stem_ms=stem_ms, head_ms=head_ms,
        meta={"warmup": warmup, "repeats": repeats, "channels_last": channels_last, "num_classes": num_classes,
              "torch": torch.__version__, "unique_shapes": len(cache)})


def add_latency(tables: Sequence[Any], lat: LatencyTable, space: Any, *, include_base: bool = True) -> list[Any]:
    """Rating tables with a ``latency_ms`` column (tables that have one keep it).

    Each row's latency is the sum of its layers' op latencies, at the row's ``in_width`` when the table has that
    column. With ``include_base`` the stem's latency is added to block 0's rows and the head's (per last width)
    to the last block's rows, so the sum over blocks predicts the whole network.
    """
    out = []
    n = len(tables)
    for i, t in enumerate(tables):
        if "latency_ms" in t.columns:
            out.append(t)
            continue
        t = t.copy()
        b = space.blocks[i]
        widths = t["in_width"].to_numpy() if "in_width" in t.columns else [None] * len(t)
        if "in_width" not in t.columns and len(b.child_in_chs_options) == 1:
            widths = [b.child_in_chs_options[0]] * len(t)
        cache: dict[str, Any] = {}
        vals = []
        for label, w in zip(t.index, widths):
            c = cache.get(label) or cache.setdefault(label, space.parse(i, label))
            v = lat.candidate_ms(i, c, w)
            if include_base and i == 0:
                v += lat.stem_ms
            if include_base and i == n - 1:
                v += lat.head_ms[str(b.cells[c.cell].width)]
            vals.append(v)
        t["latency_ms"] = vals
        out.append(t)
    return out
