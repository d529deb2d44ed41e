"""Modules of the DNA student: MBConv choice ops, choice layers / cells / blocks, stem and head.

Every op is a timm ``InvertedResidual`` (``MBConvOp`` only adds how it is made from an op name), so
its submodule names, channel rounding, SE size and skip rule are those of the timm child network and
chosen weights load into the child by state_dict.
"""

from .choice import ChoiceBlock, ChoiceCell, ChoiceLayer
from .mbconv import MBConvOp, resolve_layers
from .stem import StudentHead, StudentStem

__all__ = ["MBConvOp", "ChoiceLayer", "ChoiceCell", "ChoiceBlock", "StudentStem", "StudentHead", "resolve_layers"]
