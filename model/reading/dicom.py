"""DICOM reader: CT files in, one axial feet → head :class:`CTVolume` per series out."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import MediaStorageDirectoryStorage

from model.reading.dicom_assembly import assemble
from model.reading.dicom_frames import Frame, PixelSource, frames_of, sop_class_of
from model.reading.hostile import (
    DECODE_ERRORS,
    READ_ERRORS,
    disguised_sequence,
    unclosed_items,
)
from model.reading.volume import CTInputError, CTVolume

# MemoryError too where a hostile PixelData or sequence length asks pydicom for gigabytes.
_READ_FAILURES: tuple[type[BaseException], ...] = (*READ_ERRORS, MemoryError)
_DECODE_FAILURES: tuple[type[BaseException], ...] = (*DECODE_ERRORS, MemoryError)
_PIXEL_DATA = 0x7FE00010


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
    result = DicomReadResult()
    series: dict[str, list[Frame]] = defaultdict(list)
    uids: dict[str, str | None] = {}
    for path in paths:
        read = _read_file(path, result.errors)
        if read is None:
            continue
        ds, pixels = read
        try:
            _reject_disguised_sequences(ds)
            if sop_class_of(ds) == MediaStorageDirectoryStorage:
                continue
            result.headers.append(_without_pixels(ds))
            frames = frames_of(path, pixels, ds)
            uid = str(ds.get("SeriesInstanceUID") or "") or None
            # Anonymised files may lack the UID; fall back to what separates series.
            key = uid or f"{path.parent}\0{ds.get('FrameOfReferenceUID', '')}"
        except CTInputError as exc:
            result.errors.append(f"{path}: {exc}")
            continue
        except READ_ERRORS as exc:
            result.errors.append(f"{path}: malformed DICOM header ({type(exc).__name__})")
            continue
        series[key].extend(frames)
        uids[key] = uid
    for key in list(series):
        # Popped so each series' data sets are released once it is assembled.
        frames = series.pop(key)
        try:
            result.volumes.append(assemble(uids[key], frames, result.errors))
        except CTInputError as exc:
            result.errors.append(str(exc))
        except _DECODE_FAILURES as exc:
            result.errors.append(f"series could not be assembled ({type(exc).__name__})")
    return result


def _read_file(path: Path, errors: list[str]) -> tuple[Dataset, PixelSource] | None:
    """The data set of one file with its undecoded pixels; None (reason in ``errors``)."""
    # Read each file once, pixel bytes included (decoding waits for .pixel_array): the
    # kept data set serves both grouping and assembly.
    try:
        data = path.read_bytes()
    except OSError as exc:
        errors.append(f"{path}: not readable ({exc.strerror or type(exc).__name__})")
        return None
    hostile = unclosed_items(data)
    if hostile is not None:
        errors.append(f"{path}: {hostile}")
        return None
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        return ds, PixelSource(ds)
    except _DECODE_FAILURES as full_exc:
        # A file cut inside its pixel data still has a usable header: group it by that
        # and report the pixels as undecodable only if its slices are selected.
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except _READ_FAILURES as exc:
            errors.append(f"{path}: not a readable DICOM file ({exc})")
            return None
        return ds, PixelSource(None, f"{path}: pixel data could not be decoded ({full_exc})")


#: Attributes the reader turns into text or numbers. A sequence in their place is hostile:
#: converting it recurses through its nesting (seconds and gigabytes at a depth of 1000).
_SCALAR_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Modality",
    "Rows", "Columns", "SamplesPerPixel", "InstanceNumber", "ImageType", "NumberOfFrames",
    "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "RescaleSlope",
    "RescaleIntercept", "PixelPaddingValue", "BitsAllocated", "PixelRepresentation",
)


def _without_pixels(ds: Dataset) -> Dataset:
    """``ds`` up to its pixel data, sharing its still undecoded elements (no copy of values).

    Raw elements carry their own transfer syntax, so the header decodes like the original.
    """
    header = Dataset({tag: element for tag, element in ds.items() if tag < _PIXEL_DATA})
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        header.file_meta = meta
    implicit_vr, little_endian = ds.original_encoding
    header.set_original_encoding(implicit_vr, little_endian, ds.original_character_set)
    return header


def _reject_disguised_sequences(ds: Dataset) -> None:
    keyword = disguised_sequence(ds, _SCALAR_KEYWORDS)
    if keyword is not None:
        raise CTInputError(f"{keyword} is a sequence (malformed header)")


