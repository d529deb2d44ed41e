"""Atomic file writes: write a temporary file in the target's folder, flush + fsync it, then rename it over the target.

A crash (or an exception in the writer) never leaves half a file at the target path; the temporary file is removed
on any failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_save", "atomic_write_text", "atomic_write_json"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None], *, mode: str = "wb",
                 newline: str | None = None) -> None:
    """Calls ``write(f)`` on a temporary file next to ``path``, then renames it to ``path``.

    Args:
        path: Target file; its folder must exist.
        write: Writes the whole content to the open file it gets.
        mode: ``"wb"`` (binary) or ``"w"`` (text, default encoding).
        newline: Passed to ``open`` in text mode (``""`` for the csv module).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    # exclusive create with a per-process, per-call name: usual permissions (umask), no clash between writers
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), newline=newline) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically (its folder is created if missing)."""
    import torch  # here, so that the json/text helpers do not import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (text mode, default encoding, like ``Path.write_text``)."""
    atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
                      default: Callable[[Any], Any] | None = None) -> None:
    """Writes ``json.dumps(obj, indent=indent, default=default)`` to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, default=default))
