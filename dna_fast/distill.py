"""Block-wise distillation of the DNA supernet: every block trained from one teacher forward per batch.

DNA (Li et al., "Blockwisely Supervised Neural Architecture Search with Knowledge Distillation", CVPR 2020,
arXiv:1911.13053) trains supernet block ``i`` to map the teacher's feature after stage ``i - 1`` (the image for
block 0) to its feature after stage ``i`` with an MSE loss, one randomly sampled path per step. The blocks do not
depend on each other, so here one teacher forward per batch feeds all of them (the paper's code trained one
stage at a time and re-ran the teacher for each).

Defaults follow the paper's code: Adam per block with lr ``[0.002, 0.005, 0.005, 0.005, 0.005, 0.002]`` (first
and last block 0.002, the others 0.005 for any number of blocks), weight decay 1e-4, lr x 0.9 per epoch.

Run directory layout written here::

    run_dir/checkpoints/supernet_last.pt   supernet, optimizers, scaler, epoch / step, RNG states (atomic)
    run_dir/distill/log.csv                epoch, step, global_step, block, loss, lr
    run_dir/distill/tb/                    TensorBoard events (loss/block{i}, lr/block{i})

Paths are a pure function of ``(seed, block, global step)``, so every DDP rank samples the same ones and a
resumed run samples exactly what the uninterrupted run would have. The path sampler (:class:`PathSampler`) lives in
``_distill_sampler.py``, the log writer in ``_distill_logs.py``; both are re-exported here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as ddp
from ._augment import BatchAugment
from ._distill_logs import LOG_COLUMNS, _Logs
from ._distill_sampler import CELL_MODES, PathSampler
from ._io import atomic_save, atomic_write_json, load_checkpoint
from .space import Candidate, SearchSpace
from .supernet import Supernet

__all__ = ["distill", "load_supernet", "default_lrs", "PathSampler", "BlockTrainer", "BatchAugment",
           "CHECKPOINT_NAME", "CELL_STEPS_NAME", "CELL_MODES", "LOG_COLUMNS", "write_cell_steps"]

_logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "supernet_last.pt"
CELL_STEPS_NAME = "cell_steps.json"
_FORMAT_VERSION = 1


def default_lrs(num_blocks: int) -> list[float]:
    """The paper's per-block learning rates for ``num_blocks`` blocks: 0.002 at both ends, 0.005 in between."""
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    if num_blocks == 1:
        return [0.002]
    return [0.002] + [0.005] * (num_blocks - 2) + [0.002]


def _decay_groups(params: Sequence[nn.Parameter], weight_decay: float, decay_1d: bool) -> list[dict[str, Any]]:
    """Adam parameter groups: one group decayed by ``weight_decay``, or (``decay_1d=False``, the authors') the
    parameters with >= 2 dims decayed and the 1-dim ones (BN weights and biases, biases) not."""
    params = list(params)
    if decay_1d:
        return [{"params": params}]
    return [{"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def _resolve_amp(amp: str | None, device: torch.device) -> str:
    if amp is None:
        return "bf16" if device.type == "cuda" else "fp32"
    amp = str(amp).lower()
    if amp not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"amp must be 'bf16', 'fp16', 'fp32' or None, got {amp!r}")
    return amp


class BlockTrainer:
    """One optimizer per block and the training step: teacher forward once, then every block on its pair.

    Args:
        supernet: the supernet (already on ``device``).
        teacher: a ``Teacher`` of the same space (already on ``device``).
        lrs: learning rate per block.
        weight_decay: Adam weight decay (L2, as in the paper's code).
        weight_decay_1d: also decay 1-dim parameters (BN weights and biases, biases); False: only parameters with
            >= 2 dims, as the authors' optimizer does.
        loss: ``"mse"`` or ``"rel_mse"`` (MSE divided by the target's variance).
        block_weights: factor of each block's loss (gradient scale); default 1.
        amp: ``"bf16"``, ``"fp16"`` (with a GradScaler) or ``"fp32"``.
        device: the device.
        channels_last: feed the teacher and blocks channels_last tensors.
    """

    def __init__(self, supernet: Supernet, teacher: nn.Module, lrs: Sequence[float], *, weight_decay: float = 1e-4,
                 loss: str = "mse", block_weights: Sequence[float] | None = None, amp: str = "fp32",
                 device: torch.device | str = "cpu", channels_last: bool = False,
                 weight_decay_1d: bool = True) -> None:
        n = supernet.num_blocks
        if loss not in ("mse", "rel_mse"):
            raise ValueError(f"loss must be 'mse' or 'rel_mse', got {loss!r}")
        if len(lrs) != n:
            raise ValueError(f"lr has {len(lrs)} values for the {n} blocks of {supernet.space.name}")
        weights = [1.0] * n if block_weights is None else [float(w) for w in block_weights]
        if len(weights) != n:
            raise ValueError(f"block_weights has {len(weights)} values for {n} blocks")
        self.supernet, self.teacher = supernet, teacher
        self.device = torch.device(device)
        self.loss, self.weights, self.amp, self.channels_last = loss, weights, amp, channels_last
        self.base_lrs = [float(x) for x in lrs]
        kw: dict[str, Any] = {"fused": True} if self.device.type == "cuda" else {}
        self.optimizers = [torch.optim.Adam(_decay_groups(supernet.block_parameters(i), weight_decay, weight_decay_1d),
                                            lr=self.base_lrs[i], weight_decay=weight_decay, **kw) for i in range(n)]
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == "fp16" else None
        self._dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def autocast(self):
        if self._dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._dtype)

    def set_epoch_lr(self, epoch: int, lr_decay: float) -> list[float]:
        lrs = [lr * lr_decay ** epoch for lr in self.base_lrs]
        for opt, lr in zip(self.optimizers, lrs):
            for g in opt.param_groups:
                g["lr"] = lr
        return lrs

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def criterion(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out, target = out.float(), target.float()
        loss = F.mse_loss(out, target)
        if self.loss == "rel_mse":
            loss = loss / target.var().clamp_min(1e-12)
        return loss

    def backward_block(self, i: int, x: torch.Tensor, target: torch.Tensor, candidate: Candidate) -> torch.Tensor:
        """Forward and backward of block ``i``'s path; returns the (unweighted) loss, detached."""
        with self.autocast():
            out = self.supernet.forward_block(i, x, candidate)
        loss = self.criterion(out, target)
        scaled = loss * self.weights[i]
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        scaled.backward()
        return loss.detach()

    def teacher_features(self, images: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        with torch.no_grad(), self.autocast():
            return self.teacher(images, upto=upto)

    def forward_backward(self, images: torch.Tensor, candidates: Sequence[Candidate | Sequence[Candidate] | None],
                         blocks: Sequence[int] | None = None) -> torch.Tensor:
        """One teacher forward, then forward + backward of every block in ``blocks``: of its one path, or of each of
        its paths (a list: one per cell with parallel cells; each path's loss is backpropagated on its own); the
        losses (one per block, the mean over its paths)."""
        blocks = range(self.supernet.num_blocks) if blocks is None else blocks
        feats = self.teacher_features(images, upto=max(blocks) + 1)
        inputs = [images, *feats[:-1]]
        losses = []
        for i in blocks:
            paths = candidates[i] if isinstance(candidates[i], (list, tuple)) else [candidates[i]]
            losses.append(torch.stack([self.backward_block(i, inputs[i], feats[i], p) for p in paths]).mean())
        return torch.stack(losses)

    def reduce(self, losses: torch.Tensor, blocks: Sequence[int]) -> torch.Tensor:
        """Average the gradients of the trained blocks and the losses over DDP ranks (one all-reduce)."""
        if not ddp.is_distributed():
            return losses
        grads = [p.grad for i in blocks for p in self.supernet.block_parameters(i) if p.grad is not None]
        flat = torch.cat([losses.float().reshape(-1), *[g.float().reshape(-1) for g in grads]])
        ddp.all_reduce_mean(flat)
        offset = losses.numel()
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[: losses.numel()].to(losses.dtype)

    def optimizer_step(self, blocks: Sequence[int]) -> None:
        for i in blocks:
            opt = self.optimizers[i]
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # torch.compile wraps modules as `_orig_mod`; checkpoints always hold the plain names
    return {k.replace("._orig_mod", ""): v for k, v in state.items()}


def load_supernet(run_dir: str | os.PathLike, space: SearchSpace | str | None = None, *,
                  device: str | torch.device = "cpu", **supernet_kwargs) -> Supernet:
    """The distilled supernet of a run directory (``checkpoints/supernet_last.pt``), in eval mode.

    Args:
        run_dir: the run directory ``distill`` wrote.
        space: the search space (default: the space name stored in the checkpoint).
        device: where to put it.
        **supernet_kwargs: passed to ``Supernet`` (``norm_layer``, ...) when the run used non-defaults.

    Raises:
        FileNotFoundError: the run has no supernet checkpoint yet (run the distill stage first).
        ValueError: the checkpoint does not fit the space.
    """
    path = Path(run_dir) / "checkpoints" / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no distilled supernet at {str(path)!r}: run the distill stage for this run "
                                "directory first")
    ckpt = load_checkpoint(path, what="supernet checkpoint", fix="run the distill stage again (delete it first)")
    if space is None:
        space = ckpt["config"].get("space_source") or ckpt["config"]["space"]
    state = _strip_prefix(ckpt["supernet"])
    supernet_kwargs.setdefault("cell_stems", any(k.startswith("blocks.0.stems.") for k in state))
    supernet = Supernet(space, **supernet_kwargs)
    try:
        supernet.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"the supernet checkpoint {str(path)!r} (space {ckpt['config'].get('space')!r}) does not "
                         f"fit search space {supernet.space.name!r}: {e}") from None
    return supernet.to(device).eval()


# ---------------------------------------------------------------------------------------------- the loop
def _count_cell_steps(sampler: PathSampler, steps: int) -> list[list[int]]:
    """The steps each cell got in the first ``steps`` global steps (for checkpoints written before they were kept)."""
    counts = [[0] * len(b.cells) for b in sampler.space.blocks]
    for i in range(len(counts)):
        for step in range(steps):
            for c in sampler.paths(i, step):
                counts[i][c.cell] += 1
    return counts


def write_cell_steps(run_dir: str | os.PathLike, space: SearchSpace, cell_steps: Sequence[Sequence[int]],
                     cells: str) -> Path:
    """``distill/cell_steps.json``: how many steps each cell of each block trained (``{"block0": {"d1w16": n}}``)."""
    path = Path(run_dir) / "distill" / CELL_STEPS_NAME
    data = {"cells": cells, "steps": {f"block{i}": {b.cells[c].label: int(n) for c, n in enumerate(cell_steps[i])}
                                      for i, b in enumerate(space.blocks)}}
    atomic_write_json(path, data)
    return path


def _config(supernet: Supernet, lrs, weight_decay, lr_decay, sampling, cells, loss, block_weights, seed, world,
            protocol: dict[str, Any]) -> dict:
    return {
        "space": supernet.space.name, "space_source": supernet.space.source, "num_blocks": supernet.num_blocks,
        "lr": [float(x) for x in lrs], "weight_decay": float(weight_decay), "lr_decay": float(lr_decay),
        "sampling": sampling, "cells": cells, "cell_stems": bool(supernet.cell_stems), "loss": loss,
        "block_weights": None if block_weights is None else [float(w) for w in block_weights],
        "seed": int(seed), "world_size": int(world), **protocol,
    }


_RESUME_KEYS = ("space", "num_blocks", "lr", "weight_decay", "lr_decay", "sampling", "cells", "cell_stems", "loss",
                "block_weights", "seed", "world_size", "weight_decay_1d", "lr_epoch_offset", "teacher_bn",
                "color_jitter", "random_erasing")
# the protocol switches' values in checkpoints written before they existed
_RESUME_DEFAULTS = {"weight_decay_1d": True, "lr_epoch_offset": 0, "teacher_bn": "eval", "color_jitter": 0.0,
                    "random_erasing": 0.0, "cells": "shared", "cell_stems": False}


def _compile_ops(supernet: Supernet, backend: str = "inductor") -> None:
    import torch._dynamo

    # NOTE every op module is compiled on its own (in place, state_dict names unchanged): one graph per op shape
    # instead of one per sampled path; the dna space has ~100 op shapes, hence the larger recompile limits
    cfg = torch._dynamo.config
    cfg.cache_size_limit = max(cfg.cache_size_limit, 256)
    cfg.accumulated_cache_size_limit = max(cfg.accumulated_cache_size_limit, 1024)
    for block in supernet.blocks:
        for stem in [block.stem] if block.stems is None else block.stems:
            if stem is not None:
                stem.compile(backend=backend)
        for cell in block.cells:
            for layer in cell.layers:
                for op in layer.ops:
                    op.compile(backend=backend)


def distill(
    supernet: Supernet,
    teacher: nn.Module,
    loader: Iterable,
    run_dir: str | os.PathLike,
    *,
    epochs: int,
    lr: Sequence[float] | None = None,
    weight_decay: float = 1e-4,
    lr_decay: float = 0.9,
    sampling: str = "uniform",
    cells: str = "shared",
    loss: str = "mse",
    block_weights: Sequence[float] | None = None,
    amp: str | None = None,
    channels_last: bool | None = None,
    compile: bool | str = False,
    checkpoint_every_steps: int = 0,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_steps_per_epoch: int | None = None,
    log_every: int = 10,
    resume: bool = True,
    tensorboard: bool = True,
    sync_bn: bool = False,
    weight_decay_1d: bool = True,
    lr_epoch_offset: int = 0,
    augment: BatchAugment | None = None,
) -> dict[str, Any]:
    """Distill every block of ``supernet`` from ``teacher``: one teacher forward per batch trains all blocks.

    Args:
        supernet: the ``Supernet`` to train (moved to ``device``, trained in place).
        teacher: a ``Teacher`` of the same space (frozen; moved to ``device``).
        loader: iterable of ``(images, labels)`` batches with ``len()`` and, optionally, ``set_epoch(e)``. Under
            DDP it must already be sharded for this rank (``build_loader(rank=..., world_size=...)``).
        run_dir: run directory (see the module docstring for what is written).
        epochs: total epochs; a run that already finished some resumes and trains only the rest.
        lr: per-block learning rates (default ``default_lrs(num_blocks)``).
        weight_decay: Adam weight decay.
        lr_decay: lr factor per epoch (lr of epoch e = lr x lr_decay ** e).
        sampling: ``"uniform"`` or ``"fair"`` (see ``PathSampler``).
        cells: ``"shared"``: each step trains one path per block, so a block's cells share its steps.
            ``"parallel"``: each step trains one path of every cell of every block on the same teacher features, so
            every cell gets the full step budget, as in the authors' one supernet per depth, from one teacher pass
            (block 0 with several cells needs ``Supernet(..., cell_stems=True)``: a stem per cell). The steps each
            cell got are written to ``distill/cell_steps.json``.
        loss: ``"mse"`` or ``"rel_mse"`` (MSE / variance of the target).
        block_weights: factor on each block's loss.
        amp: ``"bf16"`` (default on GPU), ``"fp16"`` (with a GradScaler) or ``"fp32"`` / None on CPU.
        channels_last: default True on GPU.
        compile: ``torch.compile`` every op module of the supernet (and the stem); a string picks the backend
            (default ``"inductor"``).
        checkpoint_every_steps: also checkpoint every N steps within an epoch (0: at epoch ends only).
        seed: seeds path sampling (``PathSampler``) and the torch RNG of a fresh run.
        device: default CUDA when available (``cuda:LOCAL_RANK`` under torchrun), else CPU.
        progress: tqdm progress bar (main rank) with each block's running loss.
        max_steps_per_epoch: cut every epoch after this many steps.
        log_every: write a log.csv row per block every N steps (mean loss over them) and at every epoch end.
        resume: continue from ``run_dir/checkpoints/supernet_last.pt`` if it exists (else start over).
        tensorboard: also write TensorBoard events.
        sync_bn: under DDP on GPU, convert the supernet's BatchNorm layers to synchronized BatchNorm.
        weight_decay_1d: also decay 1-dim parameters; False: only those with >= 2 dims (the authors').
        lr_epoch_offset: epoch e runs at ``lr * lr_decay ** (e + lr_epoch_offset)`` (the authors: 1, their first
            epoch already at 0.9 x lr).
        augment: a ``BatchAugment`` applied to every batch on the device (the authors' colour jitter and random
            erasing), seeded by the global step.

    The teacher's BatchNorm follows the teacher: a ``Teacher`` built with ``train_bn=True`` (``teacher.bn=train``,
    the authors') normalizes with batch statistics during distillation; otherwise it stays in eval mode.

    Returns:
        ``{"block_losses": mean loss of each block over the last epoch trained, "epoch": epochs done,
        "global_step", "trained_epochs": epochs trained by this call, "images_per_s": this call's throughput
        (all ranks), "resumed": bool, "checkpoint": path, "log": path}``.

    Raises:
        FloatingPointError: a NaN / inf loss (naming block, epoch and step); the last checkpoint is kept.
        ValueError: bad arguments, or a checkpoint in ``run_dir`` made with a different config.
    """
    run_dir = Path(run_dir)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    n = supernet.num_blocks
    space = supernet.space
    teacher_space = getattr(teacher, "space", None)
    if teacher_space is not None and [b.out_chs for b in teacher_space.blocks] != [b.out_chs for b in space.blocks]:
        raise ValueError(f"teacher space {teacher_space.name} does not match supernet space {space.name}")
    dev = torch.device(device) if device is not None else (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu"))
    amp = _resolve_amp(amp, dev)
    channels_last = dev.type == "cuda" if channels_last is None else bool(channels_last)
    lrs = default_lrs(n) if lr is None else [float(x) for x in lr]
    rank, world = ddp.get_rank(), ddp.get_world_size()
    main = rank == 0
    if cells == "parallel" and len(space.blocks[0].cells) > 1 and not supernet.cell_stems:
        raise ValueError(f"cells='parallel' trains every cell of block 0 as its own supernet, each with its own stem: "
                         f"build the supernet with Supernet({space.name!r}, cell_stems=True)")
    sampler = PathSampler(space, seed, sampling, cells)
    blocks = list(range(n))

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    supernet.to(dev, memory_format=fmt)
    teacher.to(dev, memory_format=fmt)
    if sync_bn and world > 1 and dev.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        supernet.blocks = convert_sync_batchnorm(supernet.blocks)
    trainer = BlockTrainer(supernet, teacher, lrs, weight_decay=weight_decay, loss=loss, block_weights=block_weights,
                           amp=amp, device=dev, channels_last=channels_last, weight_decay_1d=weight_decay_1d)
    teacher_bn = "train" if getattr(teacher, "train_bn", False) else "eval"
    protocol = {"weight_decay_1d": bool(weight_decay_1d), "lr_epoch_offset": int(lr_epoch_offset),
                "teacher_bn": teacher_bn, "color_jitter": augment.color_jitter if augment is not None else 0.0,
                "random_erasing": augment.random_erasing if augment is not None else 0.0}
    config = _config(supernet, lrs, weight_decay, lr_decay, sampling, cells, loss, block_weights, seed, world,
                     protocol)

    ckpt_path = run_dir / "checkpoints" / CHECKPOINT_NAME
    start_epoch = start_step = global_step = 0
    loss_sum = torch.zeros(n, dtype=torch.float64)
    loss_count = 0
    last_losses: list[float] = [math.nan] * n
    cell_steps = [[0] * len(b.cells) for b in space.blocks]
    resumed = resume and ckpt_path.is_file()
    if resumed:
        ckpt = load_checkpoint(ckpt_path, what="supernet checkpoint",
                               fix="delete it to distill from scratch, or pass resume=False")
        old = ckpt.get("config", {})
        diff = [k for k in _RESUME_KEYS if old.get(k, _RESUME_DEFAULTS.get(k)) != config[k]]
        if diff:
            raise ValueError(f"{str(ckpt_path)!r} was written with a different config ({', '.join(diff)}: "
                             f"{[old.get(k, _RESUME_DEFAULTS.get(k)) for k in diff]} != {[config[k] for k in diff]}): "
                             "use a new run_dir, "
                             "the same settings, or resume=False to start over")
        supernet.load_state_dict(_strip_prefix(ckpt["supernet"]))
        for opt, st in zip(trainer.optimizers, ckpt["optimizers"]):
            opt.load_state_dict(st)
        if trainer.scaler is not None and ckpt.get("scaler"):
            trainer.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        start_epoch, start_step, global_step = int(ckpt["epoch"]), int(ckpt["step"]), int(ckpt["global_step"])
        loss_sum, loss_count = ckpt["loss_sum"].double(), int(ckpt["loss_count"])
        last_losses = list(ckpt.get("block_losses", []))
        cell_steps = ckpt.get("cell_steps") or _count_cell_steps(sampler, global_step)
        if main:
            _logger.info("resuming %s at epoch %d step %d", ckpt_path, start_epoch, start_step)
    else:
        torch.manual_seed(seed)
        ddp.broadcast_module(supernet)
    if compile:
        _compile_ops(supernet, compile if isinstance(compile, str) else "inductor")

    steps_per_epoch = len(loader)  # type: ignore[arg-type]
    if max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, int(max_steps_per_epoch))
    result = {"epoch": start_epoch, "global_step": global_step, "trained_epochs": [], "resumed": resumed,
              "checkpoint": str(ckpt_path), "log": str(run_dir / "distill" / "log.csv"), "images_per_s": 0.0,
              "block_losses": last_losses, "cell_steps": cell_steps}
    if start_epoch >= epochs:
        return result

    logs = _Logs(run_dir, main, global_step if resumed else None, tensorboard)

    def save(epoch: int, step: int, complete_epoch: bool) -> None:
        logs.flush()
        if main:
            atomic_save({
                "version": _FORMAT_VERSION, "config": config, "supernet": _strip_prefix(supernet.state_dict()),
                "optimizers": [o.state_dict() for o in trainer.optimizers],
                "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
                "epoch": epoch, "step": step, "global_step": global_step, "rng": _rng_state(),
                "loss_sum": (torch.zeros(n, dtype=torch.float64) if complete_epoch else loss_sum).clone(),
                "loss_count": 0 if complete_epoch else loss_count,
                "block_losses": (loss_sum / max(loss_count, 1)).tolist(), "cell_steps": cell_steps,
            }, ckpt_path)
            write_cell_steps(run_dir, space, cell_steps, cells)
        ddp.barrier()

    bar = None
    total_steps = (epochs - start_epoch) * steps_per_epoch - start_step
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc="distill", unit="step", dynamic_ncols=True)
    supernet.train()
    teacher.train(teacher_bn == "train")  # a Teacher with train_bn: only its BNs in train mode
    images_seen, t0 = 0, time.perf_counter()
    running = [math.nan] * n
    try:
        for epoch in range(start_epoch, epochs):
            cur_lrs = trainer.set_epoch_lr(epoch + int(lr_epoch_offset), lr_decay)
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            it = iter(loader)
            skip = start_step if epoch == start_epoch else 0
            if epoch != start_epoch or start_step == 0:
                loss_sum, loss_count = torch.zeros(n, dtype=torch.float64), 0
            for _ in range(skip):  # NOTE the batches of a resumed epoch's done steps are read and dropped
                next(it)
            win_sum, win_count = torch.zeros(n, dtype=torch.float64), 0
            for step in range(skip, steps_per_epoch):
                try:
                    images = next(it)[0]
                except StopIteration:
                    break
                images = trainer.prepare(images)
                if augment is not None:
                    images = augment(images, global_step)
                cands = [sampler.paths(i, global_step) for i in blocks]
                losses = trainer.forward_backward(images, cands, blocks)
                losses = trainer.reduce(losses, blocks)
                vals = losses.double().cpu()
                bad = [i for i in blocks if not math.isfinite(float(vals[i]))]
                if bad:
                    i = bad[0]
                    trainer.zero_grad()
                    raise FloatingPointError(
                        f"non-finite distillation loss {float(vals[i])} in block {i} at epoch {epoch} step {step} "
                        f"(global step {global_step}, path {' / '.join(space.format(i, c) for c in cands[i])}): "
                        f"stopped; the last good "
                        f"checkpoint {str(ckpt_path)!r} is kept. Lower the block's lr, use amp='bf16'/'fp32', or "
                        "check the teacher / data")
                trainer.optimizer_step(blocks)
                for i in blocks:
                    for c in cands[i]:
                        cell_steps[i][c.cell] += 1
                global_step += 1
                images_seen += images.shape[0] * world
                loss_sum += vals
                loss_count += 1
                win_sum += vals
                win_count += 1
                running = [float(v) if math.isnan(r) else 0.9 * r + 0.1 * float(v) for r, v in zip(running, vals)]
                done = step + 1
                if done % max(1, log_every) == 0 or done == steps_per_epoch:
                    logs.write(epoch, done, global_step, (win_sum / win_count).tolist(), cur_lrs)
                    win_sum, win_count = torch.zeros(n, dtype=torch.float64), 0
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"ep {epoch} " + " ".join(f"b{i}={r:.4g}" for i, r in enumerate(running)))
                if checkpoint_every_steps and done % checkpoint_every_steps == 0 and done < steps_per_epoch:
                    save(epoch, done, False)
            if win_count:
                logs.write(epoch, done, global_step, (win_sum / win_count).tolist(), cur_lrs)
            result["block_losses"] = (loss_sum / max(loss_count, 1)).tolist()
            save(epoch + 1, 0, True)
            result["trained_epochs"].append(epoch)
            result["epoch"] = epoch + 1
            start_step = 0
    finally:
        if bar is not None:
            bar.close()
        logs.close()
    elapsed = time.perf_counter() - t0
    result["global_step"] = global_step
    result["images_per_s"] = images_seen / elapsed if elapsed > 0 else 0.0
    return result
