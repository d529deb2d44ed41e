"""Stand-alone training of one candidate block: the ground truth of the block-level check.

The teacher's features for every block from one pass (:func:`block_features`), then each candidate trained alone
from fresh weights on them (:func:`train_block_candidate`), scored with the rating's ``loss`` definition.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


def block_features(teacher: nn.Module, loader: Any, blocks: Sequence[int], num_images: int, device: Any
                   ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """block -> (block input, teacher target) for the first ``num_images`` images of ``loader`` (on CPU), for every
    block in ``blocks`` from one pass of the teacher."""
    blocks = sorted(set(int(b) for b in blocks))
    xs: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
    ts: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
    n = 0
    loader.set_epoch(0)
    teacher.eval()
    with torch.no_grad():
        for images, _ in loader:
            images = images.to(device)
            feats = teacher(images, upto=blocks[-1] + 1)
            for i in blocks:
                xs[i].append((images if i == 0 else feats[i - 1]).float().cpu())
                ts[i].append(feats[i].float().cpu())
            n += len(images)
            if n >= num_images:
                break
    return {i: (torch.cat(xs[i])[:num_images], torch.cat(ts[i])[:num_images]) for i in blocks}


def _fresh_block(space: Any, i: int, seed: int) -> nn.Module:
    """Block ``i`` as ``Supernet`` builds it (block 0 with the student stem), freshly initialized from ``seed``."""
    from ..nn import ChoiceBlock, StudentStem, resolve_layers

    torch.manual_seed(seed)
    act_layer, norm_layer = resolve_layers(space.act, None)
    stem = StudentStem(space.stem, 3, act_layer, norm_layer) if i == 0 else None
    return ChoiceBlock(space.blocks[i], stem, act_layer=act_layer, norm_layer=norm_layer, drop_path_rate=0.0)


def train_block_candidate(space: Any, i: int, candidate: str, train: tuple[torch.Tensor, torch.Tensor],
                          val: tuple[torch.Tensor, torch.Tensor], *, steps: int, lr: float, batch_size: int,
                          seed: int, device: Any = "cpu", channels_last: bool = True) -> dict[str, Any]:
    """Trains one candidate of block ``i`` alone from fresh weights on teacher features; its validation loss.

    Adam (lr with cosine decay to 0 over ``steps``), MSE to the teacher target, batches drawn from a seeded
    permutation of ``train`` epoch after epoch. ``val_loss`` is the rating's ``loss`` definition: total squared
    error / number of target elements, BN in eval mode. ``channels_last``: the block and its inputs in channels-last
    memory format (the same arithmetic up to float rounding; on a CPU its convolutions' backward pass runs about
    1.5x faster, measured on the study's blocks).
    """
    device = torch.device(device)
    cand = space.parse(i, candidate)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    block = _fresh_block(space, i, seed).to(device, memory_format=fmt)
    params = [p for m in block.path(cand) for p in m.parameters()]
    if getattr(block, "stem", None) is not None:
        params += list(block.stem.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps)))
    x_tr, t_tr = train
    n = len(x_tr)
    gen = torch.Generator().manual_seed(seed)
    order, pos, losses = torch.randperm(n, generator=gen), 0, []
    t0, c0 = time.perf_counter(), time.process_time()
    block.train()
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        b = order[pos : pos + batch_size]
        pos += batch_size
        out = block(x_tr[b].to(device).contiguous(memory_format=fmt), cand)
        loss = nn.functional.mse_loss(out, t_tr[b].to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"rank_check: block {i} candidate {candidate} diverged (loss {loss.item()}): "
                                     "lower rank_check.block_lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    block.eval()
    sse, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(val[0]), 256):
            out = block(val[0][s : s + 256].to(device).contiguous(memory_format=fmt), cand)
            t = val[1][s : s + 256].to(device)
            sse += float(((out.float() - t) ** 2).sum())
            count += t.numel()
    tail = losses[-max(1, steps // 10):]
    return {"block": i, "candidate": candidate, "cell": cand.cell, "seed": seed, "steps": steps, "lr": lr,
            "channels_last": bool(channels_last),
            "val_loss": sse / count, "train_loss_end": float(np.mean(tail)) if tail else None,
            "seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 2)}
