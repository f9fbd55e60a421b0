"""DICOM reader: CT files in, one axial feet → head :class:`CTVolume` per series out."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    MediaStorageDirectoryStorage,
)

from model.reading.hostile import DECODE_ERRORS, READ_ERRORS, disguised_sequence
from model.reading.volume import CTInputError, CTVolume, FloatArray

#: The image storage SOP classes the reader scores (single- and multi-frame CT).
CT_SOP_CLASSES = frozenset(
    {CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage}
)

#: Slices whose positions along the normal differ by at most this are duplicates.
DUPLICATE_TOLERANCE_MM = 0.01
#: Spacings above this multiple of the median spacing are reported as gaps.
GAP_FACTOR = 1.5
#: HU given to PixelPaddingValue pixels (outside the reconstructed field of view).
PADDING_HU = -1024.0
#: Largest image side accepted: CT matrices are at most 2048² in practice; a header asking for
#: more is corrupt or hostile and would make the reader allocate gigabytes.
MAX_MATRIX = 4096
#: Pixel spacings (mm) outside this range are not CT (and would make resampling explode).
PIXEL_SPACING_RANGE_MM = (0.01, 50.0)
#: Largest |coordinate| (mm) of ImagePositionPatient accepted: scanners stay within metres of
#: the isocentre; beyond 100 m float64 z differences lose the slice spacing (1e300 + 5 == 1e300).
MAX_POSITION_MM = 1e5
#: Largest |RescaleSlope| and |RescaleIntercept| accepted. CT stores HU with slope 1 (at most
#: a few) and intercept about −1024; larger values overflow float32 HU into inf and NaN.
MAX_RESCALE_SLOPE = 1e3
MAX_RESCALE_INTERCEPT = 1e5
#: Smaller angles between slice normal and body axis are rounding noise in the cosines.
TILT_WARN_DEG = 0.5

# MemoryError too where a hostile PixelData or sequence length asks pydicom for gigabytes.
_READ_FAILURES: tuple[type[BaseException], ...] = (*READ_ERRORS, MemoryError)
_DECODE_FAILURES: tuple[type[BaseException], ...] = (*DECODE_ERRORS, MemoryError)

Vector = npt.NDArray[np.float64]

_PIXEL_DATA = 0x7FE00010


@dataclass
class DicomReadResult:
    """Volumes read (one per series) and one message per bad file or rejected series."""

    volumes: list[CTVolume] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Header (no pixel data) of every file that was read, CT or not, in reading order: what
    #: a report on these files references, so that no caller reads them a second time.
    headers: list[Dataset] = field(default_factory=list)


@dataclass(eq=False)
class _PixelSource:
    """The one read of a file, shared by its frames until its pixels are copied out."""

    #: Full data set, pixel bytes still undecoded; None once decoded (frees the bytes and
    #: pydicom's cached decoded array) or when the full read failed.
    dataset: Dataset | None
    #: Why the full read failed: reported only if one of the file's frames is selected.
    error: str | None = None


@dataclass
class _Frame:
    """Geometry and rescale of one 2D image: a single-frame file or one frame of a multi-frame."""

    path: Path
    pixels: _PixelSource
    frame: int  # index into the file's pixel array (0 for single-frame files)
    sop_uid: str
    instance: int
    localizer: bool
    row_dir: Vector  # direction of increasing column index
    col_dir: Vector  # direction of increasing row index
    position: Vector  # ImagePositionPatient: centre of the first transmitted pixel
    spacing: tuple[float, float]  # (row spacing, column spacing)
    shape: tuple[int, int]
    slope: float
    intercept: float

    @property
    def centre(self) -> Vector:
        rows, cols = self.shape
        return (
            self.position
            + self.row_dir * (cols - 1) / 2 * self.spacing[1]
            + self.col_dir * (rows - 1) / 2 * self.spacing[0]
        )


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
    per frame and PixelPaddingValue pixels become air (:data:`PADDING_HU`).

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
    series: dict[str, list[_Frame]] = defaultdict(list)
    uids: dict[str, str | None] = {}
    for path in paths:
        # Read each file once, pixel bytes included (decoding waits for .pixel_array): the
        # kept data set serves both grouping and assembly.
        try:
            ds = pydicom.dcmread(path)
            pixels = _PixelSource(ds)
        except _DECODE_FAILURES as full_exc:
            # A file cut inside its pixel data still has a usable header: group it by that
            # and report the pixels as undecodable only if its slices are selected.
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except _READ_FAILURES as exc:
                result.errors.append(f"{path}: not a readable DICOM file ({exc})")
                continue
            pixels = _PixelSource(None, f"{path}: pixel data could not be decoded ({full_exc})")
        try:
            _reject_disguised_sequences(ds)
            if _sop_class(ds) == MediaStorageDirectoryStorage:
                continue
            result.headers.append(_without_pixels(ds))
            frames = _frames(path, pixels, ds)
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
            result.volumes.append(_assemble(uids[key], frames, result.errors))
        except CTInputError as exc:
            result.errors.append(str(exc))
        except _DECODE_FAILURES as exc:
            result.errors.append(f"series could not be assembled ({type(exc).__name__})")
    return result


def _sop_class(ds: Dataset) -> str:
    # Some anonymisers blank SOPClassUID in the data set but leave the file meta intact.
    meta = getattr(ds, "file_meta", None) or Dataset()
    return str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "")


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


def why_not_ct(ds: Dataset) -> str | None:
    """Why a header is no CT image this reader can score; None when it is one.

    A CT image is one of :data:`CT_SOP_CLASSES` with Modality CT (or none, as some
    anonymisers leave it).
    """
    sop_class, modality = _sop_class(ds), str(ds.get("Modality", ""))
    if sop_class in CT_SOP_CLASSES and modality in ("CT", ""):
        return None
    name = UID(sop_class).name if sop_class else "missing"
    return f"not CT (Modality {modality!r}, SOP class {name!r})"


def _reject_disguised_sequences(ds: Dataset) -> None:
    keyword = disguised_sequence(ds, _SCALAR_KEYWORDS)
    if keyword is not None:
        raise CTInputError(f"{keyword} is a sequence (malformed header)")


def _vector(item: Dataset | None, keyword: str, size: int) -> Vector:
    value = None if item is None else item.get(keyword)
    if value is None or isinstance(value, str | bytes) or len(value) != size:
        raise CTInputError(f"missing or malformed {keyword}")
    vec = np.array([float(v) for v in value], dtype=np.float64)
    if not np.all(np.isfinite(vec)):
        raise CTInputError(f"non-finite {keyword}")
    return vec


def _frames(path: Path, pixels: _PixelSource, ds: Dataset) -> list[_Frame]:
    """Header of one file as 2D frames; raises CTInputError with the reason."""
    reason = why_not_ct(ds)
    if reason is not None:
        raise CTInputError(reason)
    sop_class = _sop_class(ds)
    missing = [kw for kw in ("Rows", "Columns") if kw not in ds]
    if missing:
        raise CTInputError(f"missing {', '.join(missing)} (incomplete or truncated header)")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise CTInputError("not a greyscale image (SamplesPerPixel != 1)")
    meta = getattr(ds, "file_meta", None) or Dataset()
    sop_uid = str(ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID") or "")
    instance = int(ds.get("InstanceNumber") or 0)
    shape = (int(ds.Rows), int(ds.Columns))
    if not (min(shape) > 0 and max(shape) <= MAX_MATRIX):
        raise CTInputError(f"implausible matrix {shape[0]}×{shape[1]}")
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    multi_frame = sop_class != CTImageStorage
    n_frames = int(ds.get("NumberOfFrames") or 1) if multi_frame else 1
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []

    def macro(index: int, keyword: str) -> Dataset | None:
        # Enhanced CT puts each functional group either per frame or once in the shared item.
        if not multi_frame:
            return ds
        for groups in (per_frame[index] if index < len(per_frame) else None, *shared[:1]):
            items = None if groups is None else groups.get(keyword)
            if items:
                item: Dataset = items[0]
                return item
        return None

    frames = []
    for index in range(n_frames):
        orientation = _vector(
            macro(index, "PlaneOrientationSequence"), "ImageOrientationPatient", 6
        )
        spacing = _vector(macro(index, "PixelMeasuresSequence"), "PixelSpacing", 2)
        rescale = macro(index, "PixelValueTransformationSequence")
        frame_type = macro(index, "CTImageFrameTypeSequence")
        types = image_type + [
            str(v).upper() for v in (frame_type or Dataset()).get("FrameType", [])
        ]
        low, high = PIXEL_SPACING_RANGE_MM
        if not (low <= min(spacing) and max(spacing) <= high):
            raise CTInputError(f"implausible PixelSpacing {spacing.tolist()} mm")
        if min(np.linalg.norm(orientation[:3]), np.linalg.norm(orientation[3:])) < 1e-6:
            raise CTInputError("degenerate ImageOrientationPatient")
        position = _vector(macro(index, "PlanePositionSequence"), "ImagePositionPatient", 3)
        if np.abs(position).max() > MAX_POSITION_MM:
            raise CTInputError(f"implausible ImagePositionPatient {position.tolist()} mm")
        slope = float((rescale or Dataset()).get("RescaleSlope", 1.0))
        intercept = float((rescale or Dataset()).get("RescaleIntercept", 0.0))
        if not 0 < abs(slope) <= MAX_RESCALE_SLOPE or not abs(intercept) <= MAX_RESCALE_INTERCEPT:
            raise CTInputError(f"implausible RescaleSlope {slope} or RescaleIntercept {intercept}")
        frames.append(
            _Frame(
                path=path,
                pixels=pixels,
                frame=index,
                sop_uid=sop_uid,
                instance=instance,
                localizer="LOCALIZER" in types,
                row_dir=orientation[:3] / np.linalg.norm(orientation[:3]),
                col_dir=orientation[3:] / np.linalg.norm(orientation[3:]),
                position=position,
                spacing=(float(spacing[0]), float(spacing[1])),
                shape=shape,
                slope=slope,
                intercept=intercept,
            )
        )
    return frames


def _keep_majority(frames: list[_Frame], key: Callable[[_Frame], Hashable]) -> list[_Frame]:
    majority, _ = Counter(key(f) for f in frames).most_common(1)[0]
    return [f for f in frames if key(f) == majority]


def _assemble(uid: str | None, frames: list[_Frame], errors: list[str]) -> CTVolume:
    """One series' frames → CTVolume; decode failures are appended to ``errors``."""
    paths = sorted({str(f.path) for f in frames})
    # A single (multi-frame) file is its own source; otherwise the folder holding the files.
    source = (
        paths[0] if len(paths) == 1 else os.path.commonpath([os.path.dirname(p) for p in paths])
    )
    label = f"series {uid or '(no SeriesInstanceUID)'} in {source}"
    warnings = []
    n_all = len(frames)
    frames = [f for f in frames if not f.localizer]
    if not frames:
        raise CTInputError(f"{label}: only localizer images")
    if len(frames) < n_all:
        warnings.append(f"dropped {n_all - len(frames)} localizer image(s)")
    for what, key in (
        (
            "orientation",
            lambda f: tuple(float(v) for v in np.concatenate([f.row_dir, f.col_dir]).round(3)),
        ),
        (
            "matrix size or pixel spacing",
            lambda f: (f.shape, tuple(round(v, 4) for v in f.spacing)),
        ),
    ):
        kept = _keep_majority(frames, key)
        if len(kept) < len(frames):
            warnings.append(
                f"dropped {len(frames) - len(kept)} slice(s) whose {what} differs from the "
                "series majority"
            )
        frames = kept

    ref = frames[0]
    normal = np.cross(ref.row_dir, ref.col_dir)
    if int(np.argmax(np.abs(normal))) != 2:
        raise CTInputError(f"{label}: not an axial series (slice normal {np.round(normal, 3)})")
    tilt = float(np.degrees(np.arccos(min(1.0, abs(float(normal[2]))))))
    if tilt > TILT_WARN_DEG:
        warnings.append(
            f"gantry tilt / oblique slices: slice normal {tilt:.1f}° from the body axis; "
            "slices kept as acquired, z_mm is the slice-centre position"
        )

    # Collapse duplicate positions, keeping the lowest InstanceNumber of each cluster.
    frames.sort(key=lambda f: float(f.position @ normal))
    clusters: list[list[_Frame]] = []
    for f in frames:
        anchor = clusters[-1][0] if clusters else None
        if anchor is not None and (f.position - anchor.position) @ normal <= DUPLICATE_TOLERANCE_MM:
            clusters[-1].append(f)
        else:
            clusters.append([f])
    n_duplicates = len(frames) - len(clusters)
    frames = [min(c, key=lambda f: (f.instance, f.frame, str(f.path))) for c in clusters]
    if n_duplicates:
        warnings.append(
            f"dropped {n_duplicates} slice(s) duplicating the position of another slice "
            "(kept the lowest InstanceNumber)"
        )

    z = np.array([f.centre[2] for f in frames])
    if len(z) > 1 and not np.all(np.diff(z) * np.sign(normal[2]) > 0):
        warnings.append("slice order along the slice normal disagrees with z; ordered by z")
    frames = [frames[i] for i in np.argsort(z, kind="stable")]

    # Decode straight into the final float32 array (no per-slice copies and no stack), laid
    # out canonically so that feet-first, prone or transposed series need no second copy.
    swap, flip_cols, flip_rows = _in_plane_flips(ref.row_dir, ref.col_dir)
    rows, cols = ref.shape
    hu: FloatArray = np.empty((len(frames), *((cols, rows) if swap else (rows, cols))), np.float32)
    as_stored = _stored_view(hu, swap, flip_cols, flip_rows)
    by_file: dict[Path, list[int]] = {}
    for slot, f in enumerate(frames):
        by_file.setdefault(f.path, []).append(slot)
    # Sequential on purpose: a 2-thread pool gave no gain (pydicom's decode is mostly
    # GIL-bound Python, even for JPEG 2000), so it was not worth the complexity.
    filled: list[int] = []
    for slots in by_file.values():
        done, error = _decode_into([frames[i] for i in slots], slots, as_stored)
        filled.extend(done)
        if error is not None:
            errors.append(error)
    if not filled:
        raise CTInputError(f"{label}: no slice could be decoded")
    if len(filled) < len(frames):
        keep = np.sort(np.array(filled))
        hu = hu[keep]
        frames = [frames[i] for i in keep]
    spacing = (ref.spacing[1], ref.spacing[0]) if swap else ref.spacing
    z_mm = np.array([f.centre[2] for f in frames], dtype=np.float64)
    if len(z_mm) > 1 and not np.all(np.diff(z_mm) > 0):
        raise CTInputError(f"{label}: slice centres are not distinct along z")
    warnings.extend(_spacing_warnings(z_mm))
    return CTVolume(
        hu=hu,
        z_mm=z_mm,
        pixel_spacing_mm=spacing,
        source=source,
        series_instance_uid=uid,
        sop_instance_uids=[f.sop_uid for f in frames],
        warnings=warnings,
    )


def _decode_into(
    frames: list[_Frame], slots: list[int], out: FloatArray
) -> tuple[list[int], str | None]:
    """Decode one file, write its ``frames`` as HU into ``out[slots]``; slots filled, error."""
    source = frames[0].pixels
    # Dropped before decoding so the pixel bytes and pydicom's cached decoded array are
    # freed as soon as this file is copied out, not when the whole read ends.
    ds, source.dataset = source.dataset, None
    if ds is None:
        return [], source.error
    try:
        stored = ds.pixel_array.reshape(-1, *frames[0].shape)
        padding_value = ds.get("PixelPaddingValue")
        padding = None if padding_value is None else int(padding_value)
    except DECODE_ERRORS as exc:
        return [], f"{frames[0].path}: pixel data could not be decoded ({exc})"
    done = []
    for f, slot in zip(frames, slots, strict=True):
        if f.frame >= len(stored):
            continue
        raw, plane = stored[f.frame], out[slot]
        # dtype=float32 computes in float32 like astype(float32) * slope + intercept did, so
        # HU are bit-identical (int32 pixels would otherwise be multiplied in float64).
        np.multiply(raw, np.float32(f.slope), out=plane, dtype=np.float32, casting="unsafe")
        plane += np.float32(f.intercept)
        if padding is not None:
            # Padding marks pixels outside the reconstruction circle, not a measured value;
            # read it as air like the training data.
            plane[raw == padding] = PADDING_HU
        done.append(slot)
    return done, None


def _in_plane_flips(row_dir: Vector, col_dir: Vector) -> tuple[bool, bool, bool]:
    """(transpose, flip columns, flip rows) that bring stored pixels to the canonical layout.

    Canonical: columns run towards +x (patient left) and rows towards +y (posterior).
    """
    swap = abs(row_dir[1]) > abs(row_dir[0])  # stored with rows and columns swapped
    if swap:
        row_dir, col_dir = col_dir, row_dir
    # e.g. feet-first: columns run towards patient right; prone: rows run towards anterior.
    return bool(swap), bool(row_dir[0] < 0), bool(col_dir[1] < 0)


def _stored_view(hu: FloatArray, swap: bool, flip_cols: bool, flip_rows: bool) -> FloatArray:
    """View of canonical ``hu`` indexed like the stored pixels (undoes the flips in reverse)."""
    if flip_rows:
        hu = hu[:, ::-1, :]
    if flip_cols:
        hu = hu[:, :, ::-1]
    if swap:
        hu = hu.transpose(0, 2, 1)
    return hu


def _spacing_warnings(z_mm: npt.NDArray[np.float64]) -> list[str]:
    if len(z_mm) < 3:
        return []
    steps = np.diff(z_mm)
    median = float(np.median(steps))
    warnings = []
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if len(gaps):
        worst = int(gaps[np.argmax(steps[gaps])])
        warnings.append(
            f"{len(gaps)} gap(s) larger than {GAP_FACTOR}× the median slice spacing "
            f"{median:.2f} mm (largest {steps[worst]:.2f} mm between z = {z_mm[worst]:.1f} and "
            f"{z_mm[worst + 1]:.1f} mm); slices kept at their true positions"
        )
    if steps.max() - steps.min() > 0.01 * median:
        warnings.append(
            f"non-uniform slice spacing {steps.min():.2f}–{steps.max():.2f} mm "
            f"(median {median:.2f} mm)"
        )
    return warnings
