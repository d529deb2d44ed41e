"""Class-folder images through a torch ``DataLoader`` (PIL decode in worker processes), for machines without DALI.

(Named ``tv.py`` so that it never shadows the real ``torchvision`` package.)

Transforms, as in the DALI backend: train = random resized crop (area 0.08-1, aspect 3/4-4/3) to
``image_size`` + random horizontal flip; val = resize the shorter side to ``floor(image_size / crop_pct)`` and
center crop. Workers produce uint8 batches (pinned when the device is CUDA); conversion to float and ImageNet
normalization run on the target device. Each sample's augmentation is drawn from its own RNG seeded by
``(seed, epoch, rank, position)``, so an epoch is reproducible whatever the number of workers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ._base import DEFAULT_CROP_PCT, BatchLoader, normalize_uint8, val_resize_size
from ._folder import DataError, ImageList


def random_resized_crop_box(
    width: int, height: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """A ``(left, top, right, bottom)`` crop box: random area fraction and log-uniform aspect ratio.

    Ten tries; when none fits, a center crop with the aspect ratio clamped to ``ratio`` (torchvision's rule).
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            return x, y, x + w, y + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    x, y = (width - w) // 2, (height - h) // 2
    return x, y, x + w, y + h


class FolderDataset(Dataset):
    """Map-style data set over an :class:`ImageList`; items are keyed by ``(index, sample_seed)``.

    Returns ``(uint8 CHW tensor, label, None)``, or ``(None, label, path)`` for an unreadable image when
    ``skip_corrupt`` (else it raises :class:`DataError` naming the file).
    """

    def __init__(
        self, images: ImageList, *, train: bool, image_size: int, crop_pct: float = DEFAULT_CROP_PCT,
        skip_corrupt: bool = False, random_interpolation: bool = False,
    ) -> None:
        self.images, self.train, self.image_size = images, train, image_size
        self.random_interpolation = random_interpolation
        self.resize_size = val_resize_size(image_size, crop_pct)
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.images)

    def load(self, path: str, sample_seed: int):
        """Decodes and transforms one image to uint8 CHW."""
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
        s = self.image_size
        if self.train:
            rng = random.Random(sample_seed)
            box = random_resized_crop_box(im.width, im.height, rng)
            interp = Image.BILINEAR
            if self.random_interpolation and rng.random() < 0.5:  # timm's 'random': bilinear or bicubic
                interp = Image.BICUBIC
            im = im.resize((s, s), interp, box=box)
            if rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            r = self.resize_size
            w, h = im.size
            nw, nh = (r, max(1, round(h * r / w))) if w <= h else (max(1, round(w * r / h)), r)
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = math.floor((nw - s) / 2 + 0.5), math.floor((nh - s) / 2 + 0.5)  # half up, as DALI
            im = im.crop((left, top, left + s, top + s))
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)

    def __getitem__(self, key):
        index, sample_seed = key
        path, label = self.images.files[index], int(self.images.labels[index])
        try:
            return self.load(path, sample_seed), label, None
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for unreadable / corrupt files
            if self.skip_corrupt:
                return None, label, path
            raise DataError(
                f"cannot read image {path!r} ({type(e).__name__}: {e}): replace or delete the file, or pass "
                f"skip_corrupt=True"
            ) from e


def _collate(samples):
    good = [s for s in samples if s[0] is not None]
    bad = [s[2] for s in samples if s[0] is None]
    images = torch.stack([s[0] for s in good]) if good else torch.empty(0, dtype=torch.uint8)
    labels = torch.tensor([s[1] for s in good], dtype=torch.int64)
    return images, labels, bad


class _EpochSampler(Sampler):
    """Yields the ``(index, sample_seed)`` keys of the current epoch (set by the loader before each epoch)."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class TorchvisionLoader(BatchLoader):
    """Class-folder batches through ``torch.utils.data.DataLoader``; see the module docstring.

    Args:
        images: Files and labels (from :func:`scan_folder` or :func:`read_file_list`).
        split: ``"train"`` (shuffled, augmented, drop_last by default) or anything else (eval transforms).
        workers: DataLoader worker processes (0: decode in the main process).
        Other args: as :func:`dna_fast.data.build_loader`.
    """

    def __init__(
        self,
        images: ImageList,
        *,
        split: str,
        batch_size: int,
        image_size: int = 224,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        workers: int = 4,
        seed: int = 0,
        skip_corrupt: bool = False,
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        crop_pct: float = DEFAULT_CROP_PCT,
        random_interpolation: bool = False,
    ) -> None:
        train = split == "train"
        super().__init__(
            len(images), batch_size=batch_size, rank=rank, world_size=world_size,
            shuffle=train if shuffle is None else shuffle, drop_last=train if drop_last is None else drop_last,
            seed=seed, device=device, dtype=dtype, num_classes=len(images.classes), source=images.source,
        )
        self.images, self.image_size, self.classes = images, image_size, images.classes
        self.dataset = FolderDataset(
            images, train=train, image_size=image_size, crop_pct=crop_pct, skip_corrupt=skip_corrupt,
            random_interpolation=random_interpolation,
        )
        self._sampler = _EpochSampler()
        self.workers = int(workers)
        self._loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self._sampler,
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            drop_last=False,  # local_indices already holds whole batches when drop_last
            persistent_workers=self.workers > 0,
            prefetch_factor=4 if self.workers > 0 else None,
        )

    def _iter_epoch(self, indices: np.ndarray, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seeds = np.random.default_rng([self.seed, epoch, self.rank, 1]).integers(0, 2**63 - 1, size=len(indices))
        self._sampler.keys = list(zip(indices.tolist(), seeds.tolist()))
        skipped: list[str] = []
        try:
            for images, labels, bad in self._loader:
                skipped.extend(bad)
                if labels.numel() == 0:
                    continue
                yield normalize_uint8(images, self.device, self.dtype), labels.to(self.device, non_blocking=True)
        finally:
            self._report_skipped(skipped)
