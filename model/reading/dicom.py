"""DICOM reader: CT files in, one axial feet → head :class:`CTVolume` per series out."""

from __future__ import annotations

import gc
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import MediaStorageDirectoryStorage

from model.reading.dicom_assembly import SeriesPlan, plan_series, read_volumes
from model.reading.dicom_frames import Frame, frames_of, sop_class_of
from model.reading.dicom_pixels import PixelSource
from model.reading.hostile import (
    HEADER_PREFIX_BYTES,
    PARSE_FAILURES,
    READ_ERRORS,
    disguised_sequence,
    header_from_prefix,
    parse_header,
    unclosed_items,
)
from model.reading.volume import CTInputError, CTVolume


@dataclass
class DicomScan:
    """Series found in headers (pixels not yet decoded) and one message per rejected file."""

    plans: list[SeriesPlan] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Header (no pixel data) of every file that was read, CT or not, in reading order.
    headers: list[Dataset] = field(default_factory=list)


@dataclass
class DicomReadResult:
    """Volumes read (one per series) and one message per bad file or rejected series."""

    volumes: list[CTVolume] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Header (no pixel data) of every file that was read, CT or not, in reading order: what
    #: a report on these files references, so that no caller reads them a second time.
    headers: list[Dataset] = field(default_factory=list)


def read_dicom_folder(folder: Path) -> DicomReadResult:
    """Read every file below ``folder`` (recursively, any name) as in :func:`read_dicom_series`.

    DICOMDIR index files and hidden files (name starting with a dot) are skipped silently.
    """
    if not folder.is_dir():
        return DicomReadResult(errors=[f"{folder}: not a folder"])
    paths = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
    )
    return read_dicom_series(paths)


def read_dicom_series(paths: Iterable[Path]) -> DicomReadResult:
    """Read CT DICOM files and assemble one axial feet → head volume per SeriesInstanceUID.

    Accepts CT Image Storage and (Legacy Converted) Enhanced CT multi-frame files. Files
    without a SeriesInstanceUID are grouped by folder and FrameOfReferenceUID. Per series,
    localizers and slices whose orientation or matrix differs from the majority are dropped,
    duplicate positions are collapsed, and slices are ordered by the world z of their centre.
    In-plane the pixels are flipped (or transposed) to rows anterior → posterior and columns
    right → left; tilted slices are kept as acquired. Rescale slope and intercept are applied
    per frame; padding (PixelPaddingValue / PixelPaddingRangeLimit pixels, and anything far
    below air) becomes air (:mod:`model.reading.padding`).

    Parameters
    ----------
    paths : iterable of Path
        Files to read; values in the files are never used to build paths.

    Returns
    -------
    DicomReadResult
        Volumes that could be assembled and one error message per unreadable or non-CT
        file and per rejected series. Nothing raises for bad input.
    """
    scan = scan_dicom_series(paths)
    result = DicomReadResult(errors=scan.errors, headers=scan.headers)
    result.volumes = read_volumes(scan.plans, result.errors)
    return result


def scan_dicom_series(paths: Iterable[Path]) -> DicomScan:
    """Headers of ``paths`` grouped and checked into one :class:`SeriesPlan` per series.

    No pixel is decoded: :func:`~model.reading.dicom_assembly.read_volume` or
    :func:`~model.reading.dicom_assembly.decode_slices` do that for the frames a plan keeps.
    Grouping and the checks are those of :func:`read_dicom_series`.
    """
    with cycle_collection_paused():
        return _scan(paths)


@contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """Pause Python's cycle collector while many long-lived objects are made.

    Each parsed header adds some 100 container objects that live until the scan ends, and
    every few thousand new objects start a collection that may walk the whole heap (torch
    alone leaves 230,000 objects): a quarter of the header time of a 1,000-file series went
    there. Reference counting still frees what is not in a cycle at once; the collector
    resumes afterwards, unless someone else had turned it off.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _scan(paths: Iterable[Path]) -> DicomScan:
    scan = DicomScan()
    series: dict[str, list[Frame]] = defaultdict(list)
    uids: dict[str, str | None] = {}
    for path in paths:
        read = _read_header(path, scan.errors)
        if read is None:
            continue
        header, pixel_offset = read
        try:
            _reject_disguised_sequences(header)
            if sop_class_of(header) == MediaStorageDirectoryStorage:
                continue
            scan.headers.append(header)
            frames = frames_of(path, PixelSource.of_header(path, header, pixel_offset), header)
            uid = str(header.get("SeriesInstanceUID") or "") or None
            # Anonymised files may lack the UID; fall back to what separates series.
            key = uid or f"{path.parent}\0{header.get('FrameOfReferenceUID', '')}"
        except CTInputError as exc:
            scan.errors.append(f"{path}: {exc}")
            continue
        except READ_ERRORS as exc:
            scan.errors.append(f"{path}: malformed DICOM header ({type(exc).__name__})")
            continue
        series[key].extend(frames)
        uids[key] = uid
    for key, frames in series.items():
        try:
            scan.plans.append(plan_series(uids[key], frames))
        except CTInputError as exc:
            scan.errors.append(str(exc))
    return scan


def _read_header(path: Path, errors: list[str]) -> tuple[Dataset, int | None] | None:
    """The header of one file (no pixel data) and the offset of its top-level PixelData
    element (None when not found, e.g. in a deflated file); None on failure.

    Only the first :data:`HEADER_PREFIX_BYTES` are read when the header ends within them,
    as it does in nearly every CT file. A longer header (the per-frame groups of an Enhanced
    CT) is read in steps of 16 times the bytes so far, not by reading the whole file.
    """
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(HEADER_PREFIX_BYTES)
            while len(data) < size:
                header = header_from_prefix(data)
                if header is not None:
                    return header
                more = f.read(15 * len(data))
                if not more:  # the file shrank meanwhile
                    break
                data += more
    except OSError as exc:
        errors.append(f"{path}: not readable ({exc.strerror or type(exc).__name__})")
        return None
    return _parse_whole_file(path, data, errors)


def _parse_whole_file(path: Path, data: bytes, errors: list[str]
                      ) -> tuple[Dataset, int | None] | None:
    """Header and PixelData offset (None when not found) from a whole file's ``data``;
    None with the reason in ``errors`` when it is hostile or unreadable."""
    hostile = unclosed_items(data)
    if hostile is not None:
        errors.append(f"{path}: {hostile}")
        return None
    try:
        return parse_header(data)
    except PARSE_FAILURES as exc:
        errors.append(f"{path}: not a readable DICOM file ({exc})")
        return None


#: Attributes the reader turns into text or numbers. A sequence in their place is hostile:
#: converting it recurses through its nesting (seconds and gigabytes at a depth of 1000).
_SCALAR_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Modality",
    "Rows", "Columns", "SamplesPerPixel", "InstanceNumber", "ImageType", "NumberOfFrames",
    "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "RescaleSlope",
    "RescaleIntercept", "PixelPaddingValue", "BitsAllocated", "PixelRepresentation",
)


def _reject_disguised_sequences(ds: Dataset) -> None:
    keyword = disguised_sequence(ds, _SCALAR_KEYWORDS)
    if keyword is not None:
        raise CTInputError(f"{keyword} is a sequence (malformed header)")


