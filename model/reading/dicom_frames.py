"""One DICOM file's header as 2D frames: geometry, rescale and where its pixels are.

A single-frame CT image is one frame, an (Legacy Converted) Enhanced CT image one per frame.
Every value a hostile header could make absurd (matrix, spacing, position, rescale) is
checked here, so that assembly never computes with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)

from model.reading.dicom_pixels import PixelSource
from model.reading.header_values import header_value, unique_value
from model.reading.volume import CTInputError

#: The image storage SOP classes the reader scores (single- and multi-frame CT).
CT_SOP_CLASSES = frozenset(
    {CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage}
)


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


Vector = npt.NDArray[np.float64]




@dataclass
class Frame:
    """Geometry and rescale of one 2D image: a single-frame file or one frame of a multi-frame."""

    path: Path
    pixels: PixelSource
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



def sop_class_of(ds: Dataset) -> str:
    """SOP Class UID of a header, from its file meta where the data set lacks it."""
    # Some anonymisers blank SOPClassUID in the data set but leave the file meta intact.
    meta = getattr(ds, "file_meta", None) or Dataset()
    return str(header_value(ds, "SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "")



def why_not_ct(ds: Dataset) -> str | None:
    """Why a header is no CT image this reader can score; None when it is one.

    A CT image is one of :data:`CT_SOP_CLASSES` with Modality CT (or none, as some
    anonymisers leave it).
    """
    sop_class, modality = sop_class_of(ds), str(header_value(ds, "Modality", ""))
    if sop_class in CT_SOP_CLASSES and modality in ("CT", ""):
        return None
    name = UID(sop_class).name if sop_class else "missing"
    return f"not CT (Modality {modality!r}, SOP class {name!r})"



def _vector(item: Dataset | None, keyword: str, size: int, *, repeats: bool = True) -> Vector:
    # repeats=False for values unique to each file (a position), which a cache cannot reuse
    value = None if item is None else (header_value(item, keyword) if repeats
                                       else unique_value(item, keyword, "DS"))
    if value is None or isinstance(value, str | bytes | float | int) or len(value) != size:
        raise CTInputError(f"missing or malformed {keyword}")
    vec = np.array([float(v) for v in value], dtype=np.float64)
    if not np.all(np.isfinite(vec)):
        raise CTInputError(f"non-finite {keyword}")
    return vec



def frames_of(path: Path, pixels: PixelSource, ds: Dataset) -> list[Frame]:
    """Header of one file as 2D frames; raises CTInputError with the reason."""
    reason = why_not_ct(ds)
    if reason is not None:
        raise CTInputError(reason)
    sop_class = sop_class_of(ds)
    missing = [kw for kw in ("Rows", "Columns") if kw not in ds]
    if missing:
        raise CTInputError(f"missing {', '.join(missing)} (incomplete or truncated header)")
    if int(header_value(ds, "SamplesPerPixel", 1)) != 1:
        raise CTInputError("not a greyscale image (SamplesPerPixel != 1)")
    meta = getattr(ds, "file_meta", None) or Dataset()
    sop_uid = str(unique_value(ds, "SOPInstanceUID", "UI")
                  or meta.get("MediaStorageSOPInstanceUID") or "")
    instance = int(unique_value(ds, "InstanceNumber", "IS") or 0)
    shape = (int(header_value(ds, "Rows")), int(header_value(ds, "Columns")))
    if not (min(shape) > 0 and max(shape) <= MAX_MATRIX):
        raise CTInputError(f"implausible matrix {shape[0]}×{shape[1]}")
    image_type = [str(v).upper() for v in (header_value(ds, "ImageType") or [])]
    multi_frame = sop_class != CTImageStorage
    n_frames = int(ds.get("NumberOfFrames") or 1) if multi_frame else 1
    per_frame = (ds.get("PerFrameFunctionalGroupsSequence") or []) if multi_frame else []
    shared = (ds.get("SharedFunctionalGroupsSequence") or []) if multi_frame else []

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
        position = _vector(macro(index, "PlanePositionSequence"), "ImagePositionPatient", 3,
                           repeats=False)
        if np.abs(position).max() > MAX_POSITION_MM:
            raise CTInputError(f"implausible ImagePositionPatient {position.tolist()} mm")
        slope = float(header_value(rescale or Dataset(), "RescaleSlope", 1.0))
        intercept = float(header_value(rescale or Dataset(), "RescaleIntercept", 0.0))
        if not 0 < abs(slope) <= MAX_RESCALE_SLOPE or not abs(intercept) <= MAX_RESCALE_INTERCEPT:
            raise CTInputError(f"implausible RescaleSlope {slope} or RescaleIntercept {intercept}")
        frames.append(
            Frame(
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
