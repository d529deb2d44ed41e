"""MBConv choice op: a timm ``InvertedResidual`` made from a DNA op name (``ir_k3_e6_se0.25``)."""

from __future__ import annotations

from functools import partial

from timm.layers import get_act_layer
from timm.models._efficientnet_blocks import InvertedResidual, SqueezeExcite
from torch import nn

from ..space import OpSpec, parse_op

__all__ = ["MBConvOp", "resolve_layers", "se_layer_for"]


def resolve_layers(act: str | type[nn.Module] | None = "swish",
                   norm_layer: type[nn.Module] | None = None) -> tuple[type[nn.Module], type[nn.Module]]:
    """(act_layer, norm_layer) as timm's EfficientNet resolves them (``swish`` -> SiLU, BatchNorm2d)."""
    act_layer = get_act_layer(act) if isinstance(act, str) or act is None else act
    if act_layer is None:
        act_layer = nn.SiLU
    return act_layer, norm_layer or nn.BatchNorm2d


def se_layer_for(se_ratio: float, exp_ratio: float = 1.0):
    """SE layer factory exactly as timm's ``EfficientNetBuilder`` makes it (SE ratio of the block input).

    # NOTE the builder divides the ratio by the expansion because timm's SE sees the mid channels;
    # the float order (ratio / exp, then mid * that) matters for the rounding of the SE width.
    """
    if not se_ratio:
        return None
    return partial(SqueezeExcite, rd_ratio=se_ratio / exp_ratio)


class MBConvOp(InvertedResidual):
    """One choice op of a layer: MBConv (1x1 expand, kxk depthwise, SE, 1x1 project, skip if shapes allow).

    Args:
        op: op name (``ir_k5_e3_se0.25``) or ``OpSpec``.
        in_chs: input channels.
        out_chs: output channels.
        stride: depthwise stride.
        act_layer: activation class (default SiLU = swish).
        norm_layer: norm class (default BatchNorm2d; timm wraps it with the activation).
        drop_path_rate: stochastic depth on the residual branch.
    """

    def __init__(self, op: str | OpSpec, in_chs: int, out_chs: int, stride: int = 1,
                 act_layer: type[nn.Module] | None = None, norm_layer: type[nn.Module] | None = None,
                 drop_path_rate: float = 0.0) -> None:
        op = parse_op(op) if isinstance(op, str) else op
        act_layer, norm_layer = resolve_layers(act_layer, norm_layer)
        super().__init__(
            in_chs, out_chs, dw_kernel_size=op.kernel, stride=stride, exp_ratio=op.exp_ratio,
            act_layer=act_layer, norm_layer=norm_layer, se_layer=se_layer_for(op.se_ratio, op.exp_ratio),
            drop_path_rate=drop_path_rate,
        )
        self.op = op
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride

    def extra_repr(self) -> str:
        return f"{self.op.name}, {self.in_chs}->{self.out_chs}, stride={self.stride}"
