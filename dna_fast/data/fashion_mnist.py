"""Fashion-MNIST (Xiao et al., 2017; 70k real 28x28 grey images of clothing, 10 classes, MIT licence) from IDX files.

Where the files are looked for, first match wins (each folder must hold the four files, ``.gz`` or not):

1. ``root`` (``data.root``), or ``root/FashionMNIST/raw`` (torchvision's ``FashionMNIST(root)`` layout);
2. :data:`DEBIAN_DIR`, where Debian's ``dataset-fashion-mnist`` package puts them
   (``sudo apt-get install dataset-fashion-mnist``).

Nothing is downloaded here: without the files, :func:`find_fashion_mnist` raises a ``FileNotFoundError`` that says
how to get them.

Splits (fixed, independent of ``seed``): a ``numpy.random.RandomState(0)`` permutation of the 60k training images;
its first :data:`VAL_SIZE` = 5000 are ``val`` (rating, selection), the others ``train``; ``test`` is the 10k test
set (final accuracies only). ``max_images`` keeps the first N images of a split in that fixed order (a class-balanced
random subset, the same for every seed) for runs sized to a small machine.

Images are scaled to [0, 1], zero-padded 28 -> 32 (the background is black), resized (bilinear) when
``image_size`` is not 32, repeated to 3 channels and normalized with the ImageNet mean / std, so the models and
teachers that run on ImageNet-style folders run on it unchanged.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._base import IMAGENET_MEAN, IMAGENET_STD, BatchLoader
from ._folder import DataError

__all__ = ["CLASSES", "DEBIAN_DIR", "FashionMNISTLoader", "VAL_SIZE", "find_fashion_mnist", "load_split",
           "read_idx", "split_indices", "write_idx"]

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
VAL_SIZE = 5000
TRAIN_TOTAL = 60000
SPLIT_SEED = 0
CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
HOW_TO_GET = ("install Debian's package (sudo apt-get install dataset-fashion-mnist, files in "
              f"{DEBIAN_DIR}), or download it once with torchvision.datasets.FashionMNIST(ROOT, download=True) and "
              "set data.root=ROOT")

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (optionally gzipped): the array with its stored shape and type.

    Raises:
        DataError: not an IDX file, or shorter than its header says (naming the file).
    """
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {str(p)!r} ({e}): delete it and get the data again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] < 1:
        raise DataError(f"{str(p)!r} is not an IDX file (bad magic number): delete it and get the data again")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    need = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) < need:
        raise DataError(f"IDX file {str(p)!r} is truncated ({len(data)} of {need} bytes): delete it and get the "
                        "data again")
    return np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=header).reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``); the inverse of :func:`read_idx`."""
    a = np.asarray(array)
    codes = [(k, np.dtype(v)) for k, v in _IDX_DTYPES.items()
             if np.dtype(v).kind == a.dtype.kind and np.dtype(v).itemsize == a.dtype.itemsize]
    if not codes:
        raise ValueError(f"IDX has no type code for {a.dtype}")
    code, dt = codes[0]
    body = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(dt).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(body)


def _has_files(folder: Path) -> bool:
    return all((folder / n).is_file() or (folder / f"{n}.gz").is_file() for pair in FILES.values() for n in pair)


def find_fashion_mnist(root: str | os.PathLike | None = None, debian_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files (see the module docstring for the search order).

    ``debian_dir``: the package's folder (None: :data:`DEBIAN_DIR`).

    Raises:
        FileNotFoundError: no such folder; the message says where it looked and how to get the data.
    """
    looked = []
    if root is not None:
        for folder in (Path(root), Path(root) / "FashionMNIST" / "raw"):
            looked.append(str(folder))
            if _has_files(folder):
                return folder
    debian_dir = DEBIAN_DIR if debian_dir is None else debian_dir
    looked.append(str(debian_dir))
    if _has_files(Path(debian_dir)):
        return Path(debian_dir)
    raise FileNotFoundError(f"Fashion-MNIST not found (looked in {', '.join(looked) or 'nowhere'}): {HOW_TO_GET}")


def _read_pair(folder: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    def pick(n: str) -> Path:
        return folder / n if (folder / n).is_file() else folder / f"{n}.gz"

    x, y = read_idx(pick(images)), read_idx(pick(labels))
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{folder}: {images} has shape {x.shape} and {labels} {y.shape}; expected (N, H, W) images "
                        "and N labels: delete the files and get the data again")
    if y.size and (y.min() < 0 or y.max() >= len(CLASSES)):
        raise DataError(f"{folder}/{labels}: labels outside 0..{len(CLASSES) - 1}: not Fashion-MNIST")
    return x, y.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _load(folder: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    return _read_pair(Path(folder), *FILES[part])


def split_indices(split: str, num_train: int = TRAIN_TOTAL) -> np.ndarray:
    """Indices into the training file of ``"train"`` / ``"val"`` in their fixed order (``"test"``: all 10k).

    ``num_train`` is the number of images in the training file (60000 for the real data; smaller in tests):
    ``val`` takes ``min(VAL_SIZE, num_train // 6)`` of them.
    """
    if split not in ("train", "val"):
        raise ValueError(f"fashion_mnist has splits 'train', 'val' and 'test', got {split!r}")
    order = np.random.RandomState(SPLIT_SEED).permutation(num_train)
    nval = min(VAL_SIZE, num_train // 6)
    return order[nval:] if split == "train" else order[:nval]


def load_split(split: str, root: str | os.PathLike | None = None, max_images: int | None = None,
               debian_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and int64 labels of a split, at most ``max_images`` (the first of the fixed order)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"fashion_mnist has splits 'train', 'val' and 'test', got {split!r}")
    folder = str(find_fashion_mnist(root, debian_dir))
    if split == "test":
        x, y = _load(folder, "test")
        idx = np.arange(len(x))
    else:
        x, y = _load(folder, "train")
        idx = split_indices(split, len(x))
    if max_images:
        idx = idx[: int(max_images)]
    idx = np.sort(idx)
    return x[idx], y[idx]


class FashionMNISTLoader(BatchLoader):
    """Fashion-MNIST batches (the split in memory on ``device`` as uint8); train shuffles per epoch.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: folder of the IDX files (see :func:`find_fashion_mnist`); None: the Debian package's folder.
        image_size: output height = width (default 32: the 28x28 image zero-padded by 2 on each side).
        max_images: keep at most this many images of the split (0 / None: all).
        Other args: as :func:`dna_fast.data.build_loader`.
    """

    def __init__(
        self,
        *,
        split: str,
        batch_size: int,
        root: str | os.PathLike | None = None,
        image_size: int = 32,
        max_images: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        debian_dir: str | os.PathLike | None = None,
    ) -> None:
        images, labels = load_split(split, root, max_images, debian_dir)
        train = split == "train"
        super().__init__(
            len(labels), batch_size=batch_size, rank=rank, world_size=world_size,
            shuffle=train if shuffle is None else shuffle, drop_last=train if drop_last is None else drop_last,
            seed=seed, device=device, dtype=dtype, num_classes=len(CLASSES), source=f"fashion_mnist ({split})",
        )
        self.image_size, self.classes = int(image_size), CLASSES
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)  # (N, 28, 28) uint8
        self.labels = torch.from_numpy(labels).to(self.device)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 28, 28) -> normalized (N, 3, S, S) float32: pad to 32, resize to S, repeat, normalize."""
        x = images.float().div_(255).unsqueeze(1)
        h, w = x.shape[-2:]
        if h < 32 or w < 32:
            x = F.pad(x, ((32 - w) // 2, 32 - w - (32 - w) // 2, (32 - h) // 2, 32 - h - (32 - h) // 2))
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (x.expand(-1, 3, -1, -1) - self._mean) / self._std

    def _iter_epoch(self, indices: np.ndarray, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.from_numpy(indices).to(self.device)
        for start in range(0, len(idx), self.batch_size):
            b = idx[start : start + self.batch_size]
            yield self.transform(self.images[b]).to(self.dtype).contiguous(), self.labels[b]
