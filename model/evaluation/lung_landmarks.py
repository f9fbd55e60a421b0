"""Lungs and image content from the CT itself: the HU lung rule (no labels needed).

Every volume gets ``lung_bottom`` / ``lung_top`` from its HU values
(:func:`lung_landmarks_from_ct`, rule: :data:`IMAGE_LUNG_RULE`), and the slices with image
content (:func:`occupied_slices`): OpenKBP volumes are padded with empty slices that must
not count as scan extent. :func:`lung_profile` computes both at once; label-map landmarks
(:mod:`model.evaluation.landmarks`) override the image lungs where a map names lungs.

Positions are world z in mm along the patient's superior axis
(:attr:`model.reading.volume.CTVolume.z_mm`); an end of the lung is reported only where
the scan shows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from model.reading.volume import CTVolume

BoolArray = npt.NDArray[np.bool_]
FloatVector = npt.NDArray[np.float64]

#: A slice holds image content when its body mask covers at least this area; OpenKBP
#: volumes are padded with empty (−1024 HU) slices, which must not count as scan extent.
MIN_BODY_AREA_CM2 = 10.0
#: Tissue threshold of the body mask; lung parenchyma (≈ −850 HU) and air lie below it.
BODY_HU = -500.0
#: Air-like voxels inside the body: lung parenchyma, airways and bowel gas.
AIR_HU = -400.0
#: Image lung components smaller than this (after a one-voxel erosion) are ignored.
LUNG_MIN_COMPONENT_ML = 50.0
#: Median HU of a component above which it is parenchyma rather than free gas: lung is
#: air mixed with tissue and vessels (≈ −850 HU), bowel gas and airways are ≈ −1000 HU.
LUNG_MIN_MEDIAN_HU = -950.0
#: In-slice air components at most this large and this close to the body midline are
#: taken as trachea/oesophagus, which are connected to the lungs through the bronchi.
AIRWAY_MAX_AREA_CM2 = 10.0
#: Farthest an airway-like component's centre lies from the body midline, in mm.
AIRWAY_MAX_MIDLINE_MM = 20.0
#: A slice belongs to the lung when its lung area reaches this.
LUNG_MIN_SLICE_AREA_CM2 = 0.5
#: The end slice of the lung run must be smaller than this fraction of the largest lung
#: section, as lungs taper at the apex and base; an abrupt end means the body outline
#: (and with it the lung) was cut, not that the lung ended.
LUNG_MAX_END_FRACTION = 0.25

#: The image lung rule in full, for the model card.
IMAGE_LUNG_RULE = (
    f"Image-derived lungs (any CT, no labels): body = largest 3D component of HU > {BODY_HU:g}, "
    "holes filled slice by slice (so lungs and airways are inside, air around the body is "
    f"not); air = HU < {AIR_HU:g} inside the body; the air is eroded by one voxel "
    "(6-neighbourhood) to cut thin bridges to bowel gas across the diaphragm and the 3D "
    f"components of at least {LUNG_MIN_COMPONENT_ML:g} ml whose median HU is above "
    f"{LUNG_MIN_MEDIAN_HU:g} (parenchyma, not free gas) are kept and grown back by two "
    "voxels within the air; in each slice, components of at most "
    f"{AIRWAY_MAX_AREA_CM2:g} cm² centred within {AIRWAY_MAX_MIDLINE_MM:g} mm of the body "
    "midline are dropped as trachea/oesophagus; lung slices have at least "
    f"{LUNG_MIN_SLICE_AREA_CM2:g} cm² of lung; the lung is the run of consecutive lung "
    "slices around the largest section. lung_bottom / lung_top = z of its lowest / highest "
    "slice, reported only when that slice is not the first / last slice with image content "
    f"and its lung area is below {LUNG_MAX_END_FRACTION:g} × the largest section (lungs "
    "taper; an abrupt end means the scan or the body outline cut the lung). Label-derived "
    "lungs take precedence wherever the label map has lung labels."
)

#: Connectivity within a slice only, for slice-by-slice labelling and hole filling.
_IN_SLICE = np.zeros((3, 3, 3), dtype=bool)
_IN_SLICE[1] = ndi.generate_binary_structure(2, 1)
#: Face connectivity in 3D, for erosion and growing back of the lungs.
_CROSS_3D = ndi.generate_binary_structure(3, 1)


@dataclass
class LungProfile:
    """Per-slice result of the image lung rule, kept for inspection and tests."""

    area_cm2: FloatVector  # image-derived lung area per slice
    occupied: BoolArray  # slices with image content


def _body_mask(hu: npt.NDArray[np.float32]) -> BoolArray:
    """Largest 3D tissue component, holes filled per slice (lungs inside, outside air not)."""
    tissue = hu > BODY_HU
    lab, n = ndi.label(tissue)
    if n == 0:
        return tissue
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == int(sizes.argmax())
    return _fill_holes_per_slice(body)


def body_mask(hu: npt.NDArray[np.float32]) -> BoolArray:
    """The body of every slice: largest 3D tissue component, holes filled slice by slice."""
    return _body_mask(hu)


def _fill_holes_per_slice(mask: BoolArray) -> BoolArray:
    """2D hole filling of every slice at once (faster than ``binary_fill_holes``)."""
    background, n = ndi.label(~mask, structure=_IN_SLICE)
    # background components reaching the in-plane border are outside, the rest are holes
    border = np.concatenate([
        background[:, 0, :].ravel(), background[:, -1, :].ravel(),
        background[:, :, 0].ravel(), background[:, :, -1].ravel(),
    ])
    is_hole = np.ones(n + 1, dtype=bool)
    is_hole[0] = False
    is_hole[border] = False
    filled: BoolArray = mask | is_hole[background]
    return filled


def _crop_to_tissue(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """In-plane crop to the tissue bounding box; wide FOV padding only costs time."""
    tissue: BoolArray = np.any(hu > BODY_HU, axis=0)
    rows = np.flatnonzero(tissue.any(axis=1))
    cols = np.flatnonzero(tissue.any(axis=0))
    if rows.size == 0:
        return hu
    # one pixel of margin keeps the air around the body outside the filled mask
    r0, r1 = max(rows[0] - 1, 0), rows[-1] + 2
    c0, c1 = max(cols[0] - 1, 0), cols[-1] + 2
    return hu[:, r0:r1, c0:c1]


def _parenchyma_components(hu: npt.NDArray[np.float32], air: BoolArray, voxel_ml: float
                           ) -> BoolArray:
    """Large air components that look like lung tissue, before growing them back."""
    seeds: BoolArray = ndi.binary_erosion(air, structure=_CROSS_3D)
    lab, n = ndi.label(seeds)
    if n == 0:
        return seeds
    volume_ml = np.bincount(lab.ravel()) * voxel_ml
    volume_ml[0] = 0.0
    big = np.flatnonzero(volume_ml >= LUNG_MIN_COMPONENT_ML)
    if big.size == 0:
        return np.zeros_like(seeds)
    # medians over the masked voxels only: ndimage.median sorts the whole volume
    values, owners = hu[seeds], lab[seeds]
    is_lung = np.zeros(n + 1, dtype=bool)
    for i in big:
        is_lung[i] = float(np.median(values[owners == i])) > LUNG_MIN_MEDIAN_HU
    lung: BoolArray = is_lung[lab]
    return lung


def _lung_area_per_slice(lung: BoolArray, body: BoolArray, pixel_mm: tuple[float, float]
                         ) -> FloatVector:
    """Lung area per slice in cm², without airway-like components near the midline."""
    pixel_cm2 = pixel_mm[0] * pixel_mm[1] / 100.0
    lab, n = ndi.label(lung, structure=_IN_SLICE)
    area = np.zeros(lung.shape[0])
    if n == 0:
        return area
    index = np.arange(1, n + 1)
    comp_area = np.bincount(lab.ravel(), minlength=n + 1)[1:] * pixel_cm2
    objects = ndi.find_objects(lab)
    comp_slice = np.array([obj[0].start if obj is not None else 0 for obj in objects])
    cols = np.broadcast_to(np.arange(lung.shape[2], dtype=np.float64), lung.shape)
    comp_col = np.asarray(ndi.mean(cols, lab, index))
    body_px = body.sum(axis=(1, 2))
    body_col = (body * cols).sum(axis=(1, 2)) / np.maximum(body_px, 1)
    off_mid_mm = np.abs(comp_col - body_col[comp_slice]) * pixel_mm[1]
    airway = (comp_area <= AIRWAY_MAX_AREA_CM2) & (off_mid_mm <= AIRWAY_MAX_MIDLINE_MM)
    np.add.at(area, comp_slice[~airway], comp_area[~airway])
    return area


def lung_profile(volume: CTVolume) -> LungProfile:
    """Image-derived lung area per slice (see :data:`IMAGE_LUNG_RULE`)."""
    hu = _crop_to_tissue(volume.hu)
    body = _body_mask(hu)
    pixel_cm2 = volume.pixel_spacing_mm[0] * volume.pixel_spacing_mm[1] / 100.0
    occupied = body.sum(axis=(1, 2)) * pixel_cm2 >= MIN_BODY_AREA_CM2
    dz = float(np.median(np.diff(volume.z_mm))) if volume.n_slices > 1 else 1.0
    voxel_ml = pixel_cm2 * dz / 10.0
    air = (hu < AIR_HU) & body
    seeds = _parenchyma_components(hu, air, voxel_ml)
    lung = ndi.binary_dilation(seeds, structure=_CROSS_3D, iterations=2, mask=air)
    area = _lung_area_per_slice(lung, body, volume.pixel_spacing_mm)
    return LungProfile(area_cm2=area, occupied=occupied)


def content_extent(valid_slices: BoolArray | None, n: int) -> tuple[int, int]:
    """First and last slice index with image content (``(0, -1)`` when there is none).

    ``valid_slices`` is None when every one of the ``n`` slices counts.
    """
    if valid_slices is None:
        return 0, n - 1
    idx = np.flatnonzero(valid_slices)
    if idx.size == 0:
        return 0, -1
    return int(idx[0]), int(idx[-1])


def _lung_run(area: FloatVector) -> tuple[int, int] | None:
    """First and last slice of the consecutive lung slices around the largest section."""
    is_lung = area >= LUNG_MIN_SLICE_AREA_CM2
    if not is_lung.any():
        return None
    return run_around(is_lung, int(area.argmax()))


def run_around(mask: npt.NDArray[np.bool_], seed: int) -> tuple[int, int]:
    """First and last index of the run of True in ``mask`` that holds ``seed``."""
    lo = seed
    while lo > 0 and mask[lo - 1]:
        lo -= 1
    hi = seed
    while hi < mask.size - 1 and mask[hi + 1]:
        hi += 1
    return lo, hi


def lung_landmarks_from_profile(profile: LungProfile, z_mm: npt.ArrayLike) -> dict[str, float]:
    """lung_bottom / lung_top from a :class:`LungProfile` (rule: :data:`IMAGE_LUNG_RULE`)."""
    z = np.asarray(z_mm, dtype=np.float64)
    run = _lung_run(profile.area_cm2)
    if run is None:
        return {}
    lo, hi = run
    first, last = content_extent(profile.occupied, z.shape[0])
    limit = LUNG_MAX_END_FRACTION * float(profile.area_cm2.max())
    out: dict[str, float] = {}
    if lo > first and profile.area_cm2[lo] < limit:
        out["lung_bottom"] = float(z[lo])
    if hi < last and profile.area_cm2[hi] < limit:
        out["lung_top"] = float(z[hi])
    return out


def lung_landmarks_from_ct(volume: CTVolume) -> dict[str, float]:
    """Image-derived ``lung_bottom`` / ``lung_top`` of any CT volume.

    Parameters
    ----------
    volume : CTVolume
        The CT in HU; no labels needed.

    Returns
    -------
    dict of str to float
        Landmark name → z in mm (rule: :data:`IMAGE_LUNG_RULE`), only for the visible
        ends: empty for volumes without lungs (limbs, pelvis) or whose lungs are cut at
        both ends.
    """
    return lung_landmarks_from_profile(lung_profile(volume), volume.z_mm)


def occupied_slices(volume: CTVolume) -> BoolArray:
    """Slices with image content: a body section of at least :data:`MIN_BODY_AREA_CM2`.

    Computed with the whole lung rule; use :func:`lung_profile` when both are needed.
    """
    return lung_profile(volume).occupied
