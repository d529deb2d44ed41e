"""Python face of the native operators ``torch.ops.dna_fast.*``.

For every op: a pure-PyTorch reference (``*_reference``; the oracle of the tests and the fallback when the
extension is missing), a fake kernel (``register_fake``) so the op traces under ``torch.compile``, an autograd
formula where training uses the op, and the public wrapper that dispatches to the native op when it exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ._backend import load_extension

_C = load_extension()
HAS_NATIVE = _C is not None


_BELOW_AUTOGRAD = getattr(torch._C, "_AutoDispatchBelowAutograd", None)


def _differentiable_call(op, *args):
    """``op(*args)`` for an op whose backward is registered with ``torch.library.register_autograd``. Where nothing
    needs a gradient (grad mode off, or no tensor argument requires one) the call goes below the autograd key
    straight to the kernel, as an ATen op would: the Python autograd kernel costs ~70 us per call even when it
    records nothing (measured on a tiny dwconv_bn_act, 1 thread, AMD EPYC, 2026-12-03: 228 vs 155 us), which made
    the fused ops slower than the eager sequence at small shapes. Under torch.compile the op is called as is."""
    if (_BELOW_AUTOGRAD is None or torch.compiler.is_compiling()
            or (torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args))):
        return op(*args)
    with _BELOW_AUTOGRAD():
        return op(*args)


def _per_channel(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1)


# --------------------------------------------------------------------------------------------------------------
# scale_shift_swish: swish(x * scale + shift) per channel (the folded-BN + activation every MBConv uses)
# --------------------------------------------------------------------------------------------------------------


def scale_shift_swish_reference(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """Plain PyTorch: ``silu(x * scale + shift)`` computed in fp32, returned in ``x.dtype``."""
    z = x.float() * _per_channel(scale.float()) + _per_channel(shift.float())
    return torch.nn.functional.silu(z).to(x.dtype)


def scale_shift_swish(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """Fused per-channel ``swish(x * scale + shift)`` over an NCHW or channels_last tensor.

    Args:
        x: [N, C, H, W], fp32 / fp16 / bf16; the output keeps its dtype and memory format.
        scale: [C] (any float dtype; applied in fp32), e.g. the folded BN ``gamma / sqrt(var + eps)``.
        shift: [C], e.g. ``beta - mean * scale``.

    Differentiable in all three arguments.
    """
    if not HAS_NATIVE:
        return scale_shift_swish_reference(x, scale, shift)
    return _differentiable_call(torch.ops.dna_fast.scale_shift_swish, x, scale, shift)


if HAS_NATIVE:

    @torch.library.register_fake("dna_fast::scale_shift_swish")
    def _(x, scale, shift):
        torch._check(x.dim() == 4, lambda: "scale_shift_swish: expected a 4-D input")
        return torch.empty_like(x, memory_format=_memory_format(x))

    @torch.library.register_fake("dna_fast::scale_shift_swish_backward")
    def _(grad, x, scale, shift):
        return torch.empty_like(x, memory_format=_memory_format(x))

    def _sss_setup(ctx, inputs, output):
        x, scale, shift = inputs
        ctx.save_for_backward(x, scale, shift)

    def _sss_backward(ctx, grad):
        x, scale, shift = ctx.saved_tensors
        gz = torch.ops.dna_fast.scale_shift_swish_backward(grad, x, scale, shift)
        grad_x = grad_scale = grad_shift = None
        if ctx.needs_input_grad[0]:
            grad_x = (gz.float() * _per_channel(scale.float())).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_scale = (gz.float() * x.float()).sum((0, 2, 3)).to(scale.dtype)
        if ctx.needs_input_grad[2]:
            grad_shift = gz.float().sum((0, 2, 3)).to(shift.dtype)
        return grad_x, grad_scale, grad_shift

    torch.library.register_autograd("dna_fast::scale_shift_swish", _sss_backward, setup_context=_sss_setup)


def _memory_format(x: Tensor) -> torch.memory_format:
    # the native kernels run channels_last when the input prefers it (same rule as at::suggest_memory_format)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _suggested_format(x: Tensor) -> torch.memory_format:
    # exactly ATen's suggest_memory_format, which the native kernels of the ops below use to pick their layout
    from torch._prims_common import suggest_memory_format  # noqa: PLC0415

    return suggest_memory_format(x) if x.dim() == 4 else torch.contiguous_format


# --------------------------------------------------------------------------------------------------------------
# dwconv_bn_act: depthwise conv + folded BN + swish (+ per-(n, c) spatial sums, the SE squeeze) in one pass
# --------------------------------------------------------------------------------------------------------------


def _dw_out(size: int, k: int, stride: int) -> int:
    return 0 if size <= 0 else (size + 2 * (k // 2) - k) // stride + 1


def dwconv_bn_act_reference(x: Tensor, weight: Tensor, scale: Tensor, shift: Tensor, stride: int = 1,
                            with_sums: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Plain PyTorch, in fp32: ``silu(conv2d(x, weight, stride, padding=k // 2, groups=C) * scale + shift)``.

    Returns the output in ``x.dtype`` and, with ``with_sums``, the fp32 sums of the (unrounded) output over H, W.
    """
    k = weight.shape[-1]
    z = torch.nn.functional.conv2d(x.float(), weight.float(), stride=stride, padding=k // 2, groups=x.shape[1])
    y = torch.nn.functional.silu(z * _per_channel(scale.float()) + _per_channel(shift.float()))
    out = y.to(x.dtype)
    return (out, y.sum((2, 3))) if with_sums else out


def dwconv_bn_act(x: Tensor, weight: Tensor, scale: Tensor, shift: Tensor, stride: int = 1,
                  with_sums: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Fused depthwise conv + folded BatchNorm + swish: ``swish(dwconv(x, weight) * scale + shift)``.

    The depthwise conv of an MBConv (timm's ``conv_dw`` + ``bn2``), with padding ``k // 2``. Computes in fp32 and
    stores in ``x.dtype``; the output keeps the input's memory format (NCHW or channels_last).

    Args:
        x: [N, C, H, W], fp32 / fp16 / bf16 (fp64 runs in fp32), any layout.
        weight: [C, 1, k, k] with k in {3, 5, 7}.
        scale: [C] folded BN scale ``gamma / sqrt(var + eps)``.
        shift: [C] folded BN shift ``beta - mean * scale``.
        stride: 1 or 2.
        with_sums: also return the per-(n, c) sums of the output over space [N, C] (fp32, summed before the output is
            rounded to ``x.dtype``), i.e. the SE squeeze times H_out * W_out, computed in the same pass.

    Returns:
        ``y`` [N, C, H_out, W_out], or ``(y, sums)`` with ``with_sums``.

    Differentiable in all four tensors (the backward recomputes the conv in fp32 with PyTorch ops and uses the native
    swish-gradient kernel; gradients of ``sums`` are folded in).
    """
    if not HAS_NATIVE:
        return dwconv_bn_act_reference(x, weight, scale, shift, stride, with_sums)
    y, sums = _differentiable_call(torch.ops.dna_fast.dwconv_bn_act, x, weight, scale, shift, stride, with_sums)
    return (y, sums) if with_sums else y


if HAS_NATIVE:

    @torch.library.register_fake("dna_fast::dwconv_bn_act")
    def _(x, weight, scale, shift, stride, with_sums):
        torch._check(x.dim() == 4, lambda: "dwconv_bn_act: expected a 4-D input [N, C, H, W]")
        torch._check(weight.dim() == 4 and weight.shape[0] == x.shape[1],
                     lambda: "dwconv_bn_act: weight must have shape [C, 1, k, k]")
        k = weight.shape[-1]
        n, c = x.shape[0], x.shape[1]
        y = x.new_empty((n, c, _dw_out(x.shape[2], k, stride), _dw_out(x.shape[3], k, stride)))
        y = y.contiguous(memory_format=_suggested_format(x))
        sums = x.new_empty((n, c) if with_sums else (0,), dtype=torch.float32)
        return y, sums

    def _dw_setup(ctx, inputs, output):
        x, weight, scale, shift, stride, with_sums = inputs
        ctx.stride, ctx.with_sums = stride, with_sums
        ctx.save_for_backward(x, weight, scale, shift)

    def _dw_backward(ctx, grad_y, grad_sums):
        x, weight, scale, shift = ctx.saved_tensors
        k, groups = weight.shape[-1], x.shape[1]
        conv = dict(stride=ctx.stride, padding=k // 2, groups=groups)
        # recompute the conv output in fp32 (cheap next to storing it), then the native swish gradient
        xf, wf = x.float(), weight.float()
        z = torch.nn.functional.conv2d(xf, wf, **conv)
        g = torch.zeros_like(z) if grad_y is None else grad_y.float()
        if ctx.with_sums and grad_sums is not None:
            g = g + grad_sums.float()[:, :, None, None]
        gz = torch.ops.dna_fast.scale_shift_swish_backward(g, z, scale, shift)  # d loss / d (z * scale + shift)
        gconv = gz * _per_channel(scale.float())
        grad_x = grad_w = grad_scale = grad_shift = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(x.shape, wf, gconv, **conv).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.nn.grad.conv2d_weight(xf, weight.shape, gconv, **conv).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_scale = (gz * z).sum((0, 2, 3)).to(scale.dtype)
        if ctx.needs_input_grad[3]:
            grad_shift = gz.sum((0, 2, 3)).to(shift.dtype)
        return grad_x, grad_w, grad_scale, grad_shift, None, None

    torch.library.register_autograd("dna_fast::dwconv_bn_act", _dw_backward, setup_context=_dw_setup)


# --------------------------------------------------------------------------------------------------------------
# passes of the rating engine over channels_last activations seen as [rows, C] matrices (CPU kernels; the
# references run anywhere): dwconv_stats, swish_rows_, linear_swish, expand_dwconv, linear_sq_err, linear_col_dev
# --------------------------------------------------------------------------------------------------------------


def _native_cpu(*tensors: Tensor) -> bool:
    return HAS_NATIVE and all(t.device.type == "cpu" for t in tensors)


def dwconv_stats_reference(x: Tensor, weight: Tensor, stride: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Plain PyTorch in fp32: the conv output (channels_last) and, per output row ``r = n * H_out + y``, the mean and
    the sum of squared deviations from it of the row's ``W_out`` outputs, each ``[N * H_out, C]``."""
    k = weight.shape[-1]
    y = torch.nn.functional.conv2d(x.float(), weight.float(), stride=stride, padding=k // 2, groups=x.shape[1])
    n, c, ho, wo = y.shape
    rows = y.permute(0, 2, 3, 1).reshape(n * ho, wo, c)
    mean = rows.mean(1)
    return y.contiguous(memory_format=torch.channels_last), mean, (rows - mean[:, None]).square().sum(1)


def dwconv_stats(x: Tensor, weight: Tensor, stride: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Depthwise conv (padding ``k // 2``, no bias) of an fp32 ``[N, C, H, W]`` input plus what train-mode BatchNorm
    statistics of its output need, from the same pass: per output row the mean and sum of squared deviations
    ``[N * H_out, C]`` (merge them with ``merge_row_stats``). The output is channels_last. Native on CPU (register-
    tiled AVX2 when C % 8 == 0), the reference elsewhere."""
    if _native_cpu(x, weight):
        return torch.ops.dna_fast.dwconv_stats(x, weight, stride)
    return dwconv_stats_reference(x, weight, stride)


def merge_row_stats(mean: Tensor, m2: Tensor, per_row: int) -> tuple[Tensor, Tensor]:
    """Batch mean and biased variance (fp64) over all rows from per-row means / sums of squared deviations of
    ``per_row`` values each (Chan et al.'s pairwise combination)."""
    mean, m2 = mean.double(), m2.double()
    mu = mean.mean(0)
    total = m2.sum(0) + per_row * (mean - mu).square().sum(0)
    return mu, total / (mean.shape[0] * per_row)


def swish_rows_reference(x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None,
                         groups: int = 0) -> tuple[Tensor, Tensor]:
    """Plain PyTorch, out of place: ``(swish(x * scale + shift), column sums per group of rows)``."""
    z = x.float()
    if scale is not None:
        z = z * scale.float()
    if shift is not None:
        z = z + shift.float()
    y = torch.nn.functional.silu(z)
    sums = y.view(groups, -1, y.shape[1]).sum(1) if groups else y.new_zeros((0, y.shape[1]))
    return y.to(x.dtype), sums


def swish_rows_(x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None, groups: int = 0) -> Tensor:
    """In place over a contiguous fp32 ``[rows, C]`` matrix: ``x = swish(x * scale + shift)`` (a missing scale is 1,
    a missing shift 0). Returns the column sums of the result over each of ``groups`` equal groups of consecutive
    rows ``[groups, C]`` (the SE squeeze of ``groups`` images), ``[0, C]`` for ``groups=0``."""
    if _native_cpu(x):
        return torch.ops.dna_fast.swish_rows_(x, scale, shift, groups)
    y, sums = swish_rows_reference(x, scale, shift, groups)
    x.copy_(y)
    return sums


def linear_swish_reference(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Plain PyTorch: ``silu(x @ weight + bias)``."""
    return torch.nn.functional.silu(torch.addmm(bias.to(x.dtype), x, weight.to(x.dtype)))


def linear_swish(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``swish(x @ weight + bias)`` for ``x`` ``[rows, K]``, ``weight`` ``[K, N]``, ``bias`` ``[N]``: an MBConv's 1x1
    expansion on channels_last rows with its folded BN and activation in one register-blocked pass (native on CPU
    for fp32 with N % 8 == 0; plain PyTorch otherwise)."""
    if _native_cpu(x, weight, bias):
        return torch.ops.dna_fast.linear_swish(x, weight, bias)
    return linear_swish_reference(x, weight, bias)


def expand_dwconv_reference(x: Tensor, w1: Tensor, b1: Tensor, w_dw: Tensor, scale: Tensor | None = None,
                            shift: Tensor | None = None, stride: int = 1) -> tuple[Tensor, ...]:
    """Plain PyTorch: the expansion ``h = swish(x @ w1 + b1)`` over the channels of ``x`` ``[N, Cin, H, W]``, then
    ``dwconv_bn_act_reference(h, w_dw, scale, shift, stride, with_sums=True)`` (with scale/shift) or
    ``dwconv_stats_reference(h, w_dw, stride)`` (without)."""
    n, cin, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, cin)
    hid = linear_swish_reference(rows.float(), w1, b1).view(n, h, w, -1).permute(0, 3, 1, 2)
    if scale is None:
        return dwconv_stats_reference(hid, w_dw, stride)
    return dwconv_bn_act_reference(hid, w_dw, scale, shift, stride, with_sums=True)


def expand_dwconv(x: Tensor, w1: Tensor, b1: Tensor, w_dw: Tensor, scale: Tensor | None = None,
                  shift: Tensor | None = None, stride: int = 1) -> tuple[Tensor, ...]:
    """An MBConv's 1x1 expansion (with its folded BN and swish: ``swish(x @ w1 + b1)``, ``w1`` ``[Cin, C]``) fused
    into the depthwise conv that follows: the expanded rows are made in a ring of ``k`` rows right before the conv
    reads them, so the expansion never goes through memory. With ``scale``/``shift``: ``(swish(conv * scale +
    shift), sums over space [N, C])`` as ``dwconv_bn_act(..., with_sums=True)``; without: ``(conv, row means, row
    M2)`` as ``dwconv_stats``. fp32 on CPU (register-tiled AVX2 when C % 8 == 0), the reference elsewhere."""
    if _native_cpu(x, w1, b1, w_dw) and x.dtype == torch.float32:
        if scale is None:
            return torch.ops.dna_fast.expand_dwconv_stats(x, w1, b1, w_dw, stride)
        return torch.ops.dna_fast.expand_dwconv_bn_act(x, w1, b1, w_dw, scale, shift, stride)
    return expand_dwconv_reference(x, w1, b1, w_dw, scale, shift, stride)


def linear_sq_err_reference(x: Tensor, weight: Tensor, offset: Tensor, shift: Tensor,
                            gate: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Plain PyTorch in fp64: with ``e = (x * gate) @ weight + offset + shift``, per group of rows (one group without a
    gate) ``(sum(e ** 2), sum(|e|))``, each ``[groups]``."""
    xd = x.double()
    groups = 1 if gate is None else gate.shape[0]
    if gate is not None:
        xd = (xd.view(groups, -1, xd.shape[1]) * gate.double()[:, None]).view(xd.shape)
    e = (xd @ weight.double() + offset.double() + shift.double()).view(groups, -1, weight.shape[1])
    return e.square().sum((1, 2)), e.abs().sum((1, 2))


def linear_sq_err(x: Tensor, weight: Tensor, offset: Tensor, shift: Tensor,
                  gate: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per group of rows, the sums of squared and of absolute errors of ``e = (x * gate) @ weight + offset + shift``
    as two fp64 ``[groups]`` tensors, the product never stored: the last layer's SE gate, projection and loss in one
    pass (``x`` its hidden rows ``[rows, K]``, ``gate`` ``[images, K]`` scaling each image's consecutive rows (the
    groups are the images; one group without a gate), ``weight`` ``[K, N]`` with the BN scale folded in, ``shift``
    the BN shift, ``offset`` the residual minus the teacher's feature ``[rows, N]``, so ``e`` = student - teacher).
    The squared sums give the MSE, the absolute ones the authors' normalised L1 (``rate.metric=rel_l1``). Native on
    CPU for fp32 with N % 8 == 0 (the gate folded into one weight matrix per image); plain PyTorch otherwise."""
    if _native_cpu(x, weight, offset, shift):
        return torch.ops.dna_fast.linear_sq_err(x, weight, offset, shift, gate)
    return linear_sq_err_reference(x, weight, offset, shift, gate)


def linear_col_dev_reference(x: Tensor, weight: Tensor, mean: Tensor, gate: Tensor | None = None) -> Tensor:
    """Plain PyTorch in fp64: ``(((x * gate) @ weight - mean) ** 2).sum(0)``."""
    xd = x.double()
    if gate is not None:
        xd = (xd.view(gate.shape[0], -1, xd.shape[1]) * gate.double()[:, None]).view(xd.shape)
    return (xd @ weight.double() - mean.double()).square().sum(0)


def linear_col_dev(x: Tensor, weight: Tensor, mean: Tensor, gate: Tensor | None = None) -> Tensor:
    """Per column, ``sum(((x * gate) @ weight - mean) ** 2)`` as fp64 ``[N]``, the product never stored: the batch
    variance of the last layer's projection under BN recalibration (``mean``, its exact column mean, follows from the
    SE sums and the gate without the product). ``gate`` as in ``linear_sq_err``. Native on CPU for fp32 with
    N % 8 == 0; plain PyTorch otherwise."""
    if _native_cpu(x, weight, mean):
        return torch.ops.dna_fast.linear_col_dev(x, weight, mean, gate)
    return linear_col_dev_reference(x, weight, mean, gate)


if HAS_NATIVE:

    @torch.library.register_fake("dna_fast::dwconv_stats")
    def _(x, weight, stride):
        k = weight.shape[-1]
        n, c = x.shape[0], x.shape[1]
        ho, wo = _dw_out(x.shape[2], k, stride), _dw_out(x.shape[3], k, stride)
        y = x.new_empty((n, c, ho, wo)).contiguous(memory_format=torch.channels_last)
        return y, x.new_empty((n * ho, c)), x.new_empty((n * ho, c))

    @torch.library.register_fake("dna_fast::swish_rows_")
    def _(x, scale, shift, groups):
        return x.new_empty((groups, x.shape[1]))

    @torch.library.register_fake("dna_fast::linear_swish")
    def _(x, weight, bias):
        torch._check(x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[0],
                     lambda: "linear_swish: expected x [rows, K] and weight [K, N]")
        return x.new_empty((x.shape[0], weight.shape[1]))

    def _expand_dw_fake(x, w1, w_dw, stride):
        k, c = w_dw.shape[-1], w1.shape[1]
        n, ho, wo = x.shape[0], _dw_out(x.shape[2], k, stride), _dw_out(x.shape[3], k, stride)
        return x.new_empty((n, c, ho, wo)).contiguous(memory_format=torch.channels_last), n, ho, c

    @torch.library.register_fake("dna_fast::expand_dwconv_bn_act")
    def _(x, w1, b1, w_dw, scale, shift, stride):
        y, n, _, c = _expand_dw_fake(x, w1, w_dw, stride)
        return y, x.new_empty((n, c))

    @torch.library.register_fake("dna_fast::expand_dwconv_stats")
    def _(x, w1, b1, w_dw, stride):
        y, n, ho, c = _expand_dw_fake(x, w1, w_dw, stride)
        return y, x.new_empty((n * ho, c)), x.new_empty((n * ho, c))

    @torch.library.register_fake("dna_fast::linear_col_dev")
    def _(x, weight, mean, gate=None):
        return x.new_empty((weight.shape[1],), dtype=torch.float64)

    @torch.library.register_fake("dna_fast::linear_sq_err")
    def _(x, weight, offset, shift, gate=None):
        groups = 1 if gate is None else gate.shape[0]
        return x.new_empty((groups,), dtype=torch.float64), x.new_empty((groups,), dtype=torch.float64)


# --------------------------------------------------------------------------------------------------------------
# se_gate: the squeeze-excitation MLP of one layer, per sample
# --------------------------------------------------------------------------------------------------------------


def se_gate_reference(pooled: Tensor, w_reduce: Tensor, b_reduce: Tensor, w_expand: Tensor,
                      b_expand: Tensor) -> Tensor:
    """Plain PyTorch in fp32: ``sigmoid(silu(pooled @ w_reduce.T + b_reduce) @ w_expand.T + b_expand)``."""
    h = torch.nn.functional.silu(torch.nn.functional.linear(pooled.float(), w_reduce.float(), b_reduce.float()))
    return torch.sigmoid(torch.nn.functional.linear(h, w_expand.float(), b_expand.float())).to(pooled.dtype)


def se_gate(pooled: Tensor, w_reduce: Tensor, b_reduce: Tensor, w_expand: Tensor, b_expand: Tensor) -> Tensor:
    """Squeeze-excitation gate per sample: ``sigmoid(w_expand @ swish(w_reduce @ pooled + b_reduce) + b_expand)``.

    Args:
        pooled: [N, C] spatial means (timm's ``x.mean((2, 3))``).
        w_reduce: [R, C] (timm's ``se.conv_reduce.weight`` without its 1x1 dims); b_reduce: [R].
        w_expand: [C, R]; b_expand: [C].

    Returns:
        The gate [N, C] in ``pooled.dtype`` (computed in fp32). Not differentiable (inference / rating op).
    """
    if not HAS_NATIVE:
        return se_gate_reference(pooled, w_reduce, b_reduce, w_expand, b_expand)
    return torch.ops.dna_fast.se_gate(pooled, w_reduce, b_reduce, w_expand, b_expand)


# --------------------------------------------------------------------------------------------------------------
# pw_project: gated 1x1 projection + folded BN (+ residual), or its per-sample squared error to a target
# --------------------------------------------------------------------------------------------------------------


def pw_project_reference(x: Tensor, gate: Tensor, weight: Tensor, scale: Tensor, shift: Tensor,
                         residual: Tensor | None = None, target: Tensor | None = None) -> Tensor:
    """Plain PyTorch in fp32: ``conv2d(x * gate, weight) * scale + shift (+ residual)``, rounded to ``x.dtype``;
    with ``target``, ``((out - target) ** 2).sum((1, 2, 3))`` in fp32 of that rounded output."""
    z = torch.nn.functional.conv2d(x.float() * gate.float()[:, :, None, None], weight.float())
    y = z * _per_channel(scale.float()) + _per_channel(shift.float())
    if residual is not None:
        y = y + residual.float()
    out = y.to(x.dtype)
    if target is None:
        return out
    return (out.float() - target.to(x.dtype).float()).square().sum((1, 2, 3))


def pw_project(x: Tensor, gate: Tensor, weight: Tensor, scale: Tensor, shift: Tensor,
               residual: Tensor | None = None, target: Tensor | None = None) -> Tensor:
    """Fused gated 1x1 projection + folded BN (+ residual), timm's ``conv_pwl`` + ``bn3`` after the SE gate.

    The gate is folded into per-sample weights, so ``x * gate`` is never materialized.

    Args:
        x: [N, C, H, W], fp32 / fp16 / bf16, any layout (output keeps NCHW / channels_last).
        gate: [N, C] SE gate.
        weight: [Co, C, 1, 1].
        scale, shift: [Co] folded BN.
        residual: optional [N, Co, H, W] added after BN (the MBConv skip).
        target: optional [N, Co, H, W]; then the op returns, instead of the output, the per-sample sum of squared
            differences between the output (rounded to ``x.dtype``) and the target, [N] fp32 (the rating loss).

    Not differentiable (inference / rating op).
    """
    if not HAS_NATIVE:
        return pw_project_reference(x, gate, weight, scale, shift, residual, target)
    return torch.ops.dna_fast.pw_project(x, gate, weight, scale, shift, residual, target)


if HAS_NATIVE:

    @torch.library.register_fake("dna_fast::se_gate")
    def _(pooled, w_reduce, b_reduce, w_expand, b_expand):
        torch._check(pooled.dim() == 2, lambda: "se_gate: pooled must be 2-D [N, C]")
        return pooled.new_empty(pooled.shape)

    @torch.library.register_fake("dna_fast::pw_project")
    def _(x, gate, weight, scale, shift, residual, target):
        torch._check(x.dim() == 4, lambda: "pw_project: expected a 4-D input [N, C, H, W]")
        if target is not None:
            return x.new_empty((x.shape[0],), dtype=torch.float32)
        y = x.new_empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]))
        return y.contiguous(memory_format=_suggested_format(x))


# --------------------------------------------------------------------------------------------------------------
# mbconv_siblings: several MBConv ops of one layer on the same input in one call (the rating engine's sibling op)
# --------------------------------------------------------------------------------------------------------------


class FoldedMBConv(NamedTuple):
    """The weights of one MBConv op (timm ``InvertedResidual`` with SE) with every BatchNorm folded to scale/shift.

    Shapes (C in, M mid, R SE width, Co out, k kernel): ``w_expand`` [M, C] (None when the op has no expansion,
    then M = C), ``scale1``/``shift1`` [M]; ``w_dw`` [M, 1, k, k], ``scale2``/``shift2`` [M]; ``w_se_reduce``
    [R, M], ``b_se_reduce`` [R], ``w_se_expand`` [M, R], ``b_se_expand`` [M]; ``w_project`` [Co, M],
    ``scale3``/``shift3`` [Co].
    """

    w_expand: Tensor | None
    scale1: Tensor | None
    shift1: Tensor | None
    w_dw: Tensor
    scale2: Tensor
    shift2: Tensor
    w_se_reduce: Tensor
    b_se_reduce: Tensor
    w_se_expand: Tensor
    b_se_expand: Tensor
    w_project: Tensor
    scale3: Tensor
    shift3: Tensor


def fold_bn(bn: torch.nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(scale, shift) of an eval-mode BatchNorm: ``gamma / sqrt(var + eps)`` and ``beta - mean * scale``."""
    scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
    return scale, bn.bias.detach().float() - bn.running_mean.float() * scale


def fold_mbconv(block: torch.nn.Module) -> FoldedMBConv:
    """Folds a timm ``InvertedResidual`` (e.g. ``dna_fast.nn.MBConvOp``) with SE into a ``FoldedMBConv``.

    Uses the BatchNorm running statistics (eval semantics).
    """
    has_pw = not isinstance(block.conv_pw, torch.nn.Identity)
    s1, b1 = fold_bn(block.bn1) if has_pw else (None, None)
    s2, b2 = fold_bn(block.bn2)
    s3, b3 = fold_bn(block.bn3)
    se = block.se
    return FoldedMBConv(
        block.conv_pw.weight.detach().flatten(1) if has_pw else None, s1, b1,
        block.conv_dw.weight.detach(), s2, b2,
        se.conv_reduce.weight.detach().flatten(1), se.conv_reduce.bias.detach(),
        se.conv_expand.weight.detach().flatten(1), se.conv_expand.bias.detach(),
        block.conv_pwl.weight.detach().flatten(1), s3, b3,
    )


def _check_siblings(x: Tensor, siblings: Sequence[FoldedMBConv], stride: int, residual: bool,
                    target: Tensor | None) -> None:
    if x.dim() != 4:
        raise ValueError(f"mbconv_siblings: expected a 4-D input [N, C, H, W], got {x.dim()}-D")
    if not siblings:
        raise ValueError("mbconv_siblings: no ops given")
    co = {op.w_project.shape[0] for op in siblings}
    if len(co) != 1:
        raise ValueError(f"mbconv_siblings: all ops must have the same output channels, got {sorted(co)}")
    if residual and (stride != 1 or co != {x.shape[1]}):
        raise ValueError("mbconv_siblings: residual needs stride 1 and output channels == input channels")
    for i, op in enumerate(siblings):
        if op.w_expand is not None and op.w_expand.shape[1] != x.shape[1]:
            raise ValueError(f"mbconv_siblings: op {i}: w_expand {tuple(op.w_expand.shape)} does not take "
                             f"{x.shape[1]} input channels")
    if target is not None:
        n, c, h, w = x.shape
        k = siblings[0].w_dw.shape[-1]
        want = (n, co.pop(), _dw_out(h, k, stride), _dw_out(w, k, stride))
        if tuple(target.shape) != want:
            raise ValueError(f"mbconv_siblings: target must have shape {want}, got {tuple(target.shape)}")


def mbconv_siblings_reference(x: Tensor, siblings: Sequence[FoldedMBConv], stride: int = 1, residual: bool = False,
                              target: Tensor | None = None) -> Tensor:
    """Plain PyTorch in fp32, one op after the other (the oracle of ``mbconv_siblings``)."""
    _check_siblings(x, siblings, stride, residual, target)
    silu, outs = torch.nn.functional.silu, []
    xf = x.float()
    for op in siblings:
        h = xf
        if op.w_expand is not None:
            h = torch.nn.functional.conv2d(h, op.w_expand.float()[:, :, None, None])
            h = silu(h * _per_channel(op.scale1.float()) + _per_channel(op.shift1.float()))
        k = op.w_dw.shape[-1]
        h = torch.nn.functional.conv2d(h, op.w_dw.float(), stride=stride, padding=k // 2, groups=h.shape[1])
        h = silu(h * _per_channel(op.scale2.float()) + _per_channel(op.shift2.float()))
        s = silu(torch.nn.functional.linear(h.mean((2, 3)), op.w_se_reduce.float(), op.b_se_reduce.float()))
        g = torch.sigmoid(torch.nn.functional.linear(s, op.w_se_expand.float(), op.b_se_expand.float()))
        y = torch.nn.functional.conv2d(h * g[:, :, None, None], op.w_project.float()[:, :, None, None])
        y = y * _per_channel(op.scale3.float()) + _per_channel(op.shift3.float())
        if residual:
            y = y + xf
        outs.append(y.to(x.dtype))
    out = torch.stack(outs)
    if target is None:
        return out
    return (out.float() - target.to(x.dtype).float()[None]).square().sum((2, 3, 4))


def mbconv_siblings(x: Tensor, siblings: Sequence[FoldedMBConv], stride: int = 1, residual: bool = False,
                    target: Tensor | None = None) -> Tensor:
    """Evaluates several MBConv ops of one layer (siblings in the rating trie) on the same input in one call.

    Any mix of kernel sizes and expansion ratios (e.g. DNA's six k3/5/7 x e3/6 ops). Per op: the 1x1 expansion GEMM
    and the native ``scale_shift_swish``, the fused ``dwconv_bn_act`` (with the SE sums from the same pass),
    ``se_gate`` and ``pw_project`` (whose epilogue adds the skip and, with a target, reduces the rating loss): four
    full-size passes per op where eager PyTorch makes about twelve. Eval semantics: BN is folded by the caller
    (``fold_mbconv``). Not differentiable.

    Args:
        x: [N, C, H, W] layer input, fp32 / fp16 / bf16, NCHW or channels_last.
        siblings: K ops as ``FoldedMBConv`` tuples; all with the same output channels.
        stride: depthwise stride (1 or 2) shared by the ops.
        residual: add the skip connection ``x`` (needs stride 1 and Co == C).
        target: optional [N, Co, H_out, W_out]; then return losses instead of outputs.

    Returns:
        Outputs stacked [K, N, Co, H_out, W_out] in ``x.dtype``, or with ``target`` the per-op per-sample sums of
        squared differences [K, N] (fp32), i.e. K times ``pw_project(..., target=target)``.
    """
    _check_siblings(x, siblings, stride, residual, target)
    mids: list[Tensor | None] = []
    for op in siblings:
        if op.w_expand is None:
            mids.append(None)
            continue
        # NOTE one 1x1 GEMM over the concatenated expand weights of all ops reads x once, but its per-op channel
        # slices are not contiguous and copying them cost more on CPU than the separate GEMMs (measured, dna shapes)
        h = torch.nn.functional.conv2d(x, op.w_expand.to(x.dtype)[:, :, None, None])
        mids.append(scale_shift_swish(h, op.scale1, op.shift1))
    results = []
    for i, op in enumerate(siblings):
        h = x if mids[i] is None else mids[i]
        y, sums = dwconv_bn_act(h, op.w_dw, op.scale2, op.shift2, stride, with_sums=True)
        pooled = sums / max(1, y.shape[2] * y.shape[3])
        gate = se_gate(pooled, op.w_se_reduce, op.b_se_reduce, op.w_se_expand, op.b_se_expand)
        results.append(pw_project(y, gate, op.w_project[:, :, None, None], op.scale3, op.shift3,
                                  x if residual else None, target))
    return torch.stack(results)
