"""One entry point for every CT input: NIfTI files, DICOM files and folders of either."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from model.reading.dicom import scan_dicom_series
from model.reading.dicom_assembly import SeriesPlan, read_volumes
from model.reading.nifti import is_nifti, read_nifti
from model.reading.volume import CTInputError, CTVolume


@dataclass
class LoadResult:
    """Volumes found under one input, and one message per file or series that failed."""

    volumes: list[CTVolume] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class InputScan:
    """What one input holds, before any pixel is read: NIfTI files and DICOM series plans."""

    nifti: list[Path] = field(default_factory=list)
    plans: list[SeriesPlan] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def scan_input(path: Path) -> InputScan:
    """NIfTI files and DICOM series (headers read and checked) under ``path``.

    Raises
    ------
    CTInputError
        If ``path`` does not exist.
    """
    if not path.exists():
        raise CTInputError(f"{path}: no such file or folder")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    scan = InputScan(nifti=[f for f in files if is_nifti(f)])
    dicom_files = [f for f in files if not is_nifti(f)]
    if dicom_files:
        dicom = scan_dicom_series(dicom_files)
        scan.plans, scan.errors = dicom.plans, dicom.errors
    return scan


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
    scan = scan_input(path)
    result = LoadResult(errors=list(scan.errors))
    for f in scan.nifti:
        try:
            result.volumes.append(read_nifti(f))
        except CTInputError as exc:
            result.errors.append(str(exc))
    result.volumes += read_volumes(scan.plans, result.errors)
    return result
