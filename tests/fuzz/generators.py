"""Valid starting points for the fuzz tests: one small CT instance and the run sizes.

Every adversarial input starts as :func:`ct_slice` (built on
:func:`tests.dicom_factory.ct_instance`) or :func:`enhanced_ct` and is damaged by
:mod:`tests.fuzz.damage`, drawn by :mod:`tests.fuzz.strategies`.

The default run is bounded for CI (see ``*_EXAMPLES``: ≥ 10,000 generated inputs plus the
hand-written ones, about a minute on two cores); ``BPR_SOAK=1`` multiplies every example
count by 20 (``BPR_SOAK=<n>`` with n > 1 by n) for a soak run. Generation is derandomized,
so a CI failure replays identically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count
from typing import TypeVar

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
)

from tests.dicom_factory import ct_instance


def _soak_factor() -> int:
    """Example-count multiplier from ``BPR_SOAK`` (unset/0: CI run; 1: ×20; n > 1: ×n)."""
    raw = os.environ.get("BPR_SOAK", "").strip()
    if raw in ("", "0"):
        return 1
    if not raw.isdigit():
        raise ValueError(f"BPR_SOAK must be a non-negative integer, got {raw!r}")
    return 20 if raw == "1" else int(raw)


SOAK = _soak_factor()
#: Inputs per property in the CI run (× SOAK). Sized so that the fuzz modules stay near a
#: minute on two cores: ingest costs ~4 ms an input, a series read ~9 ms, an analysis of
#: 8–12 slices of 64² 30–250 ms (depending on what else the cores run).
INDEX_EXAMPLES = 8400 * SOAK
READ_EXAMPLES = 1500 * SOAK
ANALYSIS_EXAMPLES = 150 * SOAK
#: Series stored and analyzed by the node's worker (SR included), ~0.1–0.5 s each.
WORKER_EXAMPLES = 60 * SOAK
#: The issue asks for at least this many adversarial inputs per CI run.
REQUIRED_TOTAL = 10_000
_uids = count(1)
T = TypeVar("T")


def fresh_uid() -> str:
    """A valid UID never used before in this process (so most inputs are not duplicates)."""
    return f"2.25.{os.getpid()}{next(_uids):09d}"


# --- the valid starting point -------------------------------------------------------------


def phantom_plane(size: int) -> np.ndarray:
    """Stored values (HU + 1024, uint16) of an axial slice: air, body, lungs and a spine."""
    yy, xx = (np.mgrid[0:size, 0:size] - (size - 1) / 2) / (size / 2)
    hu = np.full((size, size), -1000.0)
    hu[(xx / 0.8) ** 2 + (yy / 0.55) ** 2 <= 1] = 40.0
    for side in (-1, 1):
        hu[((xx - side * 0.35) / 0.25) ** 2 + (yy / 0.35) ** 2 <= 1] = -820.0
    hu[xx**2 + (yy - 0.35) ** 2 <= 0.015] = 700.0
    return (hu + 1024.0).astype(np.uint16)


@dataclass(frozen=True)
class SliceSpec:
    """Geometry and identity of one generated CT slice (the series-level knobs)."""

    z: float = 0.0
    instance: int = 1
    size: int = 8
    spacing: tuple[str, str] = ("6", "6")
    orientation: tuple[str, ...] = ("1", "0", "0", "0", "1", "0")
    series_uid: str = "2.25.1"
    study_uid: str = "2.25.2"
    frame_of_reference_uid: str = "2.25.3"
    sop_uid: str | None = None
    localizer: bool = False
    rescale: tuple[str, str] = ("1", "-1024")

def ct_slice(spec: SliceSpec) -> Dataset:
    """A valid single-frame CT Image Storage instance (file meta and preamble included)."""
    half = (spec.size - 1) / 2 * float(spec.spacing[0])
    ds = ct_instance(
        sop_uid=spec.sop_uid or fresh_uid(), study_uid=spec.study_uid,
        series_uid=spec.series_uid, patient_name="Fuzz^Test", patient_id="FUZZ-1",
        study_date="20240102", instance_number=spec.instance, body_part="CHEST",
        charset="ISO_IR 100", size=spec.size,
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER" if spec.localizer else "AXIAL"],
        SeriesDate="20240102", StudyTime="030405", AccessionNumber="ACC1",
        ReferringPhysicianName="", StudyDescription="fuzz", SeriesDescription="fuzz series",
        PatientBirthDate="", PatientSex="O", SliceThickness="5", StudyID="1",
        # The slice centre sits on the z axis, like a scanner's reconstruction centre.
        ImagePositionPatient=[f"{-half:g}", f"{-half:g}", f"{spec.z:g}"],
        ImageOrientationPatient=list(spec.orientation),
        FrameOfReferenceUID=spec.frame_of_reference_uid, PixelSpacing=list(spec.spacing),
        BitsStored=16, HighBit=15, RescaleIntercept=spec.rescale[1],
        RescaleSlope=spec.rescale[0], RescaleType="HU",
        PixelData=phantom_plane(spec.size).tobytes())
    ds["PixelData"].VR = "OW"  # the encoder below writes VRs as they are, never guesses
    _add_meta(ds)
    return ds


def enhanced_ct(specs: Sequence[SliceSpec]) -> Dataset:
    """A valid Enhanced CT multi-frame instance with one frame per spec (geometry shared)."""
    ref = specs[0]
    ds = ct_slice(ref)
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                    "RescaleIntercept", "RescaleSlope", "RescaleType", "SliceThickness"):
        del ds[keyword]
    ds.NumberOfFrames = len(specs)
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([_item(PixelSpacing=list(ref.spacing),
                                                        SliceThickness="5")])
    shared.PlaneOrientationSequence = DicomSequence(
        [_item(ImageOrientationPatient=list(ref.orientation))])
    shared.PixelValueTransformationSequence = DicomSequence(
        [_item(RescaleIntercept=ref.rescale[1], RescaleSlope=ref.rescale[0], RescaleType="HU")])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    half = (ref.size - 1) / 2 * float(ref.spacing[0])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([
        _item(PlanePositionSequence=DicomSequence(
            [_item(ImagePositionPatient=[f"{-half:g}", f"{-half:g}", f"{s.z:g}"])]))
        for s in specs])
    ds.PixelData = np.stack([phantom_plane(ref.size)] * len(specs)).tobytes()
    ds["PixelData"].VR = "OW"
    _add_meta(ds)
    return ds


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


#: Placeholder for a group length that :func:`encode` computes.
_GROUP_LENGTH_TBD = 0xDEADBEEF


def _add_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = _GROUP_LENGTH_TBD
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128


