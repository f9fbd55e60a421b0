"""NIfTI reader: any orientation in, axial feet → head :class:`CTVolume` out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.reading.padding import pad_below_air, padding_warning
from model.reading.volume import CTInputError, CTVolume

#: File name endings read as NIfTI.
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: Path) -> CTVolume:
    """Read a NIfTI CT volume in HU.

    The array is reoriented to the closest canonical RAS+ grid, so axis 2 runs feet → head
    whatever the stored orientation (this replaces bpreg's flip of all three axes when z is
    negative). Slices are then transposed to the DICOM display convention (rows anterior →
    posterior, columns right → left). ``z_mm`` is the world S coordinate of each slice centre.
    Voxels far below air are scanner padding and become air
    (:func:`~model.reading.padding.pad_below_air`; NIfTI has no padding value), with a
    warning saying how many.

    Raises
    ------
    CTInputError
        If the file cannot be read or is not a 3D volume.
    """
    # imported here: reading DICOM, what the node and most users do, never needs it (27 ms)
    import nibabel as nib

    try:
        img = nib.load(str(path))
        canonical = nib.as_closest_canonical(img)  # type: ignore[no-untyped-call]
        data = np.asarray(canonical.dataobj, dtype=np.float32)
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise CTInputError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CTInputError(f"{path}: expected a 3D volume, got shape {data.shape}")
    affine = canonical.affine
    zooms = canonical.header.get_zooms()[:3]
    ni, nj, nk = data.shape
    centre = affine @ np.array([(ni - 1) / 2, (nj - 1) / 2, 0.0, 1.0])
    z_mm = centre[2] + affine[2, 2] * np.arange(nk, dtype=np.float64)
    if affine[2, 2] <= 0:
        raise CTInputError(f"{path}: slice axis does not run towards the head after reorienting")
    # (i: R→…, j: A→…, k) → (k, rows anterior→posterior, cols right→left)
    hu = np.ascontiguousarray(np.transpose(data[::-1, ::-1, :], (2, 1, 0)))
    warnings = []
    below_air, withheld = pad_below_air(hu)
    padded = padding_warning(hu.size, below_air_voxels=below_air, withheld=withheld)
    if padded is not None:
        warnings.append(padded)
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3])), atol=1e-3):
        warnings.append("oblique affine: slices are scored as stored, positions from the affine")
    return CTVolume(
        hu=hu,
        z_mm=z_mm,
        pixel_spacing_mm=(float(zooms[1]), float(zooms[0])),
        source=str(path),
        warnings=warnings,
    )
