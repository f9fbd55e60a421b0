"""Anatomical landmark positions per CT volume, used by the evaluation metrics (thesis §4.2).

Landmarks come from two sources:

* label maps (``labels/<id>.nii.gz`` + ``.json`` of the shared data: OpenKBP head-and-neck
  organs at risk, the OnkoDICOM thorax and the Pelvic-Ref pelvis contours), and
* the CT itself, for the lungs of every volume (an HU rule, no labels needed).

Every position is a world z in mm along the patient's superior axis, the same axis as
:attr:`model.reading.volume.CTVolume.z_mm`. A landmark is reported only where the scan shows it:
a structure that reaches the first or last slice with image content in the direction of
the landmark may continue outside the scan, so its extreme is unknown and left out.

:data:`LANDMARK_RULES` holds one sentence per landmark for the model card;
:data:`IMAGE_LUNG_RULE` describes the HU lung rule in full.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from model.reading.nifti import read_nifti
from model.reading.volume import CTInputError, CTVolume

BoolArray = npt.NDArray[np.bool_]
FloatVector = npt.NDArray[np.float64]

#: A labelled structure with fewer voxels than this is treated as absent: single stray
#: voxels from contour rasterisation are not evidence of an organ.
MIN_STRUCTURE_VOXELS = 20
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
AIRWAY_MAX_MIDLINE_MM = 20.0
#: A slice belongs to the lung when its lung area reaches this.
LUNG_MIN_SLICE_AREA_CM2 = 0.5
#: The end slice of the lung run must be smaller than this fraction of the largest lung
#: section, as lungs taper at the apex and base; an abrupt end means the body outline
#: (and with it the lung) was cut, not that the lung ended.
LUNG_MAX_END_FRACTION = 0.25

#: Label names per structure; a structure of several names is their union.
LABEL_STRUCTURES: dict[str, tuple[str, ...]] = {
    "mandible": ("mandible",),
    "brainstem": ("brainstem",),
    "larynx": ("larynx",),
    "parotid": ("parotid_right", "parotid_left"),
    "lung": ("lung_right", "lung_left"),
    "heart": ("heart",),
    "liver": ("liver",),
    "femur": ("femur_right", "femur_left"),
    "bladder": ("urinary_bladder",),
    "prostate": ("prostate",),
}

Position = Literal["top", "bottom", "centre"]


@dataclass(frozen=True)
class LabelLandmark:
    """A landmark read from a label map: one extreme (or the centre) of a structure."""

    name: str
    structure: str
    position: Position


#: Label-map landmarks in feet → head order of a typical body.
LABEL_LANDMARKS: tuple[LabelLandmark, ...] = (
    LabelLandmark("femoral_head_top", "femur", "top"),
    LabelLandmark("prostate_centre", "prostate", "centre"),
    LabelLandmark("bladder_top", "bladder", "top"),
    LabelLandmark("liver_bottom", "liver", "bottom"),
    LabelLandmark("lung_bottom", "lung", "bottom"),
    LabelLandmark("heart_bottom", "heart", "bottom"),
    LabelLandmark("liver_top", "liver", "top"),
    LabelLandmark("heart_top", "heart", "top"),
    LabelLandmark("lung_top", "lung", "top"),
    LabelLandmark("larynx_bottom", "larynx", "bottom"),
    LabelLandmark("larynx_top", "larynx", "top"),
    LabelLandmark("mandible_bottom", "mandible", "bottom"),
    LabelLandmark("brainstem_bottom", "brainstem", "bottom"),
    LabelLandmark("parotid_top", "parotid", "top"),
    LabelLandmark("brainstem_top", "brainstem", "top"),
)

#: All landmark names, feet → head.
LANDMARK_NAMES: tuple[str, ...] = tuple(lm.name for lm in LABEL_LANDMARKS)

_EDGE_NOTE = (
    "; not reported when the structure reaches the {edge} slice with image content "
    f"or has fewer than {MIN_STRUCTURE_VOXELS} voxels"
)
_POSITION_TEXT: dict[Position, str] = {
    "top": "z of the highest slice containing {what}" + _EDGE_NOTE.format(edge="last"),
    "bottom": "z of the lowest slice containing {what}" + _EDGE_NOTE.format(edge="first"),
    "centre": (
        "voxel-weighted mean z of {what}" + _EDGE_NOTE.format(edge="first or last")
    ),
}

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


def _describe(lm: LabelLandmark) -> str:
    what = " or ".join(LABEL_STRUCTURES[lm.structure])
    text = _POSITION_TEXT[lm.position].format(what=what)
    if lm.structure == "lung":
        text += "; in volumes without lung labels, from the CT by the image lung rule"
    return text


#: Landmark name → rule, one sentence each, for the model card.
LANDMARK_RULES: dict[str, str] = {lm.name: _describe(lm) for lm in LABEL_LANDMARKS}


def _slice_counts(labels: npt.NDArray[np.integer], n_values: int) -> npt.NDArray[np.int64]:
    """Voxel count of every label value in every slice, shape (n_slices, n_values)."""
    n = labels.shape[0]
    flat = labels.reshape(n, -1).astype(np.intp)
    flat = flat + (np.arange(n, dtype=np.intp) * n_values)[:, None]
    counts = np.bincount(flat.ravel(), minlength=n * n_values)
    return counts.reshape(n, n_values).astype(np.int64)


def _extent(valid_slices: BoolArray | None, n: int) -> tuple[int, int]:
    """First and last slice index with image content."""
    if valid_slices is None:
        return 0, n - 1
    idx = np.flatnonzero(valid_slices)
    if idx.size == 0:
        return 0, -1
    return int(idx[0]), int(idx[-1])


def _landmark_z(
    per_slice: npt.NDArray[np.int64], position: Position, z_mm: FloatVector, first: int, last: int
) -> float | None:
    """z of one landmark from a structure's per-slice voxel count, or None if not visible."""
    if per_slice.sum() < MIN_STRUCTURE_VOXELS:
        return None
    present = np.flatnonzero(per_slice)
    lo, hi = int(present[0]), int(present[-1])
    if position in ("bottom", "centre") and lo <= first:
        return None
    if position in ("top", "centre") and hi >= last:
        return None
    if position == "bottom":
        return float(z_mm[lo])
    if position == "top":
        return float(z_mm[hi])
    return float(np.average(z_mm, weights=per_slice))


def landmarks_from_labels(
    labels: npt.NDArray[np.integer],
    names: dict[int, str],
    z_mm: npt.ArrayLike,
    *,
    valid_slices: BoolArray | None = None,
) -> dict[str, float]:
    """Landmark positions from a label map.

    Parameters
    ----------
    labels : ndarray of int, shape (n_slices, rows, cols)
        Label map with the slice axis first, slice ``k`` at ``z_mm[k]`` (the axis order of
        :attr:`CTVolume.hu`; in-plane order does not matter here).
    names : dict of int to str
        Label value → structure name (``labels/<id>.json``); unknown names are ignored.
    z_mm : array_like, shape (n_slices,)
        Slice positions, increasing towards the head.
    valid_slices : ndarray of bool, shape (n_slices,), optional
        Slices with image content (see :func:`occupied_slices`); structures touching the
        first or last of them count as cut. Default: all slices.

    Returns
    -------
    dict of str to float
        Landmark name → z in mm, only for the landmarks that are visible (see
        :data:`LANDMARK_RULES`).
    """
    z = np.asarray(z_mm, dtype=np.float64)
    if labels.ndim != 3 or labels.shape[0] != z.shape[0]:
        raise ValueError(f"label map shape {labels.shape} does not match {z.shape[0]} slices")
    n_values = int(labels.max(initial=0)) + 1
    counts = _slice_counts(labels, n_values)
    value_of = {name: value for value, name in names.items() if 0 < value < n_values}
    first, last = _extent(valid_slices, z.shape[0])
    out: dict[str, float] = {}
    for lm in LABEL_LANDMARKS:
        values = [value_of[n] for n in LABEL_STRUCTURES[lm.structure] if n in value_of]
        if not values:
            continue
        z_lm = _landmark_z(counts[:, values].sum(axis=1), lm.position, z, first, last)
        if z_lm is not None:
            out[lm.name] = z_lm
    return out


def has_lung_labels(names: dict[int, str]) -> bool:
    """Whether a label map names any lung structure (its lungs then override the image)."""
    return any(n in LABEL_STRUCTURES["lung"] for n in names.values())


# --- image-derived lungs -------------------------------------------------------------------

#: Connectivity within a slice only, for slice-by-slice labelling and hole filling.
_IN_SLICE = np.zeros((3, 3, 3), dtype=bool)
_IN_SLICE[1] = ndi.generate_binary_structure(2, 1)
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


def _lung_run(area: FloatVector) -> tuple[int, int] | None:
    """First and last slice of the consecutive lung slices around the largest section."""
    is_lung = area >= LUNG_MIN_SLICE_AREA_CM2
    if not is_lung.any():
        return None
    peak = int(area.argmax())
    lo = peak
    while lo > 0 and is_lung[lo - 1]:
        lo -= 1
    hi = peak
    while hi < area.size - 1 and is_lung[hi + 1]:
        hi += 1
    return lo, hi


def lung_landmarks_from_profile(profile: LungProfile, z_mm: npt.ArrayLike) -> dict[str, float]:
    """lung_bottom / lung_top from a :class:`LungProfile` (rule: :data:`IMAGE_LUNG_RULE`)."""
    z = np.asarray(z_mm, dtype=np.float64)
    run = _lung_run(profile.area_cm2)
    if run is None:
        return {}
    lo, hi = run
    first, last = _extent(profile.occupied, z.shape[0])
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


# --- whole volumes ------------------------------------------------------------------------


def label_names_path(label_path: Path) -> Path:
    """``labels/<id>.json`` beside ``labels/<id>.nii.gz``."""
    name = label_path.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else label_path.stem
    return label_path.with_name(stem + ".json")


def read_label_map(label_path: Path) -> tuple[npt.NDArray[np.uint8], dict[int, str]]:
    """Read a label map in :attr:`CTVolume.hu` axis order, with its value → name table.

    The map is reoriented like :func:`model.reading.nifti.read_nifti` reorients the CT (closest
    canonical RAS+, then (slice, row, column)), so voxel ``[k, r, c]`` of both agree.

    Raises
    ------
    CTInputError
        If the map or its ``.json`` cannot be read.
    """
    try:
        img = nib.load(str(label_path))
        canonical = nib.as_closest_canonical(img)  # type: ignore[no-untyped-call]
        data = np.asarray(canonical.dataobj).astype(np.uint8, copy=False)
        raw_names = json.loads(label_names_path(label_path).read_text())
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise CTInputError(f"{label_path}: unreadable label map ({exc})") from exc
    if data.ndim != 3:
        raise CTInputError(f"{label_path}: expected a 3D label map, got shape {data.shape}")
    labels = np.ascontiguousarray(np.transpose(data[::-1, ::-1, :], (2, 1, 0)))
    names = {int(k): str(v) for k, v in raw_names.items()}
    return labels, names


def landmarks_for_volume(
    volume: CTVolume,
    labels: npt.NDArray[np.integer] | None = None,
    names: dict[int, str] | None = None,
    *,
    profile: LungProfile | None = None,
) -> dict[str, float]:
    """All landmarks of one volume: image-derived lungs, then label landmarks over them.

    Lung landmarks come from the labels alone when the map names lungs, even where the
    labels leave one out as cut (the image would not see more of the lung either).
    ``profile`` is :func:`lung_profile` of ``volume`` when the caller has it already.
    """
    profile = profile or lung_profile(volume)
    out = lung_landmarks_from_profile(profile, volume.z_mm)
    if labels is None or names is None:
        return _ordered(out)
    if labels.shape != volume.hu.shape:
        raise CTInputError(
            f"{volume.source}: label map shape {labels.shape} differs from CT {volume.hu.shape}"
        )
    if has_lung_labels(names):
        out = {}
    out.update(landmarks_from_labels(labels, names, volume.z_mm, valid_slices=profile.occupied))
    return _ordered(out)


def _ordered(landmarks: dict[str, float]) -> dict[str, float]:
    order = {name: i for i, name in enumerate(LANDMARK_NAMES)}
    return dict(sorted(landmarks.items(), key=lambda kv: order.get(kv[0], len(order))))


def volume_landmarks(ct_path: Path, label_path: Path | None = None) -> dict[str, float]:
    """Landmarks of a NIfTI CT volume and its optional label map.

    Parameters
    ----------
    ct_path : Path
        ``ct/<id>.nii.gz``.
    label_path : Path, optional
        ``labels/<id>.nii.gz``; its value → name table is read from ``labels/<id>.json``.

    Returns
    -------
    dict of str to float
        Landmark name → z in mm (the CTVolume's ``z_mm`` axis), feet → head order.

    Raises
    ------
    CTInputError
        If a file cannot be read or the label map does not match the CT grid.
    """
    volume = read_nifti(ct_path)
    if label_path is None:
        return landmarks_for_volume(volume)
    labels, names = read_label_map(label_path)
    return landmarks_for_volume(volume, labels, names)
