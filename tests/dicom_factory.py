"""The one place tests build DICOM instances.

:func:`ct_instance` makes a minimal instance (a tiny CT image by default; any SOP class,
attribute or pixel size by option) for ingest, query, network and fuzz tests, and
:func:`part10_bytes` encodes it as a Part 10 file; :func:`basic_text_sr` is a small SR.

:func:`write_ct_series` and its siblings write small CT DICOM series from a :class:`CTVolume`
(real CT from the shared data) for reader, SR and end-to-end tests. Those files follow the
CT Image / Enhanced CT IODs closely enough for pydicom, pynetdicom and dciodvfy checks:
Patient, General Study, General Series, Frame of Reference, General Equipment, Image Plane /
functional groups, Image Pixel, CT Image and SOP Common modules. The written geometry is
exact, so a reader must give back ``volume.hu`` (after int rounding) and ``volume.z_mm``:
slice ``k`` has its centre pixel at LPS ``(0, 0, z_mm[k])``.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    BasicTextSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from model.reading.volume import CTVolume

#: In-plane direction cosines (row direction, column direction) per PatientPosition.
ORIENTATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "HFS": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "FFS": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "HFP": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "FFP": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
}

Array = npt.NDArray[np.float64]


def ct_instance(*, sop_class: str = CTImageStorage, sop_uid: str | None = None,
                study_uid: str | None = None, series_uid: str | None = None,
                modality: str = "CT", patient_name: str = "Test^Patient",
                patient_id: str = "PID-1", study_date: str = "20240101",
                series_number: int = 1, instance_number: int = 1,
                body_part: str | None = None, charset: str | None = None,
                size: int | None = 4, **attributes: object) -> Dataset:
    """A minimal instance with its file meta, ready for C-STORE or :func:`part10_bytes`.

    Patient, study, series and SOP identity (UIDs generated when not given) and, unless
    ``size`` is None, a ``size`` × ``size`` MONOCHROME2 image of zeros (16 bits allocated, 12
    stored). ``attributes`` (pydicom keywords) are set last: they add to or override all of
    the above, and None deletes. The file meta follows the SOP class and instance UID.
    """
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate = study_date
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    if body_part:
        ds.BodyPartExamined = body_part
    if size is not None:
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = bytes(2 * size * size)
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(str(ds.get("SOPClassUID", sop_class)))
    ds.file_meta.MediaStorageSOPInstanceUID = UID(str(ds.get("SOPInstanceUID", "1.2")))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def part10_bytes(ds: Dataset) -> bytes:
    """``ds`` encoded as a Part 10 file (preamble, file meta, dataset)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def basic_text_sr() -> bytes:
    """A small Basic Text SR (one finding, ``CHEST``) as a Part 10 file."""
    ds = ct_instance(sop_class=BasicTextSRStorage, modality="SR", patient_name="Test^Forwarding",
                     patient_id="FWD-1", series_number=9901, size=None, StudyDate=None)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator = "18748-4", "LN"
    title.CodeMeaning = "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = [title]
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
    item.ConceptNameCodeSequence = [name]
    item.TextValue = "CHEST"
    ds.ContentSequence = [item]
    return part10_bytes(ds)


def shrink(
    volume: CTVolume, *, slices: slice | Sequence[int] = slice(None), pixel_step: int = 1
) -> CTVolume:
    """Keep some slices and every ``pixel_step``-th pixel (no interpolation: HU stay exact)."""
    index = np.arange(volume.n_slices)[slices]
    return CTVolume(
        hu=np.ascontiguousarray(volume.hu[index, ::pixel_step, ::pixel_step]),
        z_mm=volume.z_mm[index].copy(),
        pixel_spacing_mm=(
            volume.pixel_spacing_mm[0] * pixel_step,
            volume.pixel_spacing_mm[1] * pixel_step,
        ),
        source=volume.source,
    )


def air_slices(volume: CTVolume, n: int) -> CTVolume:
    """The first ``n`` slices of ``volume`` filled with air: a series without a body."""
    return CTVolume(hu=np.full_like(volume.hu[:n], -1024.0), z_mm=volume.z_mm[:n],
                    pixel_spacing_mm=volume.pixel_spacing_mm, source="air")


def write_ct_series(
    volume: CTVolume,
    folder: Path,
    *,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_id: str = "BPR-TEST-001",
    series_number: int = 1,
    patient_position: str = "HFS",
    tilt_deg: float = 0.0,
    reverse: bool = False,
    duplicate: Sequence[int] = (),
    duplicate_offset_hu: float = 100.0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    rescale: tuple[float, float] = (1.0, -1024.0),
    prefix: str = "CT",
) -> list[Path]:
    """Write one single-frame CT Image Storage file per slice into ``folder``.

    Parameters
    ----------
    volume : CTVolume
        Slices to write (rows anterior → posterior, columns right → left, z feet → head).
    folder : Path
        Created if missing.
    series_uid, study_uid, frame_of_reference_uid : str, optional
        Generated when not given; pass the same study UID to put series in one study.
    patient_position : {"HFS", "FFS", "HFP", "FFP"}
        Sets the usual direction cosines, so pixel arrays are stored flipped accordingly.
    tilt_deg : float
        Gantry tilt: the column direction is rotated about the x axis (as on GE scanners).
    reverse : bool
        Number instances (and name files) head → feet instead of feet → head.
    duplicate : sequence of int
        Slices written a second time with a higher InstanceNumber, a new SOPInstanceUID,
        ``duplicate_offset_hu`` added, and a file name sorting before the originals.
    transfer_syntax : str
        Any syntax pydicom can encode (e.g. JPEG2000Lossless, RLELossless).
    rescale : (slope, intercept)
        RescaleSlope / RescaleIntercept; stored values are ``round((hu - intercept) / slope)``.

    Returns
    -------
    list of Path
        Written files, originals in instance order, then duplicates.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series = _series_dataset(
        volume, series_uid, study_uid, frame_of_reference_uid, patient_id, series_number
    )
    series.PatientPosition = patient_position
    row_dir, col_dir = _directions(patient_position, tilt_deg)
    positions = _positions(volume, row_dir, col_dir)
    n = volume.n_slices
    order = list(range(n))[::-1] if reverse else list(range(n))
    jobs = [(k, i + 1, f"{prefix}{i + 1:04d}.dcm", 0.0) for i, k in enumerate(order)]
    jobs += [
        (k, n + j + 1, f"{prefix}0000_dup{j}.dcm", duplicate_offset_hu)
        for j, k in enumerate(duplicate)
    ]
    paths = []
    for k, instance, name, offset in jobs:
        ds = copy.deepcopy(series)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = instance
        ds.AcquisitionNumber = 1
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
        ds.SliceLocation = _ds(volume.z_mm[k])
        ds.PixelSpacing = [_ds(v) for v in volume.pixel_spacing_mm]
        ds.GantryDetectorTilt = _ds(tilt_deg)
        ds.RescaleSlope, ds.RescaleIntercept = _ds(rescale[0]), _ds(rescale[1])
        ds.RescaleType = "HU"
        stored = _stored(volume.hu[k] + offset, *rescale)
        _set_pixels(ds, _as_stored_plane(stored, row_dir, col_dir), transfer_syntax)
        paths.append(_save(ds, folder / name))
    return paths


def write_enhanced_ct(
    volume: CTVolume,
    path: Path,
    *,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_id: str = "BPR-TEST-001",
    series_number: int = 1,
    patient_position: str = "HFS",
    tilt_deg: float = 0.0,
    reverse: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Path:
    """Write ``volume`` as one Enhanced CT Image Storage multi-frame file.

    Orientation and pixel measures go in the shared functional groups; position and rescale
    per frame, with a RescaleIntercept that varies per frame so readers must apply it per
    frame. ``reverse`` stores the frames head → feet.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = _series_dataset(
        volume, series_uid, study_uid, frame_of_reference_uid, patient_id, series_number
    )
    ds.PatientPosition = patient_position
    row_dir, col_dir = _directions(patient_position, tilt_deg)
    positions = _positions(volume, row_dir, col_dir)
    order = list(range(volume.n_slices))[::-1] if reverse else list(range(volume.n_slices))
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(order)
    ds.ContentQualification = "RESEARCH"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    _enhanced_shared_groups(ds, volume, row_dir, col_dir)
    frames, per_frame = [], []
    for i, k in enumerate(order):
        intercept = -1024.0 - 8.0 * (i % 3)
        frames.append(_as_stored_plane(_stored(volume.hu[k], 1.0, intercept), row_dir, col_dir))
        per_frame.append(
            _item(
                FrameContentSequence=[
                    _item(StackID="1", InStackPositionNumber=i + 1, DimensionIndexValues=[i + 1])
                ],
                PlanePositionSequence=[_item(ImagePositionPatient=[_ds(v) for v in positions[k]])],
                PixelValueTransformationSequence=[
                    _item(RescaleIntercept=_ds(intercept), RescaleSlope="1", RescaleType="HU")
                ],
            )
        )
    ds.PerFrameFunctionalGroupsSequence = per_frame
    for keyword in ("SliceThickness", "KVP"):
        del ds[keyword]  # lives in functional groups in the enhanced IOD
    _set_pixels(ds, np.stack(frames), transfer_syntax)
    return _save(ds, path)


def _enhanced_shared_groups(ds: Dataset, volume: CTVolume, row_dir: np.ndarray,
                            col_dir: np.ndarray) -> None:
    """Dimension organization and the functional groups all frames share."""
    dimension_uid = generate_uid()
    ds.DimensionOrganizationSequence = [_item(DimensionOrganizationUID=dimension_uid)]
    ds.DimensionIndexSequence = [
        _item(
            DimensionOrganizationUID=dimension_uid,
            DimensionIndexPointer=Tag("ImagePositionPatient"),
            FunctionalGroupPointer=Tag("PlanePositionSequence"),
        )
    ]
    ds.SharedFunctionalGroupsSequence = [
        _item(
            PixelMeasuresSequence=[
                _item(
                    PixelSpacing=[_ds(v) for v in volume.pixel_spacing_mm],
                    SliceThickness=ds.SliceThickness,
                )
            ],
            PlaneOrientationSequence=[
                _item(ImageOrientationPatient=[_ds(v) for v in (*row_dir, *col_dir)])
            ],
            CTImageFrameTypeSequence=[_item(FrameType=["ORIGINAL", "PRIMARY", "AXIAL", "NONE"])],
        )
    ]


def write_localizer(
    volume: CTVolume,
    path: Path,
    *,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_id: str = "BPR-TEST-001",
    series_number: int = 100,
) -> Path:
    """Write a coronal LOCALIZER CT image (a mean projection of ``volume``) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = _series_dataset(
        volume, series_uid, study_uid, frame_of_reference_uid, patient_id, series_number
    )
    ds.PatientPosition = "HFS"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.InstanceNumber = 1
    projection = volume.hu.mean(axis=1)[::-1]  # rows head → feet, columns right → left
    spacing = float(np.median(np.diff(volume.z_mm))) if volume.n_slices > 1 else 1.0
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    ds.ImagePositionPatient = [
        _ds(-(projection.shape[1] - 1) / 2 * volume.pixel_spacing_mm[1]),
        "0",
        _ds(volume.z_mm[-1]),
    ]
    ds.PixelSpacing = [_ds(spacing), _ds(volume.pixel_spacing_mm[1])]
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "-1024", "HU"
    _set_pixels(ds, _stored(projection, 1.0, -1024.0), ExplicitVRLittleEndian)
    return _save(ds, path)


def _series_dataset(
    volume: CTVolume,
    series_uid: str | None,
    study_uid: str | None,
    frame_of_reference_uid: str | None,
    patient_id: str,
    series_number: int,
) -> Dataset:
    """Attributes shared by every instance of a series (patient, study, series, equipment)."""
    now = datetime(2024, 1, 2, 3, 4, 5)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = f"Test^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"synthetic CT from {Path(volume.source).name}"
    ds.FrameOfReferenceUID = frame_of_reference_uid or generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "bpr-node test factory"
    ds.BodyPartExamined = ""
    ds.KVP = "120"
    ds.SliceThickness = _ds(float(np.median(np.diff(volume.z_mm))) if volume.n_slices > 1 else 1.0)
    ds.ConvolutionKernel = "STANDARD"
    return ds


def _directions(patient_position: str, tilt_deg: float) -> tuple[Array, Array]:
    row, col = (np.array(v) for v in ORIENTATIONS[patient_position])
    t = np.radians(tilt_deg)
    col = np.array([0.0, col[1] * np.cos(t), -np.sin(t)])
    return row, col


def _positions(volume: CTVolume, row_dir: Array, col_dir: Array) -> Array:
    """ImagePositionPatient of each slice so that its centre pixel lies at (0, 0, z)."""
    rows, cols = volume.hu.shape[1:]
    row_spacing, col_spacing = volume.pixel_spacing_mm
    offset = row_dir * (cols - 1) / 2 * col_spacing + col_dir * (rows - 1) / 2 * row_spacing
    centres = np.zeros((volume.n_slices, 3))
    centres[:, 2] = volume.z_mm
    positions: Array = centres - offset
    return positions


def _stored(hu: npt.NDArray[np.float32], slope: float, intercept: float) -> npt.NDArray[np.integer]:
    values = np.round((hu.astype(np.float64) - intercept) / slope)
    if values.min() >= 0 and values.max() <= np.iinfo(np.uint16).max:
        return values.astype(np.uint16)
    return np.clip(values, np.iinfo(np.int16).min, np.iinfo(np.int16).max).astype(np.int16)


def _as_stored_plane(
    plane: npt.NDArray[np.integer], row_dir: Array, col_dir: Array
) -> npt.NDArray[np.integer]:
    # The volume's columns run towards +x and rows towards +y; flip where the cosines do not.
    return np.ascontiguousarray(
        plane[:: 1 if col_dir[1] > 0 else -1, :: 1 if row_dir[0] > 0 else -1]
    )


def _set_pixels(ds: Dataset, pixels: npt.NDArray[np.integer], transfer_syntax: str) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(pixels.dtype == np.int16)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if UID(transfer_syntax).is_compressed:
        ds.compress(transfer_syntax, pixels, generate_instance_uid=False)
    else:
        ds.PixelData = pixels.tobytes()
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)


def _save(ds: Dataset, path: Path) -> Path:
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.save_as(path, enforce_file_format=True)
    return path


def _item(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        if isinstance(value, list) and value and isinstance(value[0], Dataset):
            value = DicomSequence(value)
        setattr(ds, keyword, value)
    return ds


def _ds(value: float) -> str:
    """A decimal string within the 16-character DS limit."""
    text = f"{float(value):.10g}"
    return text if len(text) <= 16 else f"{float(value):.8g}"
