"""The project's one file helper: atomic (and durable) writes, folder syncs, hashing.

A file is written to a temporary name in the same folder, flushed and fsynced, then moved over
the target with ``os.replace``; the folder is fsynced so the rename itself survives a power cut.
A reader therefore sees the old file or the new one, never half of one. It lives in the lowest
package (``data_registry``) so that every package above it (``models``, ``federation``,
``release``) imports this one helper rather than keeping its own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["fsync_dir", "remove_tree", "sha256_file", "write_atomic"]

CHUNK = 1 << 20


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def write_atomic(path: Path, data: bytes, *, mode: int | None = None, durable: bool = True) -> Path:
    """Write ``data`` so that ``path`` holds either its old content or all of the new one.

    Args:
        path: the file to write (its folder is created if missing).
        data: the new content.
        mode: permission bits of the new file (default: as ``open()`` creates files, 0666 less
            the umask; ``0o600`` for a key).
        durable: flush the file and its folder to disk. A caller writing many files passes
            False and calls :func:`os.sync` once before its own commit point.

    Returns:
        ``path``.

    Raises:
        OSError: the write failed; ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp's 0600 would hide the file from the group
        os.fchmod(fd, (0o666 & ~_umask()) if mode is None else mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if durable:
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
