"""What known region cropping produces (thesis §4.3.2), from a :class:`CropRange`.

* a cropped NIfTI volume in its stored orientation and data type
  (:func:`write_cropped_nifti`),
* the SOP Instance UIDs of the kept slices of a DICOM series (:func:`uids_in_range`,
  :func:`write_uids`), and
* a segmentation mask zeroed outside the cropped slab, the false-positive filter of thesis
  table 5.17 (:func:`filter_mask`).

The crop range itself comes from :func:`model.tools.cropping.crop_range`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from model.reading.volume import CTVolume
from model.tools.cropping import CropRange

FloatVector = npt.NDArray[np.float64]

#: Any image nibabel reads with an affine (NIfTI here).
SpatialImage = nib.spatialimages.SpatialImage


def _load_image(path: Path) -> SpatialImage:
    """A NIfTI (or other spatial) image; a clear error for anything else."""
    try:
        img = nib.load(str(path))
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise ValueError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if not isinstance(img, SpatialImage) or len(img.shape) not in (3, 4):
        raise ValueError(f"{path}: not a 3D image")
    return img


def _superior_axis(img: SpatialImage) -> tuple[int, bool]:
    """Stored array axis that runs along the patient's S axis, and whether it runs S → I."""
    ornt = nib.orientations.io_orientation(img.affine)  # type: ignore[no-untyped-call]
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    return axis, bool(ornt[axis, 1] < 0)


def _stored_slab(img: SpatialImage, start: int, stop: int
                 ) -> tuple[int, int, int]:
    """Axis and index range in the stored array of canonical (feet → head) slices."""
    axis, flipped = _superior_axis(img)
    n = int(img.shape[axis])
    return (axis, n - stop, n - start) if flipped else (axis, start, stop)


def write_cropped_nifti(source: Path, crop: CropRange, out: Path) -> Path:
    """Write the kept slices of a NIfTI volume, in its stored orientation and data type.

    The affine is shifted to the first kept voxel, so every kept voxel keeps its world
    position.

    Raises
    ------
    ValueError
        If the crop is empty or was computed for another number of slices.
    """
    if crop.is_empty:
        raise ValueError("nothing to write: no slice lies in the known range")
    img = _load_image(source)
    axis, lo, hi = _stored_slab(img, crop.start, crop.stop)
    if img.shape[axis] != crop.n_slices:
        raise ValueError(f"{source}: {img.shape[axis]} slices, crop is for {crop.n_slices}")
    index: list[slice] = [slice(None)] * len(img.shape)
    index[axis] = slice(lo, hi)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img.slicer[tuple(index)], str(out))
    return out


def uids_in_range(volume: CTVolume, crop: CropRange) -> list[str]:
    """SOP Instance UIDs of the kept slices, feet → head, each once (multi-frame repeats).

    Raises
    ------
    ValueError
        If the volume has no UIDs (not read from DICOM) or does not match the crop.
    """
    if len(volume.sop_instance_uids) != volume.n_slices:
        raise ValueError(f"{volume.source}: no SOP Instance UID per slice (not a DICOM series)")
    if volume.n_slices != crop.n_slices:
        raise ValueError(f"{volume.source}: {volume.n_slices} slices, crop is for "
                         f"{crop.n_slices}")
    return list(dict.fromkeys(volume.sop_instance_uids[crop.start : crop.stop]))


def write_uids(uids: Iterable[str], out: Path) -> Path:
    """One UID per line."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{u}\n" for u in uids))
    return out


@dataclass(frozen=True)
class MaskFilterResult:
    """What zeroing a mask outside the known range did.

    Attributes
    ----------
    removed_voxels : int
        Non-zero voxels set to zero (false positives outside the known region).
    kept_voxels : int
        Non-zero voxels left.
    removed_slices : int
        Mask slices that had labels and were zeroed.
    """

    removed_voxels: int
    kept_voxels: int
    removed_slices: int


def _slice_z(img: SpatialImage) -> tuple[FloatVector, int, bool]:
    """World S of every slice along the stored S axis (as :func:`read_nifti` computes it)."""
    axis, flipped = _superior_axis(img)
    canonical = nib.as_closest_canonical(img)  # type: ignore[no-untyped-call]
    ni, nj, nk = canonical.shape[:3]
    a = canonical.affine
    centre = a @ np.array([(ni - 1) / 2, (nj - 1) / 2, 0.0, 1.0])
    z = centre[2] + a[2, 2] * np.arange(nk, dtype=np.float64)
    return (z[::-1] if flipped else z), axis, flipped


def filter_mask(mask_path: Path, crop: CropRange, out: Path) -> MaskFilterResult:
    """Zero a segmentation mask outside the cropped slab (false-positive filter, table 5.17).

    Slices are kept by world position (:attr:`CropRange.lower_mm` ..
    :attr:`CropRange.upper_mm`), so the mask may be stored in any orientation; on the
    CT's own grid this keeps exactly the cropped slices. Header and data type stay.

    Parameters
    ----------
    mask_path : Path
        NIfTI label map (0 = background).
    crop : CropRange
        From :func:`crop_range` on the CT the mask belongs to.
    out : Path
        Where to write the filtered mask.

    Returns
    -------
    MaskFilterResult
    """
    img = _load_image(mask_path)
    data = np.asarray(img.dataobj)
    z, axis, _ = _slice_z(img)
    if crop.is_empty or crop.lower_mm is None or crop.upper_mm is None:
        keep = np.zeros(z.size, dtype=bool)
    else:
        keep = (z >= crop.lower_mm) & (z < crop.upper_mm)
    labelled = np.moveaxis(data != 0, axis, 0).reshape(z.size, -1).sum(1)
    filtered = data.copy()
    drop: list[slice | npt.NDArray[np.intp]] = [slice(None)] * data.ndim
    drop[axis] = np.flatnonzero(~keep)
    filtered[tuple(drop)] = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(type(img)(filtered, img.affine, img.header), str(out))
    return MaskFilterResult(
        removed_voxels=int(labelled[~keep].sum()), kept_voxels=int(labelled[keep].sum()),
        removed_slices=int(np.count_nonzero(labelled[~keep])),
    )
