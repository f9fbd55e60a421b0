"""Anatomical landmark positions per CT volume, used by the evaluation metrics (thesis §4.2).

Landmarks come from two sources:

* label maps (``labels/<id>.nii.gz`` + ``.json`` of the shared data: OpenKBP head-and-neck
  organs at risk, the OnkoDICOM thorax and the Pelvic-Ref pelvis contours), read here
  (:func:`read_label_map`, :func:`landmarks_from_labels`), and
* the CT itself, for the lungs and the bony pelvis of every volume (HU rules, no labels
  needed: :mod:`model.evaluation.lung_landmarks`, :mod:`model.evaluation.bone_landmarks`).

:func:`landmarks_for_volume` and :func:`volume_landmarks` combine both. Every position is a
world z in mm along the patient's superior axis, the same axis as
:attr:`model.reading.volume.CTVolume.z_mm`. A landmark is reported only where the scan shows it:
a structure that reaches the first or last slice with image content in the direction of
the landmark may continue outside the scan, so its extreme is unknown and left out.

:data:`LANDMARK_RULES` holds one sentence per landmark for the model card;
:data:`~model.evaluation.lung_landmarks.IMAGE_LUNG_RULE` describes the HU lung rule in full.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import numpy.typing as npt

from model.evaluation.bone_landmarks import (
    BONE_LANDMARK_RULES,
    BoneProfile,
    bone_landmarks_from_profile,
    bone_profile,
)
from model.evaluation.lung_landmarks import (
    LungProfile,
    content_extent,
    lung_landmarks_from_profile,
    lung_profile,
)
from model.reading.nifti import read_nifti
from model.reading.volume import CTInputError, CTVolume

BoolArray = npt.NDArray[np.bool_]
FloatVector = npt.NDArray[np.float64]

#: A labelled structure with fewer voxels than this is treated as absent: single stray
#: voxels from contour rasterisation are not evidence of an organ.
MIN_STRUCTURE_VOXELS = 20

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

#: All landmark names, feet → head: the label landmarks and the image bone landmarks
#: (pelvis_bottom, iliac_crest_top; femoral_head_top has both sources).
LANDMARK_NAMES: tuple[str, ...] = (
    "pelvis_bottom", *(lm.name for lm in LABEL_LANDMARKS[:3]), "iliac_crest_top",
    *(lm.name for lm in LABEL_LANDMARKS[3:]),
)

#: When a label landmark is left out, appended to each rule text.
_EDGE_NOTE = (
    "; not reported when the structure reaches the {edge} slice with image content "
    f"or has fewer than {MIN_STRUCTURE_VOXELS} voxels"
)
#: Rule text of each landmark position; ``{what}`` is the structure's label names.
_POSITION_TEXT: dict[Position, str] = {
    "top": "z of the highest slice containing {what}" + _EDGE_NOTE.format(edge="last"),
    "bottom": "z of the lowest slice containing {what}" + _EDGE_NOTE.format(edge="first"),
    "centre": (
        "voxel-weighted mean z of {what}" + _EDGE_NOTE.format(edge="first or last")
    ),
}


def _describe(lm: LabelLandmark) -> str:
    what = " or ".join(LABEL_STRUCTURES[lm.structure])
    text = _POSITION_TEXT[lm.position].format(what=what)
    if lm.structure == "lung":
        text += "; in volumes without lung labels, from the CT by the image lung rule"
    return text


#: Landmark name → rule, one sentence each, for the model card.
LANDMARK_RULES: dict[str, str] = {
    **{name: f"image bone rule: {rule}" for name, rule in BONE_LANDMARK_RULES.items()},
    **{lm.name: _describe(lm) for lm in LABEL_LANDMARKS},
}
LANDMARK_RULES["femoral_head_top"] += (
    "; without a femur label, the image bone rule: " + BONE_LANDMARK_RULES["femoral_head_top"])


def _slice_counts(labels: npt.NDArray[np.integer], n_values: int) -> npt.NDArray[np.int64]:
    """Voxel count of every label value in every slice, shape (n_slices, n_values)."""
    n = labels.shape[0]
    flat = labels.reshape(n, -1).astype(np.intp)
    flat = flat + (np.arange(n, dtype=np.intp) * n_values)[:, None]
    counts = np.bincount(flat.ravel(), minlength=n * n_values)
    return counts.reshape(n, n_values).astype(np.int64)


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
        Slices with image content (see
        :func:`~model.evaluation.lung_landmarks.occupied_slices`); structures touching the
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
    first, last = content_extent(valid_slices, z.shape[0])
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
    bones: BoneProfile | None = None,
) -> dict[str, float]:
    """All landmarks of one volume: image-derived bones and lungs, then label landmarks
    over them.

    Lung landmarks come from the labels alone when the map names lungs, even where the
    labels leave one out as cut (the image would not see more of the lung either).
    ``profile`` and ``bones`` are :func:`lung_profile` and
    :func:`~model.evaluation.bone_landmarks.bone_profile` of ``volume`` when the caller
    has them already.
    """
    profile = profile or lung_profile(volume)
    bones = bones or bone_profile(volume, profile)
    out = bone_landmarks_from_profile(bones, volume.z_mm)
    out.update(lung_landmarks_from_profile(profile, volume.z_mm))
    if labels is None or names is None:
        return _ordered(out)
    if labels.shape != volume.hu.shape:
        raise CTInputError(
            f"{volume.source}: label map shape {labels.shape} differs from CT {volume.hu.shape}"
        )
    if has_lung_labels(names):
        out = {k: v for k, v in out.items() if k not in ("lung_bottom", "lung_top")}
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
