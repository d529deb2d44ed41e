"""Teacher of DNA: a frozen CNN cut into stages whose feature maps supervise the supernet blocks.

DNA (Li et al., "Blockwisely Supervised Neural Architecture Search with Knowledge Distillation", CVPR 2020,
arXiv:1911.13053) distills block ``i`` of the student from the teacher: its input is the teacher's feature
after the previous block's stage (the image for block 0) and its target the feature after its own stage.

``Teacher`` wraps a timm model (or any ``nn.Module``) and returns those features for a ``SearchSpace``:

* timm's EfficientNet family (and every model with ``conv_stem``, ``bn1`` and ``blocks``): teacher stage ``j``
  of the space is the output of ``blocks[j]`` (for the ``dna`` space and EfficientNet-B7, block ``i`` <->
  ``blocks[i + 1]``); the stages run in order and stop after the last one a block needs.
* any other CNN: ``stages=[module name, ...]`` (one per block); the model runs with forward hooks and stops as
  soon as the last of those modules has produced its output.

The stage channels and strides are checked against the space when the teacher is built.

The embedded run's teacher, ``dna_mini_teacher``, is a small EfficientNet registered with timm whose stages
match the ``dna_mini`` space; ``train_teacher`` trains it on the digits in a minute or two of CPU.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet
from torch import nn

from ._io import atomic_save, load_checkpoint
from .space import SearchSpace

__all__ = ["Teacher", "build_embedded_teacher", "train_teacher", "evaluate_teacher", "load_weights",
           "teacher_arch_def", "dna_mini_teacher"]

_logger = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the last stage hook to end a hooked forward early (the rest of the model is not needed)."""


def _is_efficientnet_like(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks")) and isinstance(
        model.blocks, (nn.Sequential, nn.ModuleList))


def load_weights(model: nn.Module, checkpoint: str | os.PathLike) -> None:
    """Load a checkpoint into ``model`` (strict): a ``.safetensors`` file or a ``torch.save``-d state_dict.

    A state_dict may be nested under ``state_dict``, ``model`` or ``state_dict_ema`` and may carry the ``module.``
    prefix of DDP; ``torch.load`` runs with ``weights_only=True``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds no state_dict, or its keys / shapes do not fit the model.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint {str(path)!r} does not exist: pass the path of a safetensors "
                                "file or a torch state_dict")
    state = load_checkpoint(path, what="teacher checkpoint", fix="restore the file or point at another one")
    if isinstance(state, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"teacher checkpoint {str(path)!r} holds no state_dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"teacher checkpoint {str(path)!r} does not fit the teacher model "
                         f"{type(model).__name__}: {e}") from None


def _create_timm(name: str, pretrained: bool | str, **kwargs) -> nn.Module:
    import timm

    if isinstance(pretrained, str):  # a pretrained tag: 'ns_jft_in1k' or a full 'model.tag' name
        name = pretrained if "." in pretrained else f"{name}.{pretrained}"
        pretrained = True
    try:
        return timm.create_model(name, pretrained=bool(pretrained), **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(f"unknown teacher model {name!r}: not a timm model name") from None
        if not pretrained:
            raise
        raise RuntimeError(f"could not load the pretrained weights of teacher {name!r} ({e}): the Hugging Face hub "
                           "is probably unreachable (offline); download them where there is network and pass "
                           "checkpoint=PATH instead") from None
    except OSError as e:  # connection errors of huggingface_hub / urllib
        if not pretrained:
            raise
        raise RuntimeError(f"could not download the pretrained weights of teacher {name!r} ({type(e).__name__}: "
                           f"{e}): the hub is unreachable (offline); pass checkpoint=PATH instead") from None


class Teacher(nn.Module):
    """A frozen teacher whose stage features feed and supervise the blocks of a search space.

    Args:
        model: a timm model name (``tf_efficientnet_b7``, ``dna_mini_teacher``, ...) or an ``nn.Module``. A module
            is used with the weights it has (unless ``checkpoint`` is given).
        space: the ``SearchSpace`` (or its name / path) whose blocks the teacher supervises.
        checkpoint: weights to load: a ``.safetensors`` file or a ``torch.save``-d state_dict.
        pretrained: for a model name, load timm's pretrained weights (``True`` or a tag such as ``"ns_jft_in1k"``);
            needs the Hugging Face hub.
        allow_random_teacher: allow a model name with neither ``checkpoint`` nor ``pretrained`` (random weights;
            for tests and timing only).
        stages: one module name per block (``model.get_submodule(name)``'s output is that block's target);
            default for EfficientNet-like models: ``blocks.{teacher_stage}`` of each block.
        train_bn: keep the teacher's BatchNorm layers in train mode (batch statistics); default eval mode.
        check_image_size: image side of the dry run that checks channels and strides against the space
            (default: a small multiple of the largest stage stride).

    Raises:
        ValueError: a stage's channels or stride do not match the space (naming both), a bad ``stages`` list, or
            a model name with no weights and ``allow_random_teacher=False``.
        RuntimeError: pretrained weights requested but the hub is unreachable.
    """

    def __init__(self, model: str | nn.Module, space: SearchSpace | str, *, checkpoint: str | os.PathLike | None = None,
                 pretrained: bool | str = False, allow_random_teacher: bool = False,
                 stages: Sequence[str] | None = None, train_bn: bool = False,
                 check_image_size: int | None = None) -> None:
        super().__init__()
        self.space = SearchSpace.load(space)
        if isinstance(model, str):
            if checkpoint is None and not pretrained and not allow_random_teacher:
                raise ValueError(
                    f"teacher {model!r} has no weights: pass checkpoint=PATH (safetensors or state_dict), "
                    "pretrained=True (needs the hub), or allow_random_teacher=True for a random teacher (tests only)")
            if checkpoint is not None and pretrained:
                raise ValueError("give the teacher either checkpoint=PATH or pretrained, not both")
            self.name = model
            model = _create_timm(model, pretrained if checkpoint is None else False)
        else:
            self.name = type(model).__name__
        if checkpoint is not None:
            load_weights(model, checkpoint)
        self.model = model
        self.train_bn = bool(train_bn)
        for p in self.model.parameters():
            p.requires_grad_(False)

        n = self.space.num_blocks
        if stages is None:
            if not _is_efficientnet_like(model):
                raise ValueError(f"teacher {self.name}: no built-in stage mapping (it is not an EfficientNet-like "
                                 "timm model with conv_stem/bn1/blocks); pass stages=[module name per block]")
            num_stages = len(model.blocks)
            for b in self.space.blocks:
                if b.teacher_stage >= num_stages:
                    raise ValueError(f"teacher {self.name} has stages blocks.0..{num_stages - 1}, but "
                                     f"{self.space.name} block {b.index} wants teacher stage {b.teacher_stage}")
            self.stage_names = [f"blocks.{b.teacher_stage}" for b in self.space.blocks]
            self._stage_index = [b.teacher_stage for b in self.space.blocks]
            self._sequential = True
        else:
            stages = [str(s) for s in stages]
            if len(stages) != n:
                raise ValueError(f"stages names {len(stages)} modules for the {n} blocks of {self.space.name}")
            mods = dict(model.named_modules())
            for s in stages:
                if s not in mods:
                    raise ValueError(f"teacher {self.name} has no module {s!r} (stages must be names from "
                                     "model.named_modules())")
            self.stage_names = stages
            self._stage_index = None
            self._sequential = False
            self._feats: dict[str, torch.Tensor] = {}
            self._want: int | None = None
            for k, s in enumerate(stages):
                mods[s].register_forward_hook(self._make_hook(k))
        self.train(False)
        self._check(check_image_size)

    # ------------------------------------------------------------------ forward
    def _make_hook(self, k: int):
        def hook(_module, _inp, out):
            if self._want is None:
                return
            self._feats[k] = out
            if len(self._feats) >= self._want:
                raise _StopForward
        return hook

    def train(self, mode: bool = True) -> Teacher:
        """The teacher stays in eval mode (frozen BN statistics) unless built with ``train_bn=True``: then
        ``train()`` puts the model in train mode as the authors' ``teacher.train()`` did (``teacher.bn=train``), so
        its BatchNorm layers normalize with batch statistics and update their running statistics.

        # NOTE the whole model, not only its BNs, as theirs: timm's EfficientNets have no active dropout or
        # drop-path in the stages by default (dropout sits in the classifier head, which the stage forward never runs)
        """
        super().train(mode)
        self.model.train(bool(mode) and self.train_bn)
        return self

    @torch.no_grad()
    def recalibrate_bn(self, calib: Sequence[torch.Tensor]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Recalibrate the teacher's BatchNorm statistics on ``calib`` (image batches), as the authors do at rating.

        Every BN's running statistics are reset and replaced by the cumulative average of the statistics of the
        ``calib`` batches (one batch: that batch's statistics alone, the authors' BN momentum 1); the teacher is left
        in eval mode with them (on a deep copy when the caller's teacher must stay untouched).

        Returns:
            ``block_pairs`` of every calibration batch, computed with batch statistics during the recalibration
            forward (the inputs the authors recalibrate each candidate's BN on).
        """
        if len(calib) == 0:
            raise ValueError("recalibrate_bn needs at least one calibration batch of images")
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        self.model.train(False)
        for bn in bns:
            bn.train(True)
        try:
            pairs = [self.block_pairs(x) for x in calib]
        finally:
            self.train(False)
        return pairs

    @torch.no_grad()
    def forward(self, images: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """The target feature of every block (of the first ``upto`` blocks when given), computed without grad.

        Block ``i``'s input is ``images`` for ``i == 0`` and output ``i - 1`` otherwise (see ``block_pairs``).
        """
        n = self.space.num_blocks if upto is None else int(upto)
        if not 0 < n <= self.space.num_blocks:
            raise ValueError(f"upto must be in 1..{self.space.num_blocks}, got {upto}")
        if self._sequential:
            m = self.model
            x = m.bn1(m.conv_stem(images))
            wanted = self._stage_index[:n]
            outs = []
            for j, blk in enumerate(m.blocks[: wanted[-1] + 1]):
                x = blk(x)
                if j in wanted:
                    outs.append(x)
            return outs
        self._feats, self._want = {}, n
        try:
            self.model(images)
        except _StopForward:
            pass
        finally:
            feats, self._feats, self._want = self._feats, {}, None
        missing = [self.stage_names[k] for k in range(n) if k not in feats]
        if missing:
            raise RuntimeError(f"teacher {self.name}: modules {missing} produced no output in the forward")
        return [feats[k] for k in range(n)]

    def block_pairs(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(input, target) of every block from one teacher forward; block 0's input is ``images``."""
        feats = self(images)
        return list(zip([images, *feats[:-1]], feats))

    # ------------------------------------------------------------------ checks
    def _check(self, image_size: int | None) -> None:
        reds = self.space.teacher.stage_reductions
        if image_size is None:
            r = max(reds)
            image_size = max(32, 2 * r)
        shapes = self.space.block_io_shapes(image_size)
        p = next(self.model.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        x = torch.zeros(1, 3, image_size, image_size, device=dev, dtype=dtype)
        feats = self(x)
        for b, f, (_, (c, h, _w)) in zip(self.space.blocks, feats, shapes):
            got_c, got_h = f.shape[1], f.shape[-2]
            got_stride = image_size / got_h
            want_stride = self.space.teacher.stage_reductions[b.teacher_stage]
            if got_c != c or got_h != h:
                raise ValueError(
                    f"teacher {self.name} stage {self.stage_names[b.index]!r} gives {got_c} channels at stride "
                    f"{got_stride:g}, but search space {self.space.name} block {b.index} (teacher stage "
                    f"{b.teacher_stage}) expects {c} channels at stride {want_stride}: use a teacher whose stages "
                    "match the space's teacher spec, or fix the space's teacher stages / the stages mapping")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, space={self.space.name!r}, stages={self.stage_names}"


# ---------------------------------------------------------------------------------------------- embedded teacher
def teacher_arch_def(stage_chs: Sequence[int], stage_reductions: Sequence[int], stem_stride: int = 2,
                     depths: Sequence[int] | None = None, exp_ratio: int = 4) -> list[list[str]]:
    """A timm arch_def of a small EfficientNet whose ``blocks[j]`` output ``stage_chs[j]`` at ``stage_reductions[j]``.

    Stage 0 is a depthwise-separable block, the others MBConv (kernel 3, SE 0.25); a stage whose stride is > 1
    downsamples in its first layer.

    Raises:
        ValueError: a reduction that does not follow from the previous one by a stride of 1 or 2.
    """
    depths = list(depths) if depths is not None else [1] + [2] * (len(stage_chs) - 1)
    arch, prev = [], stem_stride
    for j, (c, r) in enumerate(zip(stage_chs, stage_reductions)):
        s = r // prev
        if s not in (1, 2) or s * prev != r:
            raise ValueError(f"teacher stage {j}: reduction {r} does not follow {prev} by a stride of 1 or 2")
        if j == 0:
            arch.append([f"ds_r{depths[0]}_k3_s{s}_c{c}_se0.25"])
        else:
            arch.append([f"ir_r{depths[j]}_k3_s{s}_e{exp_ratio}_c{c}_se0.25"])
        prev = r
    return arch


# dna_mini's teacher spec (configs/spaces/dna_mini.yaml): checked against the space in build_embedded_teacher
_MINI_STAGES = ((16, 24, 32, 48, 64), (2, 2, 4, 8, 8))
_MINI_STEM, _MINI_HEAD = 16, 256


def _mini_cfg(**kwargs) -> dict[str, Any]:
    return {"num_classes": 10, "input_size": (3, 32, 32), "pool_size": (4, 4), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "first_conv": "conv_stem", "classifier": "classifier", **kwargs}


default_cfgs = generate_default_cfgs({"dna_mini_teacher": _mini_cfg()})


@register_model
def dna_mini_teacher(pretrained: bool = False, **kwargs) -> EfficientNet:
    """Small EfficientNet (about 0.2 M params) whose stages match the ``dna_mini`` space; the embedded teacher."""
    kwargs.setdefault("num_classes", 10)
    model_kwargs = dict(block_args=decode_arch_def(teacher_arch_def(*_MINI_STAGES)), stem_size=_MINI_STEM,
                        num_features=_MINI_HEAD, act_layer=nn.SiLU, **kwargs)
    return build_model_with_cfg(EfficientNet, "dna_mini_teacher", pretrained, **model_kwargs)


def build_embedded_teacher(space: SearchSpace | str = "dna_mini", num_classes: int = 10) -> EfficientNet:
    """The small EfficientNet teacher of the embedded run, with stages matching ``space.teacher``.

    ``dna_mini`` gives timm's ``dna_mini_teacher``; another space gets the same recipe built from its teacher spec.
    """
    space = SearchSpace.load(space)
    t = space.teacher
    if t.model == "dna_mini_teacher" and (t.stage_chs, t.stage_reductions) == _MINI_STAGES:
        import timm

        return timm.create_model("dna_mini_teacher", num_classes=num_classes)
    arch = teacher_arch_def(t.stage_chs, t.stage_reductions)
    return EfficientNet(block_args=decode_arch_def(arch), stem_size=_MINI_STEM, num_features=_MINI_HEAD,
                        act_layer=nn.SiLU, num_classes=num_classes)


@torch.no_grad()
def evaluate_teacher(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of a classifier over one pass of ``loader``."""
    was = model.training
    model.eval()
    correct = total = 0
    for images, labels in loader:
        logits = model(images.to(device))
        correct += int((logits.argmax(1) == labels.to(device)).sum())
        total += int(labels.numel())
    model.train(was)
    return correct / max(total, 1)


def train_teacher(model: nn.Module, train_loader: Iterable, val_loader: Iterable, *, epochs: int, lr: float,
                  device: str | torch.device, out_path: str | os.PathLike, weight_decay: float = 0.05,
                  label_smoothing: float = 0.1, progress: bool = False) -> float:
    """Train a classifier teacher (AdamW, cosine schedule per step) and save its state_dict at ``out_path``.

    The final checkpoint is written atomically. If ``out_path`` already exists it is loaded and only evaluated.
    Progress is kept in ``out_path + ".partial"`` after every epoch, so an interrupted run resumes there.

    Returns:
        Top-1 accuracy on ``val_loader``.
    """
    out_path, device = Path(out_path), torch.device(device)
    model.to(device)
    if out_path.exists():
        load_weights(model, out_path)
        return evaluate_teacher(model, val_loader, device)
    partial = out_path.with_name(out_path.name + ".partial")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    start = 0
    if partial.exists():
        st = load_checkpoint(partial, what="partial teacher checkpoint",
                             fix="delete it to train the teacher from scratch")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start = int(st["epoch"])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=start, desc="teacher", unit="epoch")
    for epoch in range(start, epochs):
        model.train()
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        for step, (images, labels) in enumerate(train_loader):
            loss = F.cross_entropy(model(images.to(device)), labels.to(device), label_smoothing=label_smoothing)
            if not torch.isfinite(loss):  # stop before the step that would spoil the weights
                kept = f"{partial} holds the last complete epoch" if partial.exists() else "nothing was saved yet"
                raise FloatingPointError(f"teacher training: loss is {loss.item()} at epoch {epoch} step {step}: "
                                         f"lower the teacher's lr or check the data ({kept})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                      "epoch": epoch + 1}, partial)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.3f}")
    if bar is not None:
        bar.close()
    atomic_save(model.state_dict(), out_path)
    partial.unlink(missing_ok=True)
    return evaluate_teacher(model, val_loader, device)
