"""Durable instance files at server-chosen paths.

A file is written to a temporary name in its final folder, fsynced, renamed into place and the
folder fsynced, so that after a crash a file either is complete under its final name or is a
``.part`` leftover that :func:`remove_partials` deletes at start-up. Names are random UUIDs in
date folders: no UID or other peer value ever becomes part of a path.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import uuid
from pathlib import Path

_PARTIAL_SUFFIX = ".part"


class OutOfSpaceError(OSError):
    """The storage volume has less free space than ``storage.min_free_bytes`` (or none)."""


class FileStore:
    """The folder of instance files.

    Parameters
    ----------
    root : Path
        Created if missing.
    min_free_bytes : int
        :meth:`write` refuses (``OutOfSpaceError``) when less would remain free.
    """

    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = root.resolve()
        self.min_free_bytes = min_free_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def new_relative_path(self) -> str:
        """A fresh relative path: ``YYYY/MM/DD/<uuid4>.dcm``."""
        return time.strftime("%Y/%m/%d/", time.gmtime()) + uuid.uuid4().hex + ".dcm"

    def absolute(self, relative: str) -> Path:
        """The absolute path of a stored file; refuses anything that leaves the root."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError("stored path escapes the storage root")
        return path

    def write(self, relative: str, data: bytes) -> None:
        """Write ``data`` durably under ``relative``; raises ``OutOfSpaceError`` when full."""
        free = shutil.disk_usage(self.root).free
        if free - len(data) < self.min_free_bytes:
            raise OutOfSpaceError(errno.ENOSPC, "storage below storage.min_free_bytes")
        final = self.absolute(relative)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(final.name + _PARTIAL_SUFFIX)
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(partial, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfSpaceError(exc.errno, "storage is full") from exc
            raise

    def delete(self, relative: str) -> None:
        """Remove a stored file (used when its index row could not be written)."""
        self.absolute(relative).unlink(missing_ok=True)

    def remove_partials(self) -> int:
        """Delete ``.part`` files left by a crash; returns how many."""
        removed = 0
        for path in self.root.rglob("*" + _PARTIAL_SUFFIX):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def orphans(self, known: set[str]) -> list[str]:
        """Relative paths of complete files that the index does not list."""
        found = []
        for path in self.root.rglob("*.dcm"):
            relative = path.relative_to(self.root).as_posix()
            if relative not in known:
                found.append(relative)
        return found


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
