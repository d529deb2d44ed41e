"""Atomic file writes and guarded reads.

Writes: a temporary file in the target's folder, flushed + fsynced, then renamed over the target. A crash (or an
exception in the writer, such as a full disk) never leaves half a file at the target path; the temporary file is
removed on any failure and the previous content of the target stays.

Reads: :func:`load_checkpoint` and :func:`read_table` turn a file that exists but cannot be decoded (truncated by a
crash of another tool, corrupted, not a checkpoint at all) into one :class:`DamagedFileError` naming the file and
the fix, instead of a decoder's traceback.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_save", "atomic_write_text", "atomic_write_json", "DamagedFileError",
           "load_checkpoint", "read_table"]


class DamagedFileError(ValueError):
    """A checkpoint or table exists but cannot be read: truncated, corrupt or not that kind of file."""


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
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, f"no space left on the device while writing {str(path)!r} ({e.strerror}): free "
                          "some space and run again; the previous version of the file, if any, is intact") from e
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


def _damaged(path: Path, what: str, err: BaseException, fix: str) -> DamagedFileError:
    text = str(err).strip()
    cause = text.splitlines()[0].split(". ")[0][:120] if text else ""
    cause = f"{type(err).__name__}: {cause}" if cause else type(err).__name__
    return DamagedFileError(f"{what} {str(path)!r} cannot be read, it is truncated or corrupt ({cause}): {fix}")


def load_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint", fix: str = "restore or delete it",
                    map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` (``safetensors.torch.load_file`` for ``.safetensors``).

    Args:
        path: The file; a missing file raises ``FileNotFoundError`` as usual.
        what: What the file is, for the message (``"supernet checkpoint"``).
        fix: What the user should do about a damaged file (ends the message).
        map_location: Passed to ``torch.load`` (``device`` for safetensors).

    Raises:
        DamagedFileError: the file exists but does not decode; the file is left as it is.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device=str(map_location))
        return torch.load(path, map_location=map_location, weights_only=True)
    except (MemoryError, PermissionError):  # not the file's content
        raise
    except Exception as e:  # zip / pickle / safetensors decoders raise many types (even OSError EINVAL) for it
        raise _damaged(path, what, e, fix) from e


def read_table(path: str | os.PathLike, *, what: str = "table", fix: str = "restore or delete it") -> Any:
    """``pandas.read_parquet(path)``, with a damaged file turned into :class:`DamagedFileError` (see
    :func:`load_checkpoint`)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        return pd.read_parquet(path)
    except (MemoryError, PermissionError):
        raise
    except Exception as e:  # pyarrow raises ArrowInvalid or OSError for bad content
        raise _damaged(path, what, e, fix) from e
