"""What every backend shares: epochs and ``set_epoch``, sharding by rank, batch counts, normalization."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875


def val_resize_size(image_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> int:
    """Shorter side before the center crop in eval: ``floor(image_size / crop_pct)`` (224 -> 256)."""
    return int(math.floor(image_size / crop_pct))


def shard_indices(n: int, *, rank: int, world_size: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """Indices (into a data set of ``n`` samples) that ``rank`` reads in ``epoch``.

    Shuffled (train): one permutation of all ``n`` seeded by ``(seed, epoch)`` (identical on every rank), cut
    into ``world_size`` equal contiguous parts; the ``n % world_size`` samples at its end are left out this
    epoch so that every rank takes the same number of steps. Not shuffled (val): the contiguous block
    ``[rank * n // world_size, (rank + 1) * n // world_size)``, so the ranks together read every sample exactly
    once (their sizes differ by at most one).
    """
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        per = n // world_size
        return order[rank * per : (rank + 1) * per]
    return np.arange(rank * n // world_size, (rank + 1) * n // world_size)


def normalize_uint8(images: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 NCHW in [0, 255] -> ``dtype`` on ``device``, normalized with ImageNet mean / std (math in fp32)."""
    x = images.to(device, non_blocking=True).float()
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).mul_(255).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).mul_(255).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).to(dtype)


class BatchLoader:
    """An epoch-based iterable of ``(images, labels)`` batches, sharded by rank.

    ``len(loader)`` is the number of batches of one epoch on this rank. Each ``iter(loader)`` runs epoch
    ``loader.epoch`` and then advances it by one; ``set_epoch(e)`` picks the epoch explicitly (as with
    ``DistributedSampler``). The order and the augmentation of an epoch depend only on ``(seed, epoch)``.

    Subclasses implement ``_iter_epoch(indices, epoch)``.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        num_classes: int = 0,
        source: str = "",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise ValueError(f"dtype must be a floating type, got {dtype}")
        self.dataset_size = int(num_samples)
        self.batch_size = int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle, self.drop_last, self.seed = bool(shuffle), bool(drop_last), int(seed)
        self.device, self.dtype = torch.device(device), dtype
        self.num_classes = int(num_classes)
        self.source = source
        self.epoch = 0
        self.skipped: list[str] = []  # paths of corrupt images skipped so far (skip_corrupt=True)
        self._reported_skips = False
        if len(self) == 0:
            raise ValueError(
                f"{source or 'data set'}: {self.num_local_samples} samples on rank {rank} of {world_size} give no "
                f"batch of {batch_size}{' (drop_last)' if self.drop_last else ''}: lower batch_size or add data"
            )

    @property
    def num_local_samples(self) -> int:
        """Samples this rank reads per epoch (before any corrupt image is skipped)."""
        if self.shuffle:
            return self.dataset_size // self.world_size
        r, w, n = self.rank, self.world_size, self.dataset_size
        return (r + 1) * n // w - r * n // w

    def __len__(self) -> int:
        n = self.num_local_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch that the next ``iter()`` runs (its shuffle order and augmentation)."""
        self.epoch = int(epoch)

    def local_indices(self, epoch: int) -> np.ndarray:
        """Indices into the whole data set that this rank reads in ``epoch``, in order."""
        idx = shard_indices(
            self.dataset_size, rank=self.rank, world_size=self.world_size, shuffle=self.shuffle, seed=self.seed,
            epoch=epoch,
        )
        return idx[: len(self) * self.batch_size] if self.drop_last else idx

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self._iter_epoch(self.local_indices(epoch), epoch)

    def _iter_epoch(self, indices: np.ndarray, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def _report_skipped(self, new: list[str]) -> None:
        """Records skipped corrupt images; warns once (the first time any are skipped) with their count."""
        seen = set(self.skipped)
        fresh = list(dict.fromkeys(p for p in new if p not in seen))
        self.skipped.extend(fresh)
        if fresh and not self._reported_skips:
            self._reported_skips = True
            warnings.warn(
                f"skipped {len(fresh)} corrupt image(s) in {self.source or 'the data set'} "
                f"(skip_corrupt=True), e.g. {fresh[0]!r}; loader.skipped lists them",
                RuntimeWarning,
                stacklevel=3,
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(samples={self.dataset_size}, batches={len(self)}, batch_size={self.batch_size}, "
            f"rank={self.rank}/{self.world_size}, shuffle={self.shuffle}, device={self.device}, dtype={self.dtype})"
        )
