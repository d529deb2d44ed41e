"""Class-folder images through an NVIDIA DALI pipeline: GPU decode ("mixed") on CUDA, DALI's CPU backend otherwise.

Train: random resized crop fused into the decoder (area 0.08-1, aspect 3/4-4/3), resize to ``image_size``,
random horizontal flip, ImageNet normalization. Val: resize the shorter side to ``floor(image_size / crop_pct)``
(antialiased linear), center crop. Without a CUDA device the pipeline is built with ``device_id=None`` and every
operator runs on the CPU, so the same code is tested on machines without a GPU.

# NOTE: the order of an epoch is decided here, not by DALI's reader. Each epoch, :func:`shard_indices` gives this
# rank's files (a seeded global permutation for train, a contiguous block for val) and the reader reads that list
# unshuffled with ``num_shards=1``. This gives ``set_epoch`` reproducibility and exact per-rank sample counts: the
# reader pads its last batch by repeating a sample, and those repeats are cut off here by counting samples, so in
# val every image is seen exactly once across ranks. The cost is one pipeline build per train epoch (about a
# second, against minutes per ImageNet epoch); an unchanged val pipeline is reused.
#
# DALI's decoder errors do not name the file. When the pipeline fails, the files of the batches that may have
# been in flight are decoded with PIL to find the culprit, and the error is raised again naming it; with
# ``skip_corrupt=True`` the file is dropped and the epoch resumes where it stopped, with a new pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ._base import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, BatchLoader, val_resize_size
from ._folder import DataError, ImageList, find_corrupt


def dali_available() -> bool:
    """True when ``nvidia.dali`` and its PyTorch plugin import."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 (a broken install is as good as none)
        return False
    return True


class DaliLoader(BatchLoader):
    """Class-folder batches through DALI; see the module docstring.

    Args:
        images: Files and labels (from :func:`scan_folder` or :func:`read_file_list`).
        split: ``"train"`` (shuffled, augmented, drop_last by default) or anything else (eval transforms).
        workers: DALI CPU threads.
        prefetch: DALI's pipeline prefetch depth (batches in flight).
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
        prefetch: int = 2,
    ) -> None:
        train = split == "train"
        super().__init__(
            len(images), batch_size=batch_size, rank=rank, world_size=world_size,
            shuffle=train if shuffle is None else shuffle, drop_last=train if drop_last is None else drop_last,
            seed=seed, device=device, dtype=dtype, num_classes=len(images.classes), source=images.source,
        )
        self.images, self.classes, self.train = images, images.classes, train
        self.image_size, self.resize_size = int(image_size), val_resize_size(image_size, crop_pct)
        self.workers, self.prefetch, self.skip_corrupt = max(1, int(workers)), int(prefetch), skip_corrupt
        if self.device.type == "cuda":
            self._device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self.device = torch.device("cuda", self._device_id)
        else:
            self._device_id = None
        self._bad: set[int] = set()  # indices of corrupt files found so far (skip_corrupt=True)
        self._cache: tuple[np.ndarray, object, object] | None = None  # (order, pipeline, iterator) to reuse

    def _build(self, order: np.ndarray, pipe_seed: int):
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        s = self.image_size
        decode_device = "cpu" if self._device_id is None else "mixed"
        pipe = Pipeline(
            batch_size=self.batch_size, num_threads=self.workers, device_id=self._device_id, seed=pipe_seed,
            prefetch_queue_depth=self.prefetch,
        )
        with pipe:
            encoded, labels = fn.readers.file(
                files=[self.images.files[i] for i in order], labels=self.images.labels[order].tolist(),
                name="Reader", random_shuffle=False, pad_last_batch=True,
            )
            if self.train:
                images = fn.decoders.image_random_crop(
                    encoded, device=decode_device, output_type=types.RGB, random_area=[0.08, 1.0],
                    random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=10,
                )
                images = fn.resize(images, resize_x=s, resize_y=s, interp_type=types.INTERP_LINEAR, antialias=True)
                mirror = fn.random.coin_flip(probability=0.5)
            else:
                images = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB)
                images = fn.resize(
                    images, resize_shorter=self.resize_size, interp_type=types.INTERP_LINEAR, antialias=True
                )
                mirror = 0
            images = fn.crop_mirror_normalize(
                images, dtype=types.FLOAT16 if self.dtype == torch.float16 else types.FLOAT, output_layout="CHW",
                crop=(s, s), crop_pos_x=0.5, crop_pos_y=0.5, mirror=mirror,
                mean=[m * 255 for m in IMAGENET_MEAN], std=[v * 255 for v in IMAGENET_STD],
            )
            pipe.set_outputs(images, labels)
        pipe.build()
        iterator = DALIGenericIterator(
            pipe, ["images", "labels"], reader_name="Reader", last_batch_policy=LastBatchPolicy.PARTIAL,
            auto_reset=True,
        )
        return pipe, iterator

    def _batches(self, order: np.ndarray, pipe_seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Runs DALI over ``order`` once; reuses the last pipeline when it read the same files to the end."""
        cached, self._cache = self._cache, None
        if cached is not None and not self.train and np.array_equal(cached[0], order):
            pipe, iterator = cached[1], cached[2]
        else:
            del cached
            pipe, iterator = self._build(order, pipe_seed)
        for out in iterator:  # auto_reset: the iterator is ready for the next epoch once this loop ends
            yield out[0]["images"], out[0]["labels"]
        self._cache = (order, pipe, iterator)

    def _locate_corrupt(self, order: np.ndarray, pos: int, error: Exception) -> list[int]:
        """Indices of unreadable files among those that may have been in flight when DALI failed at ``pos``."""
        window = order[pos : pos + (self.prefetch + 2) * self.batch_size]
        bad = find_corrupt([self.images.files[i] for i in window], workers=self.workers)
        if not bad:
            first, last = self.images.files[window[0]], self.images.files[window[-1]]
            raise DataError(
                f"DALI failed while reading one of {len(window)} images from {first!r} to {last!r} of "
                f"{self.source!r}, and PIL reads them all: check those files or use backend='torchvision'. "
                f"DALI said: {error}"
            ) from error
        if not self.skip_corrupt:
            path, reason = bad[0]
            raise DataError(
                f"cannot read image {path!r} ({reason}): replace or delete the file, or pass skip_corrupt=True"
            ) from error
        index = {self.images.files[i]: i for i in window}
        return [index[p] for p, _ in bad]

    def _iter_epoch(self, indices: np.ndarray, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = np.asarray([i for i in indices if i not in self._bad], dtype=np.int64)
        pos, restarts, skipped = 0, 0, []
        try:
            while pos < len(order):
                pipe_seed = int(np.random.default_rng([self.seed, epoch, self.rank, restarts]).integers(2**31 - 1))
                batches = self._batches(order[pos:], pipe_seed)
                try:
                    for images, labels in batches:
                        take = min(len(labels), len(order) - pos)
                        pos += take
                        yield (
                            images[:take].to(self.device, self.dtype, non_blocking=True),
                            labels[:take].view(-1).to(self.device, torch.int64, non_blocking=True),
                        )
                    if pos < len(order):
                        raise DataError(
                            f"DALI ended the epoch after {pos} of {len(order)} samples of {self.source}"
                        )
                except RuntimeError as e:
                    batches.close()
                    bad = self._locate_corrupt(order, pos, e)
                    self._bad.update(bad)
                    skipped.extend(self.images.files[i] for i in bad)
                    drop = set(bad)
                    rest = np.asarray([i for i in order[pos:] if i not in drop], dtype=np.int64)
                    order = np.concatenate([order[:pos], rest])
                    restarts += 1
        finally:
            self._report_skipped(skipped)
