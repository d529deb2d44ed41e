"""Student stem and head, named like timm's EfficientNet so weights load into the child by state_dict."""

from __future__ import annotations

import torch
from timm.layers import create_classifier, create_conv2d, get_norm_act_layer
from timm.models._efficientnet_blocks import DepthwiseSeparableConv
from torch import nn

from ..space import StemSpec
from .mbconv import resolve_layers, se_layer_for

__all__ = ["StudentStem", "StudentHead"]


class StudentStem(nn.Module):
    """conv kxk stride 2 + BN + act (``conv_stem``, ``bn1``), then a depthwise-separable block (``ds``).

    In the child these are ``conv_stem``, ``bn1`` and ``blocks.0.0``. Trained together with block 0.
    """

    def __init__(self, spec: StemSpec, in_chans: int = 3, act_layer: type[nn.Module] | str | None = "swish",
                 norm_layer: type[nn.Module] | None = None) -> None:
        super().__init__()
        act_layer, norm_layer = resolve_layers(act_layer, norm_layer)
        self.conv_stem = create_conv2d(in_chans, spec.chs, spec.kernel, stride=spec.stride)
        self.bn1 = get_norm_act_layer(norm_layer, act_layer)(spec.chs, inplace=True)
        self.ds = DepthwiseSeparableConv(spec.chs, spec.ds_chs, dw_kernel_size=spec.ds_kernel, act_layer=act_layer,
                                         norm_layer=norm_layer, se_layer=se_layer_for(spec.ds_se))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ds(self.bn1(self.conv_stem(x)))


class StudentHead(nn.Module):
    """1x1 conv + BN + act (``conv_head``, ``bn2``), global pool, linear ``classifier`` (timm EfficientNet head)."""

    def __init__(self, in_chs: int, head_chs: int = 1280, num_classes: int = 1000,
                 act_layer: type[nn.Module] | str | None = "swish", norm_layer: type[nn.Module] | None = None,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        act_layer, norm_layer = resolve_layers(act_layer, norm_layer)
        if head_chs > 0:
            self.conv_head = create_conv2d(in_chs, head_chs, 1)
            self.bn2 = get_norm_act_layer(norm_layer, act_layer)(head_chs, inplace=True)
        else:
            self.conv_head, self.bn2, head_chs = nn.Identity(), nn.Identity(), in_chs
        self.global_pool, self.classifier = create_classifier(head_chs, num_classes, pool_type="avg")
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.global_pool(self.bn2(self.conv_head(x)))
        return self.classifier(self.drop(x))
