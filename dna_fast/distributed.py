"""torchrun / DDP helpers: process group from the environment, rank queries, collectives that also work alone.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) ``init_distributed`` joins the process group: NCCL when
CUDA is used, gloo on CPU. Without it every helper behaves as a world of one process, so the same code runs
single-process and distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo", "init_distributed", "is_distributed", "get_rank", "get_world_size", "is_main", "barrier",
    "broadcast_object", "broadcast_module", "all_reduce_mean", "cleanup",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, rank on this node, and the device it should use."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    """True when a process group of more than one process is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and when not distributed): the process that writes files and logs."""
    return get_rank() == 0


def init_distributed(device: str | torch.device | None = None, backend: str | None = None,
                     timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...).

    Args:
        device: ``"cuda"`` / ``"cpu"``; default CUDA when available. On CUDA the process uses ``cuda:LOCAL_RANK``.
        backend: process group backend; default ``nccl`` on CUDA, ``gloo`` on CPU.
        timeout_s: collective timeout.

    Returns:
        ``DistInfo``; a world of one (rank 0) when ``WORLD_SIZE`` is unset or 1 (no process group is made).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available: use device='cpu'")
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        import datetime

        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        kw: dict[str, Any] = {}
        if backend == "nccl":
            kw["device_id"] = dev
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kw)
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world_size, local_rank, dev)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``module``'s parameters and buffers from rank ``src`` to every rank (in place)."""
    if not is_distributed():
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=src)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over all ranks, in place (returns ``t``)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    return t


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
