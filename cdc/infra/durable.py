"""Durable private files: written to a temporary name, fsynced, renamed into place, the folder
fsynced. A crash leaves the old file or the new one, never half of one. Files are 0600.

Portable: where the platform cannot open a directory (Windows has no ``os.O_DIRECTORY``, and
``os.open`` cannot open a directory there), the folder's fsync is skipped: there is no directory
handle to fsync (NTFS keeps its metadata, renames included, consistent through its journal). Files
are opened in binary mode everywhere (``os.O_BINARY`` where it exists, as ``tempfile`` does: on
Windows ``os.open`` defaults to text mode, which would write each ``\\n`` as ``\\r\\n``)."""

from __future__ import annotations

import os
from pathlib import Path


def binary_flag() -> int:
    """``os.O_BINARY`` where the platform has it (Windows), else 0: or it into an ``os.open``'s flags."""
    return getattr(os, "O_BINARY", 0)


def fsync_dir(path: Path) -> None:
    """Make renames and removals in ``path`` durable; nothing to do where a directory cannot be opened."""
    directory = getattr(os, "O_DIRECTORY", None)
    if directory is None:
        return
    fd = os.open(path, os.O_RDONLY | directory)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` durably (0600)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | binary_flag(), 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)
