"""Python face of the native operators ``torch.ops.dna_fast.*``.

For every op: a pure-PyTorch reference (``*_reference``; the oracle of the tests and the fallback when the
extension is missing), a fake kernel (``register_fake``) so the op traces under ``torch.compile``, an autograd
formula where training uses the op, and the public wrapper that dispatches to the native op when it exists.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._backend import load_extension

_C = load_extension()
HAS_NATIVE = _C is not None


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
    return torch.ops.dna_fast.scale_shift_swish(x, scale, shift)


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
    y, sums = torch.ops.dna_fast.dwconv_bn_act(x, weight, scale, shift, stride, with_sums)
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
