"""The one in-memory CT representation shared by readers, training and inference."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


class CTInputError(ValueError):
    """An input that cannot be turned into a CT volume; the message names the file and reason."""


@dataclass
class CTVolume:
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

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])

    @property
    def identity(self) -> str:
        """SeriesInstanceUID when known, otherwise the source path."""
        return self.series_instance_uid or self.source
