"""Data loading for dna_fast: one entry point, :func:`build_loader`, over four backends.

- ``dali``: ImageNet-style class folders (or a file list) through NVIDIA DALI; GPU decode on CUDA, DALI's CPU
  backend otherwise (:mod:`dna_fast.data.dali`).
- ``torchvision``: the same folders and transforms through a torch ``DataLoader`` (:mod:`dna_fast.data.tv`).
- ``embedded``: scikit-learn's digits, shipped with scikit-learn (:mod:`dna_fast.data.embedded`).
- ``fashion_mnist``: Fashion-MNIST from its IDX files (``data.root`` or Debian's ``dataset-fashion-mnist``; splits
  ``train`` / ``val`` / ``test``) (:mod:`dna_fast.data.fashion_mnist`).
- ``synthetic``: random tensors made on the device, for benchmarks (:mod:`dna_fast.data.synthetic`).

Every loader yields ``(images, labels)``: images NCHW in ``dtype`` on ``device``, normalized with the ImageNet
mean / std; labels int64 on ``device``. ``len(loader)`` is the number of batches of one epoch on this rank, and
``loader.set_epoch(e)`` picks the epoch (shuffle order and augmentation) of the next ``iter()``.
"""

from __future__ import annotations

import os
import warnings

import torch

from ._base import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, BatchLoader, shard_indices, val_resize_size
from ._folder import DataError, ImageList, find_corrupt, read_file_list, scan_folder
from .dali import dali_available

BACKENDS = ("auto", "dali", "torchvision", "embedded", "fashion_mnist", "synthetic")

__all__ = [
    "BACKENDS", "BatchLoader", "DataError", "IMAGENET_MEAN", "IMAGENET_STD", "ImageList", "build_loader",
    "dali_available", "find_corrupt", "read_file_list", "resolve_backend", "scan_folder", "shard_indices",
    "val_resize_size",
]


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"dali"`` when DALI imports, else ``"torchvision"``; other names are checked and returned."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown data backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "dali" if dali_available() else "torchvision"
    if backend == "dali" and not dali_available():
        raise ImportError(
            "data backend 'dali' needs nvidia-dali: pip install nvidia-dali-cuda130, or use backend 'torchvision'"
        )
    return backend


def _default_workers(backend: str) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus)) if backend == "dali" else max(0, min(8, cpus - 1))


def build_loader(
    *,
    backend: str = "auto",
    root: str | os.PathLike | None = None,
    split: str = "train",
    batch_size: int,
    image_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    workers: int | None = None,
    seed: int = 0,
    skip_corrupt: bool = False,
    validate: bool = False,
    file_list: str | os.PathLike | None = None,
    shuffle: bool | None = None,
    drop_last: bool | None = None,
    crop_pct: float = DEFAULT_CROP_PCT,
    num_samples: int = 1024,
    num_classes: int = 1000,
    max_images: int | None = None,
    random_interpolation: bool = False,
) -> BatchLoader:
    """Builds the batch loader of one split for one rank.

    Args:
        backend: ``"auto"`` (``dali`` when nvidia-dali imports, else ``torchvision``), ``"dali"``,
            ``"torchvision"``, ``"embedded"`` or ``"synthetic"``.
        root: Data root for ``dali`` / ``torchvision``, holding ``train/`` and ``val/`` with one folder of images
            per class (ImageNet layout; class index = position in the sorted folder names of ``train/``).
        split: ``"train"`` (shuffled per epoch, augmented, whole batches only) or ``"val"`` (in order, eval
            transforms, every image once per epoch across all ranks, the last batch may be partial).
            ``fashion_mnist`` also has ``"test"`` (read like ``val``).
        batch_size: Samples per batch on this rank.
        image_size: Output height = width; default 32 for ``embedded`` and ``fashion_mnist``, 224 otherwise.
        rank, world_size: This process's shard. Train: each rank reads ``len // world_size`` samples of a seeded
            global permutation (the remainder sits out that epoch). Val: contiguous blocks, no overlap, no padding.
        device: Where batches are delivered (and, for ``dali`` on CUDA, where decoding runs).
        dtype: Floating type of the images (the math is fp32, cast at the end).
        workers: DALI threads / DataLoader worker processes; default from the CPU count.
        seed: Seeds shuffling and augmentation: the same ``(seed, epoch)`` gives the same batches.
        skip_corrupt: Skip unreadable images (counted, reported once as a ``RuntimeWarning``, listed in
            ``loader.skipped``) instead of raising :class:`DataError` naming the file.
        validate: Decode every image once with PIL before the first epoch (slow on big sets) and raise for, or
            with ``skip_corrupt`` drop, the unreadable ones up front.
        file_list: Instead of scanning ``root/<split>``, read ``<path> <label>`` lines from this text file
            (paths relative to ``root`` when given, else to the list's folder).
        shuffle, drop_last: Override the split's defaults (train: True / True, val: False / False).
        crop_pct: Eval center-crop fraction: the shorter side is first resized to ``floor(image_size / crop_pct)``.
        num_samples, num_classes: Size of the ``synthetic`` data set and its label range.
        max_images: ``fashion_mnist`` only: keep the first N images of the split's fixed order (None: all).
        random_interpolation: ``torchvision`` train split only: resize each random-resized crop bilinearly or
            bicubically at random (timm's ``random``, the DNA authors' pipeline); False: bilinear.

    Returns:
        A :class:`BatchLoader`: iterable of ``(images, labels)`` with ``len()``, ``set_epoch(e)``, ``epoch``,
        ``num_classes``, ``classes``, ``num_local_samples`` and ``skipped``.

    Raises:
        FileNotFoundError: ``root`` / ``root/<split>`` / the file list is missing.
        DataError: an empty split folder, a class folder with no images, a corrupt image (naming the path).
    """
    backend = resolve_backend(backend)
    if random_interpolation and backend != "torchvision":
        raise ValueError(f"random_interpolation needs the torchvision backend, not {backend!r}: use "
                         "backend='torchvision' or random_interpolation=False")
    common = dict(batch_size=batch_size, rank=rank, world_size=world_size, device=device, dtype=dtype, seed=seed)
    if backend == "embedded":
        return _embedded(split, image_size or 32, shuffle, drop_last, common)
    if backend == "fashion_mnist":
        from .fashion_mnist import FashionMNISTLoader

        return FashionMNISTLoader(split=split, root=root, image_size=image_size or 32, max_images=max_images,
                                  shuffle=shuffle, drop_last=drop_last, **common)
    if backend == "synthetic":
        from .synthetic import SyntheticLoader

        return SyntheticLoader(
            image_size=image_size or 224, num_samples=num_samples, num_classes=num_classes,
            drop_last=bool(drop_last), **common,
        )
    if file_list is not None:
        images = read_file_list(file_list, root)
    elif root is None:
        raise ValueError(f"data backend {backend!r} needs data.root: a folder with train/ and val/ class folders")
    else:
        images = scan_folder(root, split)
    workers = _default_workers(backend) if workers is None else int(workers)
    if validate:
        images = _validated(images, skip_corrupt, max(1, workers))
    kwargs = dict(
        split=split, image_size=image_size or 224, workers=workers, skip_corrupt=skip_corrupt, shuffle=shuffle,
        drop_last=drop_last, crop_pct=crop_pct, **common,
    )
    if backend == "dali":
        from .dali import DaliLoader

        return DaliLoader(images, **kwargs)
    from .tv import TorchvisionLoader

    return TorchvisionLoader(images, random_interpolation=random_interpolation, **kwargs)


def _embedded(split, image_size, shuffle, drop_last, common) -> BatchLoader:
    from .embedded import EmbeddedLoader

    return EmbeddedLoader(split=split, image_size=image_size, shuffle=shuffle, drop_last=drop_last, **common)


def _validated(images: ImageList, skip_corrupt: bool, workers: int) -> ImageList:
    bad = find_corrupt(images.files, workers=workers)
    if not bad:
        return images
    if not skip_corrupt:
        path, reason = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"cannot read image {path!r} ({reason}){more}: replace or delete it, or pass skip_corrupt=True")
    warnings.warn(
        f"skipped {len(bad)} corrupt image(s) of {images.source} (skip_corrupt=True), e.g. {bad[0][0]!r}",
        RuntimeWarning,
        stacklevel=3,
    )
    drop = {p for p, _ in bad}
    return images.subset([i for i, p in enumerate(images.files) if p not in drop])
