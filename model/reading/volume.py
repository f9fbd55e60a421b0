"""The one in-memory CT representation shared by readers, training and inference."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


class CTInputError(ValueError):
    """An input that cannot be turned into a CT volume; the message names the file and reason."""


class _NamedSeries:
    """What :class:`CTVolume` and :class:`SeriesDescription` derive alike from their fields."""

    z_mm: npt.NDArray[np.float64]
    source: str
    series_instance_uid: str | None

    @property
    def n_slices(self) -> int:
        return int(self.z_mm.shape[0])

    @property
    def identity(self) -> str:
        """SeriesInstanceUID when known, otherwise the source path."""
        return self.series_instance_uid or self.source


@dataclass
class CTVolume(_NamedSeries):
    """A stack of axial CT slices in Hounsfield units, ordered feet → head.

    Attributes
    ----------
    hu : ndarray, shape (n_slices, rows, cols), float32
        Hounsfield units. Rows run anterior → posterior and columns patient right → left
        (the DICOM display convention), whatever the source orientation was.
    z_mm : ndarray, shape (n_slices,), float64
        World position of each slice centre along the patient's superior axis in mm,
        strictly increasing. Spacing may be non-uniform (gaps, tilt, variable pitch).
    pixel_spacing_mm : (float, float)
        Row and column spacing in mm.
    source : str
        File or folder the volume came from (for messages and output identity).
    series_instance_uid : str or None
        SeriesInstanceUID when read from DICOM.
    sop_instance_uids : list of str
        SOPInstanceUID of each slice (DICOM only; for multi-frame the same UID repeats).
    warnings : list of str
        Non-fatal problems found while reading (dropped duplicates, localizers, tilt...).
    """

    hu: FloatArray
    z_mm: npt.NDArray[np.float64]
    pixel_spacing_mm: tuple[float, float]
    source: str
    series_instance_uid: str | None = None
    sop_instance_uids: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise CTInputError(
                f"{self.source}: expected a 3D slice stack, got shape {self.hu.shape}"
            )
        if self.z_mm.shape != (self.hu.shape[0],):
            raise CTInputError(
                f"{self.source}: {self.hu.shape[0]} slices but {self.z_mm.shape[0]} positions"
            )
        if self.hu.shape[0] > 1 and not np.all(np.diff(self.z_mm) > 0):
            raise CTInputError(f"{self.source}: slice positions are not strictly increasing")
        if min(self.pixel_spacing_mm) <= 0 or not np.all(np.isfinite(self.pixel_spacing_mm)):
            raise CTInputError(f"{self.source}: invalid pixel spacing {self.pixel_spacing_mm}")


@dataclass
class SeriesDescription(_NamedSeries):
    """A series without its pixels: what interpretation needs besides scores and content.

    The attributes are those of :class:`CTVolume` (without ``hu``); a series that was
    scored slice chunk by slice chunk is described by one of these instead.
    """

    z_mm: npt.NDArray[np.float64]
    pixel_spacing_mm: tuple[float, float]
    source: str
    series_instance_uid: str | None = None
    sop_instance_uids: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


#: Largest in-plane side of a :class:`ContentSample`.
CONTENT_MAX_PIXELS = 128


def content_step(shape: tuple[int, int]) -> int:
    """In-plane stride that brings a (rows, cols) slice to at most
    :data:`CONTENT_MAX_PIXELS` per side."""
    return max(1, math.ceil(max(shape) / CONTENT_MAX_PIXELS))


@dataclass(frozen=True)
class ContentSample:
    """Every slice of a series at a coarse in-plane stride, in HU: what the image checks see.

    Reading a long series chunk by chunk keeps this sample (about 64 kB per slice) instead
    of the full-resolution volume.
    """

    hu: npt.NDArray[np.float32]
    #: Row and column spacing of the sample's pixels (the series' times the stride).
    pixel_spacing_mm: tuple[float, float]

    @classmethod
    def of(cls, hu: npt.NDArray[np.float32], pixel_spacing_mm: tuple[float, float]
           ) -> ContentSample:
        """The sample of an in-memory volume (a strided view, no copy)."""
        step = content_step((hu.shape[1], hu.shape[2]))
        return cls(hu[:, ::step, ::step],
                   (pixel_spacing_mm[0] * step, pixel_spacing_mm[1] * step))
