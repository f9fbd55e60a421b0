"""One entry point for every CT input: NIfTI files, DICOM files and folders of either."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from model.reading.dicom import read_dicom_series
from model.reading.nifti import is_nifti, read_nifti
from model.reading.volume import CTInputError, CTVolume


@dataclass
class LoadResult:
    """Volumes found under one input, and one message per file or series that failed."""

    volumes: list[CTVolume] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def load_volumes(path: Path) -> LoadResult:
    """Read every CT series under ``path``.

    A NIfTI file gives one volume; a DICOM file or a folder gives one volume per
    SeriesInstanceUID (NIfTI files inside a folder give one each). Problems with single
    files are collected in ``errors`` and never hide the other series.

    Raises
    ------
    CTInputError
        If ``path`` does not exist.
    """
    if not path.exists():
        raise CTInputError(f"{path}: no such file or folder")
    result = LoadResult()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    dicom_files = []
    for f in files:
        if is_nifti(f):
            try:
                result.volumes.append(read_nifti(f))
            except CTInputError as exc:
                result.errors.append(str(exc))
        else:
            dicom_files.append(f)
    if dicom_files:
        dicom = read_dicom_series(dicom_files)
        result.volumes += dicom.volumes
        result.errors += dicom.errors
    return result
