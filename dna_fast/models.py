"""Child networks of a DNA search space as timm EfficientNets, weight inheritance, and DNA-a..d.

A choice of one candidate per block becomes timm arch_def strings (one ``ir_r1_...`` string per layer),
built by timm's own ``EfficientNet`` / ``EfficientNetBuilder``, so found models work with timm's tools.
DNA-a..d are the architectures published by the DNA authors (Li et al., "Blockwisely Supervised Neural
Architecture Search with Knowledge Distillation", CVPR 2020); importing this module registers them with
timm (``timm.create_model("dna_a")``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet
from torch import nn

from .nn import resolve_layers
from .space import Candidate, SearchSpace, parse_op

__all__ = [
    "arch_def", "build", "choices_from_arch_def", "inherit_weights", "InheritReport", "DNA_ARCH_DEFS",
    "dna_choices", "dna_a", "dna_b", "dna_c", "dna_d",
]

# Architectures published by the DNA authors (retraining/model.py of their public code): the stem's
# depthwise-separable stage, then one stage per DNA block. Facts (block strings), not code.
DNA_ARCH_DEFS: dict[str, list[list[str]]] = {
    "dna_a": [
        ["ds_r1_k3_s1_c16_se0.25"],
        ["ir_r1_k5_s2_e3_c24_se0.25", "ir_r1_k3_s1_e3_c24_se0.25", "ir_r1_k3_s1_e6_c24_se0.25"],
        ["ir_r2_k3_s2_e3_c40_se0.25", "ir_r1_k5_s1_e3_c40_se0.25", "ir_r1_k3_s1_e6_c40_se0.25"],
        ["ir_r1_k7_s2_e6_c80_se0.25", "ir_r1_k3_s1_e3_c80_se0.25", "ir_r1_k5_s1_e3_c80_se0.25",
         "ir_r1_k3_s1_e6_c80_se0.25"],
        ["ir_r1_k5_s1_e6_c96_se0.25", "ir_r2_k5_s1_e3_c96_se0.25", "ir_r1_k5_s1_e6_c96_se0.25"],
        ["ir_r1_k5_s2_e6_c160_se0.25", "ir_r3_k5_s1_e3_c160_se0.25", "ir_r1_k5_s1_e6_c160_se0.25"],
        ["ir_r1_k3_s1_e6_c320_se0.25"],
    ],
    "dna_b": [
        ["ds_r1_k3_s1_c16_se0.25"],
        ["ir_r1_k3_s2_e3_c24_se0.25", "ir_r1_k5_s1_e3_c24_se0.25", "ir_r1_k7_s1_e6_c24_se0.25"],
        ["ir_r1_k7_s2_e6_c40_se0.25", "ir_r1_k5_s1_e3_c40_se0.25", "ir_r1_k7_s1_e6_c40_se0.25"],
        ["ir_r1_k5_s2_e6_c80_se0.25", "ir_r2_k5_s1_e3_c80_se0.25", "ir_r1_k3_s1_e6_c80_se0.25"],
        ["ir_r1_k5_s1_e6_c96_se0.25", "ir_r2_k5_s1_e3_c96_se0.25", "ir_r1_k5_s1_e6_c96_se0.25"],
        ["ir_r1_k7_s2_e6_c192_se0.25", "ir_r3_k5_s1_e3_c192_se0.25", "ir_r1_k7_s1_e6_c192_se0.25"],
        ["ir_r1_k3_s1_e6_c320_se0.25"],
    ],
    "dna_c": [
        ["ds_r1_k3_s1_c16_se0.25"],
        ["ir_r1_k5_s2_e6_c24_se0.25", "ir_r1_k3_s1_e6_c24_se0.25"],
        ["ir_r2_k5_s2_e6_c40_se0.25", "ir_r1_k3_s1_e6_c40_se0.25", "ir_r1_k5_s1_e6_c40_se0.25"],
        ["ir_r1_k5_s2_e6_c80_se0.25", "ir_r1_k3_s1_e6_c80_se0.25", "ir_r2_k5_s1_e6_c80_se0.25"],
        ["ir_r1_k3_s1_e6_c112_se0.25", "ir_r2_k5_s1_e6_c112_se0.25", "ir_r1_k5_s1_e3_c112_se0.25"],
        ["ir_r1_k5_s2_e6_c192_se0.25", "ir_r1_k5_s1_e3_c192_se0.25", "ir_r2_k5_s1_e6_c192_se0.25"],
        ["ir_r1_k3_s1_e6_c320_se0.25"],
    ],
    "dna_d": [
        ["ds_r1_k3_s1_c16_se0.25"],
        ["ir_r1_k7_s2_e6_c24_se0.25", "ir_r1_k5_s1_e6_c24_se0.25", "ir_r1_k7_s1_e6_c24_se0.25"],
        ["ir_r4_k7_s2_e6_c40_se0.25"],
        ["ir_r1_k7_s2_e6_c80_se0.25", "ir_r2_k5_s1_e6_c80_se0.25", "ir_r1_k7_s1_e6_c80_se0.25"],
        ["ir_r1_k7_s1_e6_c112_se0.25", "ir_r1_k5_s1_e6_c112_se0.25", "ir_r1_k7_s1_e6_c112_se0.25",
         "ir_r1_k5_s1_e6_c112_se0.25"],
        ["ir_r1_k7_s2_e6_c192_se0.25", "ir_r3_k5_s1_e6_c192_se0.25", "ir_r1_k7_s1_e6_c192_se0.25"],
        ["ir_r1_k3_s1_e6_c320_se0.25"],
    ],
}

# The paper's table (Li et al. 2020, Table 1): ImageNet top-1 %, params (M), FLOPs (M, = multiply-adds).
DNA_PAPER = {
    "dna_a": dict(top1=77.1, params_m=4.2, macs_m=348),
    "dna_b": dict(top1=77.5, params_m=4.9, macs_m=394),
    "dna_c": dict(top1=77.8, params_m=5.3, macs_m=466),
    "dna_d": dict(top1=78.4, params_m=6.4, macs_m=611),
}


def _check_choices(space: SearchSpace, choices: Sequence[Candidate]) -> list[Candidate]:
    if len(choices) != space.num_blocks:
        raise ValueError(f"{len(choices)} choices given for the {space.num_blocks} blocks of {space.name}")
    return [space.parse(i, c) for i, c in enumerate(choices)]


def arch_def(space: SearchSpace | str, choices: Sequence[Candidate | str]) -> list[list[str]]:
    """timm arch_def of the child network: the stem's ds stage, then one stage per block, one string per layer.

    Args:
        space: the search space (or its name / path).
        choices: one candidate (or candidate string) per block.
    """
    space = SearchSpace.load(space)
    choices = _check_choices(space, choices)
    out = [[space.stem.block_str()]]
    for b, cand in zip(space.blocks, choices):
        width = b.cells[cand.cell].width
        ops = b.op_specs
        out.append([ops[k].block_str(b.stride if layer == 0 else 1, width) for layer, k in enumerate(cand.ops)])
    return out


def _model_kwargs(space: SearchSpace, block_args: list, num_classes: int, **kwargs) -> dict[str, Any]:
    act_layer, norm_layer = resolve_layers(kwargs.pop("act_layer", space.act), kwargs.pop("norm_layer", None))
    return dict(block_args=block_args, num_classes=num_classes, num_features=space.head_chs,
                stem_size=space.stem.chs, stem_kernel_size=space.stem.kernel, act_layer=act_layer,
                norm_layer=norm_layer, **kwargs)


def build(space: SearchSpace | str, choices: Sequence[Candidate | str], num_classes: int = 1000,
          **timm_kwargs) -> EfficientNet:
    """The child network of a choice as a timm ``EfficientNet`` made by timm's builder.

    Args:
        space: the search space (or its name / path).
        choices: one candidate (or candidate string) per block.
        num_classes: classifier outputs.
        **timm_kwargs: passed to ``EfficientNet`` (``drop_rate``, ``drop_path_rate``, ``in_chans``, ...).
    """
    space = SearchSpace.load(space)
    arch = arch_def(space, choices)
    return EfficientNet(**_model_kwargs(space, decode_arch_def(arch), num_classes, **timm_kwargs))


def choices_from_arch_def(space: SearchSpace | str, arch: Sequence[Sequence[str]]) -> list[Candidate]:
    """Inverse of ``arch_def``: the candidates of ``space`` that make the timm arch_def ``arch``.

    Repeats (``_r3_``) are expanded; the stem stage must match the space's stem.

    Raises:
        ValueError: the arch_def is not in the space (naming the block and layer).
    """
    space = SearchSpace.load(space)
    if len(arch) != space.num_blocks + 1:
        raise ValueError(f"arch_def has {len(arch)} stages; {space.name} needs {space.num_blocks + 1} "
                         "(the stem's ds stage, then one per block)")
    stem = decode_arch_def([list(arch[0])])[0]
    want = decode_arch_def([[space.stem.block_str()]])[0]
    if len(stem) != 1 or {k: v for k, v in stem[0].items() if k != "se_layer"} != \
            {k: v for k, v in want[0].items() if k != "se_layer"}:
        raise ValueError(f"arch_def stem stage {list(arch[0])} does not match {space.name}'s stem "
                         f"{space.stem.block_str()!r}")
    out = []
    for i, (b, stage) in enumerate(zip(space.blocks, arch[1:])):
        layers = decode_arch_def([list(stage)])[0]
        widths = {la["out_chs"] for la in layers}
        if len(widths) != 1:
            raise ValueError(f"block {i}: layers of one stage must share a width, got {sorted(widths)}")
        width, depth = widths.pop(), len(layers)
        cells = [(c.depth, c.width) for c in b.cells]
        if (depth, width) not in cells:
            raise ValueError(f"block {i}: depth {depth} width {width} is not a cell of {space.name} "
                             f"({[c.label for c in b.cells]})")
        ops = []
        for layer, la in enumerate(layers):
            if la["block_type"] != "ir":
                raise ValueError(f"block {i} layer {layer}: block type {la['block_type']!r} is not an MBConv ('ir')")
            # NOTE timm's builder forces stride 1 on every layer of a stage after the first
            if layer == 0 and la["stride"] != b.stride:
                raise ValueError(f"block {i} layer 0: stride {la['stride']}, the space has {b.stride}")
            name = parse_op(f"ir_k{la['dw_kernel_size']}_e{la['exp_ratio']:g}"
                            + (f"_se{la['se_ratio']:g}" if la.get("se_ratio") else "")).name
            if name not in b.ops:
                raise ValueError(f"block {i} layer {layer}: op {name} is not in the block's ops {list(b.ops)}")
            ops.append(b.ops.index(name))
        out.append(space.candidate(i, cells.index((depth, width)), ops))
    return out


def dna_choices(name: str, space: SearchSpace | str = "dna_cells") -> list[Candidate]:
    """The candidates of DNA-a..d (``name`` in ``dna_a`` .. ``dna_d``) in a space (default ``dna_cells``)."""
    if name not in DNA_ARCH_DEFS:
        raise ValueError(f"unknown DNA model {name!r}: one of {sorted(DNA_ARCH_DEFS)}")
    return choices_from_arch_def(space, DNA_ARCH_DEFS[name])


# ---------------------------------------------------------------------------------------------- inheritance
@dataclass
class InheritReport:
    """What ``inherit_weights`` did.

    Attributes:
        copied: child state_dict keys that received a supernet tensor.
        not_copied: child key -> reason (shape mismatch with the supernet key, or no supernet source such
            as the head and classifier).
    """

    copied: list[str] = field(default_factory=list)
    not_copied: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"inherited {len(self.copied)} tensors, {len(self.not_copied)} not copied"]
        lines += [f"  {k}: {v}" for k, v in self.not_copied.items()]
        return "\n".join(lines)


def _child_key_map(supernet: nn.Module, choices: Sequence[Candidate]) -> dict[str, str]:
    """child module prefix -> supernet module prefix for the chosen path."""
    stem = f"blocks.0.stems.{choices[0].cell}" if getattr(supernet, "cell_stems", False) else "blocks.0.stem"
    m = {"conv_stem": f"{stem}.conv_stem", "bn1": f"{stem}.bn1", "blocks.0.0": f"{stem}.ds"}
    for i, cand in enumerate(choices):
        for layer, k in enumerate(cand.ops):
            m[f"blocks.{i + 1}.{layer}"] = f"blocks.{i}.cells.{cand.cell}.layers.{layer}.ops.{k}"
    return m


@torch.no_grad()
def inherit_weights(child: nn.Module, supernet: nn.Module, choices: Sequence[Candidate | str]) -> InheritReport:
    """Copy the chosen supernet weights (stem, chosen op of every layer) into a child from ``build``.

    Every tensor whose shape matches is copied (parameters and BN buffers). Tensors that differ in shape (a
    block's first layer when the child's input width differs from the teacher channels the supernet saw; a
    cell's last layer, which writes teacher channels in the supernet) and tensors with no supernet source
    (head, classifier) are reported, not copied.

    Returns:
        An ``InheritReport``.
    """
    choices = _check_choices(supernet.space, choices)
    src = supernet.state_dict()
    report = InheritReport()
    prefixes = _child_key_map(supernet, choices)
    for key, t in child.state_dict().items():
        skey = None
        for cp, sp in prefixes.items():
            if key.startswith(cp + "."):
                skey = sp + key[len(cp):]
                break
        if skey is None:
            report.not_copied[key] = "no supernet source"
        elif skey not in src:
            report.not_copied[key] = f"supernet has no {skey}"
        elif src[skey].shape != t.shape:
            report.not_copied[key] = f"shape {tuple(t.shape)} != supernet {skey} {tuple(src[skey].shape)}"
        else:
            t.copy_(src[skey])
            report.copied.append(key)
    return report


# ---------------------------------------------------------------------------------------------- DNA-a..d
def _cfg(**kwargs) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv_stem", "classifier": "classifier", "paper_ids": "arXiv:1911.13053", **kwargs,
    }


default_cfgs = generate_default_cfgs({name: _cfg() for name in DNA_ARCH_DEFS})


def _create_dna(variant: str, pretrained: bool = False, **kwargs) -> EfficientNet:
    space = SearchSpace.load("dna_cells")
    kwargs.setdefault("num_classes", 1000)
    num_classes = kwargs.pop("num_classes")
    model_kwargs = _model_kwargs(space, decode_arch_def(DNA_ARCH_DEFS[variant]), num_classes, **kwargs)
    return build_model_with_cfg(EfficientNet, variant, pretrained, **model_kwargs)


@register_model
def dna_a(pretrained: bool = False, **kwargs) -> EfficientNet:
    """DNA-a (Li et al. 2020): 4.2 M params, 348 M MACs, 77.1 % ImageNet top-1 in the paper."""
    return _create_dna("dna_a", pretrained, **kwargs)


@register_model
def dna_b(pretrained: bool = False, **kwargs) -> EfficientNet:
    """DNA-b (Li et al. 2020): 4.9 M params, 394 M MACs, 77.5 % ImageNet top-1 in the paper."""
    return _create_dna("dna_b", pretrained, **kwargs)


@register_model
def dna_c(pretrained: bool = False, **kwargs) -> EfficientNet:
    """DNA-c (Li et al. 2020): 5.3 M params, 466 M MACs, 77.8 % ImageNet top-1 in the paper."""
    return _create_dna("dna_c", pretrained, **kwargs)


@register_model
def dna_d(pretrained: bool = False, **kwargs) -> EfficientNet:
    """DNA-d (Li et al. 2020): 6.4 M params, 611 M MACs, 78.4 % ImageNet top-1 in the paper."""
    return _create_dna("dna_d", pretrained, **kwargs)
