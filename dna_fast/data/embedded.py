"""The embedded data set: scikit-learn's handwritten digits (1797 real 8x8 images, 10 classes), no download.

The data of the embedded default run. Images are scaled to [0, 1] (the raw values are 0-16), repeated to 3
channels, resized (bilinear) to ``image_size`` on the device one batch at a time, and normalized with the
ImageNet mean / std, so the same models and teachers run on it as on ImageNet-style folders.

Split (fixed, independent of ``seed``): a ``numpy.random.RandomState(0)`` permutation of the 1797 images; its
first :data:`VAL_SIZE` = 360 images are ``val``, the other :data:`TRAIN_SIZE` = 1437 are ``train``. The
whole set stays in device memory (8x8 floats: 46 KB).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ._base import IMAGENET_MEAN, IMAGENET_STD, BatchLoader

NUM_IMAGES = 1797
VAL_SIZE = 360
TRAIN_SIZE = NUM_IMAGES - VAL_SIZE
SPLIT_SEED = 0
CLASSES = [str(i) for i in range(10)]


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def split_indices(split: str) -> np.ndarray:
    """Indices into scikit-learn's digits of the fixed ``"train"`` or ``"val"`` split (sorted)."""
    order = np.random.RandomState(SPLIT_SEED).permutation(NUM_IMAGES)
    if split == "train":
        return np.sort(order[VAL_SIZE:])
    if split == "val":
        return np.sort(order[:VAL_SIZE])
    raise ValueError(f"embedded data has splits 'train' and 'val', got {split!r}")


class EmbeddedLoader(BatchLoader):
    """Digits batches (in memory, on ``device``); train shuffles per epoch, sharding as all backends.

    Args:
        split: ``"train"`` or ``"val"``.
        image_size: Output height = width (default 32).
        Other args: as :func:`dna_fast.data.build_loader`.
    """

    def __init__(
        self,
        *,
        split: str,
        batch_size: int,
        image_size: int = 32,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        shuffle: bool | None = None,
        drop_last: bool | None = None,
    ) -> None:
        self.indices = split_indices(split)
        train = split == "train"
        super().__init__(
            len(self.indices), batch_size=batch_size, rank=rank, world_size=world_size,
            shuffle=train if shuffle is None else shuffle, drop_last=train if drop_last is None else drop_last,
            seed=seed, device=device, dtype=dtype, num_classes=len(CLASSES), source=f"embedded digits ({split})",
        )
        self.image_size, self.classes = int(image_size), CLASSES
        images, labels = _digits()
        self.images = torch.from_numpy(images[self.indices]).to(self.device)  # (N, 8, 8) in [0, 1]
        self.labels = torch.from_numpy(labels[self.indices]).to(self.device)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def _iter_epoch(self, indices: np.ndarray, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.from_numpy(indices).to(self.device)
        for start in range(0, len(idx), self.batch_size):
            b = idx[start : start + self.batch_size]
            x = self.images[b].unsqueeze(1)
            if self.image_size != x.shape[-1]:
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
            x = (x.expand(-1, 3, -1, -1) - self._mean) / self._std
            yield x.to(self.dtype).contiguous(), self.labels[b]
