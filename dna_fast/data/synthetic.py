"""Synthetic batches: random normalized-looking images and random labels, made on the device (for benchmarks)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ._base import BatchLoader


class SyntheticLoader(BatchLoader):
    """Random ``N(0, 1)`` images of shape ``(batch_size, 3, image_size, image_size)`` and uniform labels.

    One batch is generated per epoch (seeded by ``(seed, epoch, rank)``) and yielded ``len(loader)`` times, so
    the loader costs nothing per step; do not modify the yielded tensors in place.

    Args:
        num_samples: Samples of the whole (virtual) data set, split over ranks like val data.
        num_classes: Labels are drawn from ``[0, num_classes)``.
        Other args: as :func:`dna_fast.data.build_loader`.
    """

    def __init__(
        self,
        *,
        batch_size: int,
        image_size: int = 224,
        num_samples: int = 1024,
        num_classes: int = 1000,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            num_samples, batch_size=batch_size, rank=rank, world_size=world_size, shuffle=False, drop_last=drop_last,
            seed=seed, device=device, dtype=dtype, num_classes=num_classes, source="synthetic",
        )
        self.image_size, self.classes = int(image_size), [str(i) for i in range(num_classes)]

    def _iter_epoch(self, indices: np.ndarray, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed = int(np.random.default_rng([self.seed, epoch, self.rank]).integers(2**62))
        g = torch.Generator(device=self.device).manual_seed(seed)
        s, n = self.image_size, min(self.batch_size, len(indices))
        images = torch.randn(n, 3, s, s, generator=g, device=self.device).to(self.dtype)
        labels = torch.randint(0, self.num_classes, (n,), generator=g, device=self.device)
        for start in range(0, len(indices), self.batch_size):
            take = min(self.batch_size, len(indices) - start)
            yield images[:take], labels[:take]
