"""Image folder trees and file lists: scanning, validation and clear errors naming the bad path.

Layout (ImageNet's): ``root/<split>/<class>/<image>``. The class index is the position of the class folder
name in the sorted list of class folders of ``root/train`` (so train and val agree even when a val folder is
missing a class); without ``root/train`` it is taken from the split's own folders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm")


class DataError(ValueError):
    """Bad input data (empty folder, class folder without images, corrupt image); the message names the path."""


@dataclass
class ImageList:
    """Image files with their class labels.

    Attributes:
        files: Absolute image paths.
        labels: Class index of each file (int64 array, same length as ``files``).
        classes: Class names; ``classes[i]`` is the folder (or list entry) of label ``i``.
        source: The folder or list file the images came from (for messages).
    """

    files: list[str]
    labels: np.ndarray
    classes: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, keep: Sequence[int]) -> ImageList:
        keep = list(keep)
        return ImageList([self.files[i] for i in keep], self.labels[keep], self.classes, self.source)


def _class_dirs(folder: str) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir(follow_symlinks=True) and not e.name.startswith("."))


def _images_under(folder: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMG_EXTENSIONS))
    return out


def scan_folder(root: str | os.PathLike, split: str) -> ImageList:
    """Lists ``root/<split>/<class>/**/<image>`` with labels from the sorted class folder names.

    Args:
        root: Data root holding ``train/`` and ``val/`` (ImageNet layout).
        split: Sub-folder to read, e.g. ``"train"`` or ``"val"``.

    Raises:
        FileNotFoundError: ``root`` or ``root/<split>`` does not exist.
        DataError: no class folders, a class folder without images, or a val class unknown to train.
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"data root {root!r} does not exist or is not a folder: set data.root to a folder that holds "
            f"train/ and val/ with one sub-folder of images per class"
        )
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"split folder {folder!r} does not exist: expected {root}/{split}/<class>/<images>")
    classes = _class_dirs(folder)
    if not classes:
        loose = _images_under(folder)
        hint = (
            f" ({len(loose)} images lie directly in it: sort them into one sub-folder per class)" if loose else ""
        )
        raise DataError(f"split folder {folder!r} has no class sub-folders{hint}")
    index = {c: i for i, c in enumerate(classes)}
    train_folder = os.path.join(root, "train")
    if split != "train" and os.path.isdir(train_folder):
        train_classes = _class_dirs(train_folder)
        unknown = sorted(set(classes) - set(train_classes))
        if unknown:
            raise DataError(
                f"class folder(s) {unknown[:5]} of {folder!r} are missing from {train_folder!r}: "
                f"train and {split} must use the same class folder names"
            )
        index = {c: i for i, c in enumerate(train_classes)}
        classes = train_classes
    files: list[str] = []
    labels: list[int] = []
    for name in _class_dirs(folder):
        found = _images_under(os.path.join(folder, name))
        if not found:
            raise DataError(
                f"class folder {os.path.join(folder, name)!r} contains no images (extensions: "
                f"{', '.join(IMG_EXTENSIONS)}): add images or remove the folder"
            )
        files.extend(found)
        labels.extend([index[name]] * len(found))
    return ImageList(files, np.asarray(labels, dtype=np.int64), classes, folder)


def read_file_list(path: str | os.PathLike, root: str | os.PathLike | None = None) -> ImageList:
    """Reads a text file of ``<image path> <label>`` lines (paths relative to ``root`` or to the list's folder).

    Raises:
        FileNotFoundError: the list or a listed image does not exist.
        DataError: a malformed line, or an empty list.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file list {path!r} does not exist")
    base = os.path.abspath(os.fspath(root)) if root is not None else os.path.dirname(path)
    files, labels = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            name, _, label = line.rpartition(" ")
            if not name or not label.lstrip("-").isdigit() or int(label) < 0:
                raise DataError(f"{path}:{n}: expected '<image path> <non-negative integer label>', got {line!r}")
            full = os.path.join(base, name.strip())
            if not os.path.isfile(full):
                raise FileNotFoundError(f"{path}:{n}: image {full!r} does not exist")
            files.append(full)
            labels.append(int(label))
    if not files:
        raise DataError(f"file list {path!r} lists no images")
    num_classes = max(labels) + 1
    return ImageList(files, np.asarray(labels, dtype=np.int64), [str(i) for i in range(num_classes)], path)


def check_image(path: str) -> str | None:
    """Fully decodes one image with PIL; returns None when it is readable, else the reason."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 (any failure means unreadable)
        return f"{type(e).__name__}: {e}"
    return None


def find_corrupt(paths: Sequence[str], workers: int = 4) -> list[tuple[str, str]]:
    """``(path, reason)`` for each image of ``paths`` that PIL cannot decode, in input order."""
    if not paths:
        return []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(pool.map(check_image, paths, chunksize=64))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]
