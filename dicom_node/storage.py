"""Durable instance files at server-chosen paths.

A file is written to a temporary name in its final folder, fsynced, renamed into place and the
folder fsynced, so that after a crash a file either is complete under its final name or is a
``.part`` leftover that :meth:`FileStore.scan_folder` deletes at start-up
(:func:`dicom_node.recovery.recover_storage`). Names are random UUIDs in date folders: no UID
or other peer value ever becomes part of a path.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import time
import uuid
from pathlib import Path

_PARTIAL_SUFFIX = ".part"
#: Day folders (``YYYY/MM/DD``) last modified more than this long before the previous
#: recovery scan are skipped at start-up: nothing was written, renamed or left there since,
#: so they can hold no crash leftover. The margin absorbs clock adjustments and coarse
#: file-system timestamps.
RESCAN_MARGIN_S = 24 * 3600.0
#: File in the storage root holding the start time of the last complete recovery scan.
WATERMARK_NAME = ".recovery-scan"
_DAY_FOLDER_DIGITS = (4, 2, 2)  # digits of YYYY, MM, DD


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
            fsync_dir(final.parent)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfSpaceError(exc.errno, "storage is full") from exc
            raise

    def delete(self, relative: str) -> None:
        """Remove a stored file (used when its index row could not be written)."""
        self.absolute(relative).unlink(missing_ok=True)

    def changed_day_folders(self, since: float | None) -> list[Path]:
        """Day folders modified after ``since`` (a recovery watermark) minus the margin.

        Only the folder tree is listed, never the files, so a start-up after a clean run
        costs milliseconds however many files the store holds. ``since`` None gives all.
        """
        folders = [self.root]
        for digits in _DAY_FOLDER_DIGITS:
            folders = [sub for folder in folders for sub in _numbered_folders(folder, digits)]
        if since is None:
            return sorted(folders)
        cutoff = since - RESCAN_MARGIN_S
        return sorted(f for f in folders if f.stat().st_mtime >= cutoff)

    def scan_folder(self, folder: Path) -> tuple[int, list[str]]:
        """Delete the ``.part`` leftovers of one day folder; list its complete files.

        Returns
        -------
        (int, list of str)
            How many leftovers were removed, and the relative paths of the ``.dcm`` files.
        """
        removed, complete = 0, []
        with os.scandir(folder) as entries:
            files = [e for e in entries if e.is_file(follow_symlinks=False)]
        for entry in files:
            if entry.name.endswith(_PARTIAL_SUFFIX):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
            elif entry.name.endswith(".dcm"):
                complete.append(Path(entry.path).relative_to(self.root).as_posix())
        return removed, sorted(complete)

    def read_watermark(self) -> float | None:
        """Start time of the last complete recovery scan; None before the first."""
        try:
            started = float((self.root / WATERMARK_NAME).read_text(encoding="ascii"))
        except (OSError, ValueError):
            return None
        return started if math.isfinite(started) else None

    def write_watermark(self, started: float) -> None:
        """Record a complete recovery scan that began at ``started`` (epoch seconds)."""
        target = self.root / WATERMARK_NAME
        partial = target.with_name(target.name + ".tmp")
        partial.write_text(repr(started), encoding="ascii")
        os.replace(partial, target)


def _numbered_folders(folder: Path, digits: int) -> list[Path]:
    """Subfolders named by ``digits`` decimal digits (the parts of ``YYYY/MM/DD``)."""
    with os.scandir(folder) as entries:
        return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)
                and len(e.name) == digits and e.name.isdigit()]


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (a rename into it) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
