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
