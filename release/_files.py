"""Durable file operations: atomic writes, directory syncs, hashing.

A file is written to a temporary name in the same folder, flushed and fsynced, then moved over
the target with ``os.replace``; the folder is fsynced so the rename itself survives a power cut.
A reader therefore sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames, new files) to disk.

    Args:
        path: the folder.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically and durably.

    Args:
        path: the file to write (its folder is created if missing).
        data: the new content.
        mode: permission bits for the new file (default ``0o644``; ``0o600`` for a key).

    Returns:
        ``path``.

    Raises:
        OSError: the write failed; ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644 if mode is None else mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks.

    Args:
        path: the file.

    Returns:
        64 hex characters.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def remove_tree(path: Path) -> None:
    """Remove a folder tree if it exists (a file or link is unlinked).

    Args:
        path: what to remove.
    """
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
