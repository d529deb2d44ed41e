"""DDP with one process: a process group over NCCL on the GPU (gloo with ``--device cpu``), one training step of a
small conv net wrapped in DistributedDataParallel under bf16 autocast, and an all-reduce.

A world of one process averages each gradient over itself, so the DDP gradients must equal those of a plain copy of
the model run on the same batch; the all-reduce must return its input. Prints one ``ddp-smoke:`` line and exits 0
when all of that holds, 1 otherwise. ``check.py`` runs it in its gpu_tests stage.
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import sys
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args(argv)

    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415
    from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

    if args.device == "cuda" and not torch.cuda.is_available():
        print("ddp-smoke: no CUDA device is visible; run with --device cpu to check gloo instead", file=sys.stderr)
        return 1
    dev = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    t0 = time.perf_counter()
    kw = {"device_id": dev} if backend == "nccl" else {}
    dist.init_process_group(backend, rank=0, world_size=1, **kw)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten(), nn.Linear(16, 10)).to(dev)
        plain = copy.deepcopy(model)
        ddp = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        x = torch.randn(8, 8, 16, 16, device=dev)
        y = torch.randint(0, 10, (8,), device=dev)
        for m in (ddp, plain):
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(m(x), y)
            loss.backward()
        worst = max(((a.grad - b.grad).abs().max() / b.grad.abs().max().clamp_min(1e-12)).item()
                    for a, b in zip(model.parameters(), plain.parameters()))
        t = torch.arange(4.0, device=dev) + 1
        dist.all_reduce(t)
        reduce_ok = torch.equal(t.cpu(), torch.arange(4.0) + 1)
        seconds = time.perf_counter() - t0
    finally:
        dist.destroy_process_group()
    ok = worst <= 1e-5 and reduce_ok and bool(torch.isfinite(loss))
    print(f"ddp-smoke: {'ok' if ok else 'FAILED'} backend={backend} device={dev} loss={loss.item():.4f} "
          f"max_rel_grad_diff={worst:.2e} all_reduce={'ok' if reduce_ok else 'wrong'} seconds={seconds:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
