"""Retraining and evaluation of a fixed architecture with the DNA paper's recipe.

DNA (Li et al., CVPR 2020, arXiv:1911.13053) retrains found architectures like EfficientNet: RMSprop in
TensorFlow style (alpha 0.9, eps 1e-3, momentum 0.9), lr 0.016 per 256 images of the global batch, 5 linear
warm-up epochs, lr x 0.963 every 3 epochs, label smoothing 0.1, dropout 0.2, drop-path 0.2, an EMA of the weights
(0.9998) and weight decay 1e-5. Here: autocast (bf16) on GPU, channels_last, DDP when launched by torchrun,
an atomic checkpoint after every epoch and resume from the last complete one, top-1 / top-5 for the raw and the
EMA weights.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ._augment import BatchAugment
from ._io import atomic_save as save_atomic  # public name kept
from ._io import atomic_write, atomic_write_json, load_checkpoint
from .config import RetrainConfig

__all__ = [
    "lr_at", "effective_ema_decay", "build_optimizer", "evaluate", "train_model", "load_weights", "save_atomic",
    "RetrainResult",
]

CHECKPOINT = "last.pth"
METRICS = "metrics.json"


# ---------------------------------------------------------------------------------------------- recipe
def lr_at(step: int, steps_per_epoch: int, base_lr: float, warmup_epochs: float, decay_epochs: float,
          decay_rate: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    Linear warm-up from ``base_lr / warmup_steps`` to ``base_lr`` over ``warmup_epochs``, then the step decay
    ``base_lr * decay_rate ** floor(epoch / decay_epochs)`` counted from epoch 0 (as timm's step scheduler).
    """
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    epoch = step / steps_per_epoch
    return base_lr * decay_rate ** math.floor(epoch / decay_epochs + 1e-9)


def effective_ema_decay(cfg: RetrainConfig, total_steps: int) -> float:
    """The EMA decay a run uses: ``cfg.ema_decay``, or with ``cfg.ema_scale``
    ``min(ema_decay, max(0.5, 1 - 10 / total_steps))``.

    The paper's 0.9998 averages over ~5000 steps; a run of a few hundred steps would end with an EMA that is still
    mostly its random initialization, so the horizon is capped at a tenth of the run (and kept at >= 2 steps).
    """
    if cfg.ema_decay <= 0:
        return 0.0
    if not cfg.ema_scale:
        return cfg.ema_decay
    return min(cfg.ema_decay, max(0.5, 1.0 - 10.0 / max(total_steps, 1)))


def build_optimizer(model: nn.Module, cfg: RetrainConfig, global_batch: int) -> torch.optim.Optimizer:
    """RMSprop (TF style) with the lr scaled to the global batch; no weight decay on biases and norm weights."""
    from timm.optim import RMSpropTF

    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = cfg.lr_per_256 * global_batch / 256
    return RMSpropTF(groups, lr=lr, alpha=0.9, eps=1e-3, momentum=0.9)


# ---------------------------------------------------------------------------------------------- helpers
def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) \
        else model


def load_weights(path: str | os.PathLike, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """A state_dict from a file: a plain state_dict, a retrain checkpoint (``ema`` / ``model``), a dict with
    ``state_dict``, or ``.safetensors``; ``module.`` prefixes (DDP) are stripped. Loaded with ``weights_only``.

    Raises:
        FileNotFoundError: the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    sd = load_checkpoint(path, fix="restore the file or point at another one")
    if isinstance(sd, dict):
        keys = ("ema", "model", "state_dict", "model_ema", "state_dict_ema") if prefer_ema else \
            ("model", "state_dict", "ema")
        for k in keys:
            if isinstance(sd.get(k), dict):
                sd = sd[k]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"checkpoint {str(path)!r} holds no state_dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str, *, amp: bool = True,
             channels_last: bool = False) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of ``model`` over one pass of ``loader``.

    Under DDP every rank evaluates its shard and the counts are summed, so the result covers the whole split.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss sum, n
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(labels[:, None])
        sums[0] += hit[:, 0].sum()
        sums[1] += hit.any(dim=1).sum()
        sums[2] += nn.functional.cross_entropy(logits, labels, reduction="sum")
        sums[3] += labels.numel()
    if _world()[1] > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    n = max(sums[3].item(), 1.0)
    return {"top1": 100.0 * sums[0].item() / n, "top5": 100.0 * sums[1].item() / n, "loss": sums[2].item() / n,
            "n": int(sums[3].item())}


# ---------------------------------------------------------------------------------------------- training
class RetrainResult(dict):
    """Final metrics of a retraining run (a dict: ``top1``, ``top5``, ``ema_top1``, ``ema_top5``, ``acc``, ...)."""


def train_model(
    model: nn.Module,
    train_loader: Any,
    val_loader: Any,
    out_dir: str | os.PathLike,
    *,
    cfg: RetrainConfig,
    device: torch.device | str,
    meta: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> RetrainResult:
    """Trains ``model`` with the recipe of ``cfg``, resuming from ``out_dir/last.pth``; evaluates raw and EMA.

    Writes ``out_dir/last.pth`` (model, EMA, optimizer, epoch, step: atomic, after every ``checkpoint_every``
    epochs and at the end), ``out_dir/log.csv`` (one row per epoch) and, when done, ``out_dir/metrics.json``.
    A finished run (``metrics.json`` present) is not trained again: its metrics are returned.

    Args:
        model: the network (e.g. from :func:`dna_fast.models.build` with ``drop_rate`` / ``drop_path_rate``).
        train_loader, val_loader: loaders of :func:`dna_fast.data.build_loader` (``set_epoch``, ``len``).
        out_dir: where checkpoints and logs go.
        cfg: the recipe.
        device: where to train.
        meta: stored in ``metrics.json`` (architecture, costs, ...).
        log: one line per epoch.

    Returns:
        ``top1`` / ``top5`` of the raw weights, ``ema_top1`` / ``ema_top5`` of the EMA, and ``acc``: the EMA's
        top-1 when an EMA is kept, else the raw top-1 (chosen by the config, never by which is higher).
    """
    from timm.utils import ModelEmaV3

    out_dir = Path(out_dir)
    rank, world = _world()
    metrics_path = out_dir / METRICS
    if metrics_path.is_file():
        return RetrainResult(json.loads(metrics_path.read_text()))
    device = torch.device(device)
    use_amp = cfg.amp and device.type == "cuda"
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs
    augment = BatchAugment(cfg.color_jitter, cfg.random_erasing, seed=rank)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    global_batch = train_loader.batch_size * world
    optimizer = build_optimizer(model, cfg, global_batch)
    base_lr = optimizer.param_groups[0]["lr"]
    ema_decay = effective_ema_decay(cfg, total_steps)
    ema = ModelEmaV3(model, decay=ema_decay) if ema_decay > 0 else None
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    start_epoch, step, history = 0, 0, []
    ckpt_path = out_dir / CHECKPOINT
    if ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path, what="retrain checkpoint", map_location=device,
                             fix="delete it to retrain from scratch (the epochs it held are lost), or restore it")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if ema is not None and ck.get("ema") is not None:
            ema.module.load_state_dict(ck["ema"])
        start_epoch, step, history = int(ck["epoch"]), int(ck["step"]), list(json.loads(ck["history"]))
        if ck.get("rng") is not None:  # dropout / drop-path continue as if never interrupted
            torch.set_rng_state(ck["rng"].cpu())
        if ck.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(ck["cuda_rng"].cpu(), device)
        if rank == 0:
            log(f"  resumed from {ckpt_path} (epoch {start_epoch}, step {step})")
    train_model_ = model
    if world > 1:
        train_model_ = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                           else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()

    def save(epoch: int) -> None:
        if rank == 0:
            save_atomic({"model": model.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
                         "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                         "history": json.dumps(history), "rng": torch.get_rng_state(),
                         "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                        ckpt_path)
        if world > 1:
            dist.barrier()

    epoch = start_epoch
    while epoch < cfg.epochs and step < total_steps:
        train_model_.train()
        train_loader.set_epoch(epoch)
        t0, loss_sum, n = time.perf_counter(), 0.0, 0
        for images, labels in train_loader:
            if step >= total_steps:
                break
            lr = lr_at(step, steps_per_epoch, base_lr, cfg.warmup_epochs, cfg.decay_epochs, cfg.decay_rate)
            for g in optimizer.param_groups:
                g["lr"] = lr
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            images = augment(images, step)  # retrain.color_jitter / random_erasing (the identity when off)
            with autocast:
                loss = criterion(train_model_(images).float(), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"retrain: loss is {loss.item()} at step {step} (epoch {epoch}): lower "
                                         f"retrain.lr_per_256 or check the data; {ckpt_path} holds the last good epoch")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:  # timm counts updates from 1: the first update copies the weights, then decay
                ema.update(model, step=step + 1)
            loss_sum += loss.item()
            n += 1
            step += 1
        epoch += 1
        done = epoch >= cfg.epochs or step >= total_steps
        row = {"epoch": epoch, "step": step, "lr": lr if n else 0.0, "train_loss": loss_sum / max(n, 1),
               "seconds": round(time.perf_counter() - t0, 2), "val_top1": None, "val_top5": None, "val_loss": None}
        if done or epoch % cfg.checkpoint_every == 0:
            _sync_buffers(model, ema)
            row.update({f"val_{k}": v for k, v in evaluate(model, val_loader, device, amp=cfg.amp,
                                                              channels_last=cfg.channels_last).items() if k != "n"})
        history.append(row)
        if rank == 0:
            log("  epoch {epoch:3d}  loss {train_loss:.3f}  lr {lr:.2e}".format(**row)
                + (f"  val top-1 {row['val_top1']:.2f} %" if row["val_top1"] is not None else "")
                + f"  ({row['seconds']:.1f} s)")
            _write_csv(out_dir / "log.csv", history)
        if done or epoch % cfg.checkpoint_every == 0:
            save(epoch)

    _sync_buffers(model, ema)
    raw = evaluate(model, val_loader, device, amp=cfg.amp, channels_last=cfg.channels_last)
    res = RetrainResult(top1=raw["top1"], top5=raw["top5"], loss=raw["loss"], n_val=raw["n"], epochs=epoch,
                        steps=step, ema_decay=ema_decay, lr=base_lr, global_batch=global_batch)
    if ema is not None:
        e = evaluate(ema.module, val_loader, device, amp=cfg.amp, channels_last=cfg.channels_last)
        res.update(ema_top1=e["top1"], ema_top5=e["top5"], acc=e["top1"], acc_source="ema")
    else:
        res.update(ema_top1=None, ema_top5=None, acc=raw["top1"], acc_source="raw")
    res["params"] = sum(p.numel() for p in model.parameters())
    if meta:
        res.update(meta)
    if rank == 0:
        atomic_write_json(metrics_path, dict(res))
    return res


def _sync_buffers(model: nn.Module, ema: Any) -> None:
    """Under DDP the BN statistics drift apart per rank: give every rank rank 0's (what the checkpoint holds)."""
    if _world()[1] <= 1:
        return
    for m in (model, ema.module if ema is not None else None):
        for b in m.buffers() if m is not None else ():
            dist.broadcast(b, 0)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The whole log (rewritten each epoch, so a resumed run never repeats rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(f):
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    atomic_write(path, write, mode="w", newline="")
