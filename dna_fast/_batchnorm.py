"""BatchNorm recalibration shared by the rating reference (``dna_fast.rating``) and the rating engine
(``dna_fast._rating_engine``); it sits below both so that neither imports the other for it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["recalibrate_bn"]


def _bn_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(module: nn.Module, calib: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The original's ``reset_bn_eval``: reset every BN's running stats, forward ``calib`` with the BNs in train mode
    and ``momentum=None`` (cumulative average of the batch statistics), then put the module in eval mode.

    Returns:
        The module's outputs on the calibration batches (computed with batch statistics, as during calibration).
    """
    module.eval()
    bns = _bn_layers(module)
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    outs = [module(x) for x in calib]
    module.eval()
    return outs
