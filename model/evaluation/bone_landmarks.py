"""Pelvic landmarks from bone HU alone (no labels): iliac crest, femoral heads, pelvis bottom.

The rules work on a per-slice :class:`BoneProfile`: bone (HU > :data:`BONE_HU`) inside the
body, split by its distance from the body midline of that slice into a left and a right
lateral band (the iliac wings, acetabula and femora lie there; the spine does not) and a
medial band (sacrum, coccyx and pubic symphysis). :data:`BONE_LANDMARK_RULES` holds one
sentence per landmark; positions are world z in mm along
:attr:`model.reading.volume.CTVolume.z_mm`, and a landmark whose structure reaches the first
or last slice with image content is left out, like the label landmarks of
:mod:`model.evaluation.landmarks`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from model.evaluation.lung_landmarks import (
    LUNG_MIN_SLICE_AREA_CM2,
    LungProfile,
    body_mask,
    content_extent,
    lung_profile,
    run_around,
)
from model.reading.volume import CTVolume

BoolArray = npt.NDArray[np.bool_]
FloatVector = npt.NDArray[np.float64]

#: Cortical and dense cancellous bone; soft tissue with contrast stays below it in the pelvis.
BONE_HU = 200.0
#: Lateral band: bone at least this far from the body midline (clears the lumbar transverse
#: processes and the sacrum) ...
LATERAL_MIN_MM = 60.0
#: ... and at most this far (arms resting beside the trunk lie further out).
LATERAL_MAX_MM = 170.0
#: Medial band half-width: the pubic symphysis, sacrum and coccyx, never the femora.
MEDIAL_MAX_MM = 40.0
#: A slice is part of the pelvic bone run when both lateral bands hold this much bone.
WING_MIN_AREA_CM2 = 2.0
#: The run must contain a slice with this much bone on both sides (acetabula or mid-wings);
#: low ribs alone never reach it.
SEED_MIN_AREA_CM2 = 8.0
#: Medial bone area that counts as pubis or ischium at the bottom of the pelvis.
PUBIS_MIN_AREA_CM2 = 1.0
#: The pelvis bottom lies at most this far below the femoral head top (60–130 mm in the
#: labelled pelvic CTs); below it the knees, which touch in the ICRP phantoms, hold medial bone.
PUBIS_MAX_BELOW_HEAD_MM = 150.0
#: Below the pelvis bottom this many mm of femur-only slices must follow, or the scan may
#: simply end in a gap of the pelvic ring.
FEMUR_ONLY_MIN_MM = 10.0
#: Inscribed radius of the hole-filled lateral bone that only a femoral head (with its
#: acetabulum) reaches; femoral shafts stay near 15 mm and the iliac wings below 10 mm.
FEMORAL_HEAD_MIN_RADIUS_MM = 18.0

#: Bone landmark name → rule, one sentence each, for the model card.
BONE_LANDMARK_RULES: dict[str, str] = {
    "iliac_crest_top": (
        f"z of the highest slice of the pelvic bone run: the highest run of consecutive slices "
        f"with at least {WING_MIN_AREA_CM2:g} cm² of bone (HU > {BONE_HU:g}) "
        f"{LATERAL_MIN_MM:g}–{LATERAL_MAX_MM:g} mm left and right of the body midline that "
        f"contains a slice with {SEED_MIN_AREA_CM2:g} cm² on both sides below the lungs, a "
        "femoral head (below) and no image lung slice; not reported when the run reaches the "
        "last slice with image content"),
    "femoral_head_top": (
        "z of the highest slice of the pelvic bone run where the hole-filled lateral bone on "
        f"both sides has an inscribed radius of at least {FEMORAL_HEAD_MIN_RADIUS_MM:g} mm; "
        "the femur label's top where a label map names the femora"),
    "pelvis_bottom": (
        f"z of the lowest run slice at most {PUBIS_MAX_BELOW_HEAD_MM:g} mm below the femoral "
        f"head top with at least {PUBIS_MIN_AREA_CM2:g} cm² of bone within "
        f"{MEDIAL_MAX_MM:g} mm of the midline (pubis, ischia), reported only when at least "
        f"{FEMUR_ONLY_MIN_MM:g} mm of femur-only run slices follow below it"),
}


@dataclass
class BoneProfile:
    """Per-slice bone areas and femoral-head evidence, kept for inspection and tests."""

    left_cm2: FloatVector  # lateral bone on one side
    right_cm2: FloatVector  # lateral bone on the other side
    medial_cm2: FloatVector  # bone near the midline
    radius_mm: FloatVector  # smaller of the two sides' largest inscribed radius
    lung: BoolArray  # slices of the image lung
    occupied: BoolArray  # slices with image content


def _slice_bands(hu: npt.NDArray[np.float32], body: BoolArray, spacing: tuple[float, float]
                 ) -> tuple[float, float, float, float]:
    """Left, right and medial bone area (cm²) and the smaller lateral inscribed radius."""
    if not body.any():
        return 0.0, 0.0, 0.0, 0.0
    cols = np.arange(hu.shape[1], dtype=np.float64)
    mid = float((body * cols[None, :]).sum() / body.sum())
    dx = (cols - mid) * spacing[1]
    bone = (hu > BONE_HU) & body
    pixel_cm2 = spacing[0] * spacing[1] / 100.0
    left_band = (dx <= -LATERAL_MIN_MM) & (dx >= -LATERAL_MAX_MM)
    right_band = (dx >= LATERAL_MIN_MM) & (dx <= LATERAL_MAX_MM)
    medial_band = np.abs(dx) < MEDIAL_MAX_MM
    left = float(bone[:, left_band].sum()) * pixel_cm2
    right = float(bone[:, right_band].sum()) * pixel_cm2
    medial = float(bone[:, medial_band].sum()) * pixel_cm2
    if min(left, right) < WING_MIN_AREA_CM2:
        return left, right, medial, 0.0
    # marrow is below the threshold, so fill it before measuring how round and thick it is
    dist = ndi.distance_transform_edt(ndi.binary_fill_holes(bone), sampling=spacing)
    radius = min(float(dist[:, left_band].max()), float(dist[:, right_band].max()))
    return left, right, medial, radius


def bone_profile(volume: CTVolume, lungs: LungProfile | None = None) -> BoneProfile:
    """Per-slice bone bands of ``volume`` (``lungs``: its :func:`lung_profile`, if known)."""
    lungs = lungs or lung_profile(volume)
    body = body_mask(volume.hu)
    bands = np.array([_slice_bands(volume.hu[k], body[k], volume.pixel_spacing_mm)
                      for k in range(volume.n_slices)], dtype=np.float64).reshape(-1, 4)
    return BoneProfile(left_cm2=bands[:, 0], right_cm2=bands[:, 1], medial_cm2=bands[:, 2],
                       radius_mm=bands[:, 3],
                       lung=lungs.area_cm2 >= LUNG_MIN_SLICE_AREA_CM2,
                       occupied=lungs.occupied)


def pelvic_run(profile: BoneProfile) -> tuple[int, int] | None:
    """First and last slice of the pelvic bone run, or None.

    The candidates are the runs of both-sided lateral bone that hold a slice of
    :data:`SEED_MIN_AREA_CM2` below the first lung slice, a femoral head and no lung slice
    (ribs joined to the lungs, contrast-filled kidneys and lower ribs fail one of these); the
    pelvis is the highest of them. A scan that reaches the legs continues the run down the
    femora, or gives the knees a run of their own, and the knee condyles are as wide and round
    as the acetabula: in the ICRP whole-body phantoms the widest slice lies at the knees or feet.
    """
    both = np.minimum(profile.left_cm2, profile.right_cm2)
    wing = both >= WING_MIN_AREA_CM2
    lung_idx = np.flatnonzero(profile.lung)
    k = int(lung_idx[0]) - 1 if lung_idx.size else both.size - 1
    while k >= 0:
        if not wing[k]:
            k -= 1
            continue
        lo, hi = run_around(wing, k)
        if (both[lo:k + 1].max() >= SEED_MIN_AREA_CM2 and not profile.lung[lo:hi + 1].any()
                and (profile.radius_mm[lo:hi + 1] >= FEMORAL_HEAD_MIN_RADIUS_MM).any()):
            return lo, hi
        k = lo - 1
    return None


def pelvis_reaches_bottom(profile: BoneProfile) -> bool:
    """Whether the first slice with image content still cuts the pelvic ring."""
    run = pelvic_run(profile)
    first, _ = content_extent(profile.occupied, profile.medial_cm2.size)
    return (run is not None and run[0] <= first
            and bool(profile.medial_cm2[first] >= PUBIS_MIN_AREA_CM2))


def abdomen_floor(profile: BoneProfile, z_mm: npt.ArrayLike) -> float | None:
    """Lowest z that lies above any possible iliac wing, in a volume without a pelvic run.

    Both-sided lateral bone touching the first slice with image content might be the top
    of the wings; the abdomen is only certain above it. None when the volume has a pelvic
    run (then its crest, where visible, is the abdomen's floor) or no content.
    """
    z = np.asarray(z_mm, dtype=np.float64)
    first, last = content_extent(profile.occupied, z.size)
    if last < first or pelvic_run(profile) is not None:
        return None
    both = np.minimum(profile.left_cm2, profile.right_cm2) >= WING_MIN_AREA_CM2
    k = first
    while k <= last and both[k]:
        k += 1
    return float(z[k]) if k <= last else None


def bone_landmarks_from_profile(profile: BoneProfile, z_mm: npt.ArrayLike) -> dict[str, float]:
    """iliac_crest_top, femoral_head_top and pelvis_bottom (rules: :data:`BONE_LANDMARK_RULES`).

    Parameters
    ----------
    profile : BoneProfile
    z_mm : array_like, shape (n_slices,)
        Slice positions, increasing towards the head.

    Returns
    -------
    dict of str to float
        Landmark name → z in mm, only for the landmarks the scan shows.
    """
    z = np.asarray(z_mm, dtype=np.float64)
    run = pelvic_run(profile)
    if run is None:
        return {}
    lo, hi = run
    first, last = content_extent(profile.occupied, z.size)
    out: dict[str, float] = {}
    head = lo + int(np.flatnonzero(profile.radius_mm[lo:hi + 1]
                                   >= FEMORAL_HEAD_MIN_RADIUS_MM)[-1])
    if head < hi:
        out["femoral_head_top"] = float(z[head])
    window = np.arange(lo, head + 1)
    window = window[z[window] >= z[head] - PUBIS_MAX_BELOW_HEAD_MM]
    pubic = window[profile.medial_cm2[window] >= PUBIS_MIN_AREA_CM2]
    if pubic.size:
        bottom = int(pubic[0])
        below_mm = z[bottom] - z[lo]
        if bottom > first and below_mm >= FEMUR_ONLY_MIN_MM:
            out["pelvis_bottom"] = float(z[bottom])
    if hi < last:
        out["iliac_crest_top"] = float(z[hi])
    return out


def bone_landmarks(volume: CTVolume, lungs: LungProfile | None = None) -> dict[str, float]:
    """Bone landmarks of any CT volume (see :data:`BONE_LANDMARK_RULES`).

    Parameters
    ----------
    volume : CTVolume
        The CT in HU; no labels needed.
    lungs : LungProfile, optional
        :func:`~model.evaluation.lung_landmarks.lung_profile` of ``volume`` when the caller
        has it already.

    Returns
    -------
    dict of str to float
        Landmark name → z in mm; empty for volumes without a visible pelvis.
    """
    lungs = lungs or lung_profile(volume)
    return bone_landmarks_from_profile(bone_profile(volume, lungs), volume.z_mm)
