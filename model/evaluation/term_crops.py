"""z-crops of real volumes with a known clinical BodyPartExamined term.

Clinical regions, feet → head, with the landmark at each boundary:

* pelvis: ``pelvis_bottom`` (lowest pubis/ischium) up to ``iliac_crest_top``;
* abdomen: ``iliac_crest_top`` up to ``lung_bottom``;
* chest: ``lung_bottom`` up to ``lung_top`` (thoracic inlet);
* neck: ``lung_top`` up to ``brainstem_bottom`` (≈ foramen magnum, the skull base);
* head: ``brainstem_bottom`` up to the vertex (the last slice with image content).

:func:`volume_anatomy` finds each region's extent in a volume (:data:`EXTENT_RULE`) from
label, lung and bone landmarks (:mod:`model.evaluation.landmarks`,
:mod:`model.evaluation.bone_landmarks`); :func:`crops_for_volume` cuts crops of every term of
:data:`CROP_TERMS` it allows (rule: :data:`CROP_RULE`); :func:`crop_violations` re-checks a
crop against the rule. Positions are slice-centre z in mm (:attr:`CTVolume.z_mm`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from model.evaluation.bone_landmarks import (
    abdomen_floor,
    bone_profile,
    pelvis_reaches_bottom,
)
from model.evaluation.landmarks import landmarks_for_volume
from model.evaluation.lung_landmarks import (
    LUNG_MIN_SLICE_AREA_CM2,
    content_extent,
    lung_profile,
)
from model.interpretation.clinical import clinical_rules
from model.reading.volume import CTVolume

#: Clinical regions, feet → head.
REGIONS: tuple[str, ...] = ("pelvis", "abdomen", "chest", "neck", "head")
#: Terms the crops are cut for → their regions, feet → head (as in ``dicom_body_parts.csv``).
CROP_TERMS: dict[str, tuple[str, ...]] = {
    "HEAD": ("head",), "NECK": ("neck",), "HEADNECK": ("neck", "head"),
    "NECKCHEST": ("chest", "neck"), "CHEST": ("chest",), "CHESTABDOMEN": ("abdomen", "chest"),
    "ABDOMEN": ("abdomen",), "ABDOMENPELVIS": ("pelvis", "abdomen"), "PELVIS": ("pelvis",),
    "CHESTABDPELVIS": ("pelvis", "abdomen", "chest"),
}
#: Terms whose crops count as torso crops in the summary.
TORSO_TERMS: frozenset[str] = frozenset(
    t for t in CROP_TERMS if any(k in t for k in ("CHEST", "ABD", "PELVIS")))
#: An end region of a crop must be covered over at least this fraction of its length ...
END_FRACTION = 0.4
#: ... and at least this many mm beyond the length from which the BodyPartExamined rule
#: counts the region (``min_mm`` of ``model/data/clinical_regions.csv``): a crop's term must
#: not hang on a landmark error of a few slices.
END_MARGIN_MM = 20.0
#: Farthest a crop may reach into a region outside its term, in mm (the crops cut here
#: never do; :func:`crop_violations` allows this for landmark error).
OUTSIDE_TOLERANCE_MM = 10.0

EXTENT_RULE = (
    "A region's extent runs between its two boundary landmarks; where a boundary landmark "
    "is missing, the region reaches the scan edge only with evidence: the head always "
    "reaches the last content slice above brainstem_bottom; the chest reaches an edge whose "
    "content slice still shows image lung; the abdomen reaches up to the last content slice "
    "above an iliac crest when the scan has no lung, and down to the lowest slice above any "
    "both-sided lateral bone when the scan has no pelvic run; the pelvis reaches the first "
    "content slice while that slice still cuts the pelvic ring. A neck crop's top stays "
    "at or below mandible_bottom (the face above is neither clearly head nor neck)."
)
CROP_RULE = (
    f"A crop of term T covers every inner region of T fully and each end region over at "
    f"least max(its clinical min_mm + {END_MARGIN_MM:g} mm, {END_FRACTION:g} × the region's "
    "extent in the volume), and "
    "stays inside T's regions; per term and volume up to four deterministic variants: "
    "'full' (both ends at the farthest allowed slice), 'short' (both ends at the shortest "
    "allowed cover), 'low' and 'high' (one end each); single-region terms: the whole "
    "extent, its lower and upper 60 % and its middle half (never under the minimum cover)."
)


@dataclass(frozen=True)
class RegionExtent:
    """The z range of a region in one volume (``top_limit``: highest z a crop may end at)."""

    lo: float
    hi: float
    length_mm: float
    top_limit: float
    min_mm: float  # the region's clinical min_mm + END_MARGIN_MM

    @property
    def need_mm(self) -> float:
        """Cover an end region of a crop must reach."""
        return max(self.min_mm, END_FRACTION * self.length_mm)


@dataclass(frozen=True)
class VolumeAnatomy:
    """Landmarks and region extents of one volume."""

    name: str
    landmarks: dict[str, float]
    extents: dict[str, RegionExtent] = field(default_factory=dict)


@dataclass(frozen=True)
class Crop:
    """Slices ``start:stop`` of a volume, whose clinical term is ``term``."""

    volume: str
    term: str
    variant: str
    start: int
    stop: int
    z_lo: float
    z_hi: float


def _extent(region: str, lo: float | None, hi: float | None, *,
            top: float | None = None) -> RegionExtent | None:
    min_mm = clinical_rules()[region].min_mm + END_MARGIN_MM
    if lo is None or hi is None or hi - lo < min_mm:
        return None
    top_limit = hi if top is None else min(top, hi)
    return RegionExtent(lo, hi, hi - lo, top_limit, min_mm)


def region_extents(lm: dict[str, float], z_first: float, z_last: float, *,
                   lung_at: tuple[bool, bool], has_lung: bool, pelvis_at_bottom: bool,
                   floor: float | None) -> dict[str, RegionExtent]:
    """Region extents from landmarks and edge evidence (rule: :data:`EXTENT_RULE`).

    Parameters
    ----------
    lm : dict of str to float
        Landmarks (label, lung and bone).
    z_first, z_last : float
        z of the first and last slice with image content.
    lung_at : (bool, bool)
        Whether the first / last content slice shows image lung.
    has_lung : bool
        Whether any slice shows image lung.
    pelvis_at_bottom : bool
        Whether the first content slice cuts the pelvic ring.
    floor : float or None
        :func:`~model.evaluation.bone_landmarks.abdomen_floor`.
    """
    crest, lb, lt = lm.get("iliac_crest_top"), lm.get("lung_bottom"), lm.get("lung_top")
    bb, mb = lm.get("brainstem_bottom"), lm.get("mandible_bottom")
    pelvis_lo = lm.get("pelvis_bottom", z_first if pelvis_at_bottom else None)
    abdomen_hi = lb if lb is not None else (z_last if crest is not None and not has_lung
                                            else None)
    chest_lo = lb if lb is not None else (z_first if lung_at[0] else None)
    chest_hi = lt if lt is not None else (z_last if lung_at[1] else None)
    neck_hi = bb if bb is not None else mb
    found = {
        "pelvis": _extent("pelvis", pelvis_lo, crest),
        "abdomen": _extent("abdomen", crest if crest is not None else floor, abdomen_hi),
        "chest": _extent("chest", chest_lo, chest_hi),
        # a neck crop needs the mandible as its upper limit (see EXTENT_RULE)
        "neck": _extent("neck", lt, neck_hi, top=mb) if mb is not None else None,
        "head": _extent("head", bb, z_last if bb is not None and z_last > bb else None),
    }
    return {name: ext for name, ext in found.items() if ext is not None}


def volume_anatomy(name: str, volume: CTVolume, labels: npt.NDArray[np.integer] | None = None,
                   names: dict[int, str] | None = None) -> VolumeAnatomy:
    """Landmarks (labels over image lungs over bone rules) and region extents of a volume."""
    lungs = lung_profile(volume)
    bones = bone_profile(volume, lungs)
    landmarks = landmarks_for_volume(volume, labels, names, profile=lungs, bones=bones)
    first, last = content_extent(lungs.occupied, volume.n_slices)
    if last < first:
        return VolumeAnatomy(name, landmarks)
    lung = lungs.area_cm2 >= LUNG_MIN_SLICE_AREA_CM2
    extents = region_extents(
        landmarks, float(volume.z_mm[first]), float(volume.z_mm[last]),
        lung_at=(bool(lung[first]), bool(lung[last])), has_lung=bool(lung.any()),
        pelvis_at_bottom=pelvis_reaches_bottom(bones), floor=abdomen_floor(bones, volume.z_mm))
    return VolumeAnatomy(name, landmarks, extents)


def _chain(anatomy: VolumeAnatomy, regions: tuple[str, ...]) -> list[RegionExtent] | None:
    """Extents of ``regions`` when all are known and each ends where the next begins."""
    chain = [anatomy.extents.get(r) for r in regions]
    known = [e for e in chain if e is not None]
    if len(known) < len(chain):
        return None
    for below, above in pairwise(known):
        if below.hi != above.lo:
            return None
    return known


def _windows(chain: list[RegionExtent], dz: float) -> dict[str, tuple[float, float]]:
    """Variant name → wanted (z_lo, z_hi), one slice more cover than needed for snapping."""
    a, b = chain[0], chain[-1]
    if len(chain) == 1:
        width = a.top_limit - a.lo
        need = min(width, a.need_mm + dz)
        part = max(need, 0.6 * width)
        middle = max(need, 0.5 * width)
        centre = 0.5 * (a.lo + a.top_limit)
        return {"full": (a.lo, a.top_limit), "low": (a.lo, a.lo + part),
                "high": (a.top_limit - part, a.top_limit),
                "middle": (centre - middle / 2, centre + middle / 2)}
    lo_short = max(a.lo, a.hi - a.need_mm - dz)
    hi_short = min(b.top_limit, b.lo + b.need_mm + dz)
    return {"full": (a.lo, b.top_limit), "short": (lo_short, hi_short),
            "low": (a.lo, hi_short), "high": (lo_short, b.top_limit)}


def crops_for_volume(anatomy: VolumeAnatomy, z_mm: npt.ArrayLike) -> list[Crop]:
    """Every crop the volume's anatomy allows (rule: :data:`CROP_RULE`), deterministic.

    Parameters
    ----------
    anatomy : VolumeAnatomy
    z_mm : array_like, shape (n_slices,)
        The volume's slice positions, increasing.

    Returns
    -------
    list of Crop
        In :data:`CROP_TERMS` order, then variant order; a variant whose slices repeat an
        earlier one of the same term, or that breaks the rule once snapped to slices, is
        left out.
    """
    z = np.asarray(z_mm, dtype=np.float64)
    dz = float(np.median(np.diff(z))) if z.size > 1 else 0.0
    crops: list[Crop] = []
    for term, regions in CROP_TERMS.items():
        chain = _chain(anatomy, regions)
        if chain is None:
            continue
        seen: set[tuple[int, int]] = set()
        for variant, (lo, hi) in _windows(chain, dz).items():
            start = int(np.searchsorted(z, lo - 1e-6, side="left"))
            stop = int(np.searchsorted(z, hi + 1e-6, side="right"))
            if stop - start < 3 or (start, stop) in seen:
                continue
            crop = Crop(anatomy.name, term, variant, start, stop, float(z[start]),
                        float(z[stop - 1]))
            if not crop_violations(crop, anatomy):
                seen.add((start, stop))
                crops.append(crop)
    return crops


def crop_violations(crop: Crop, anatomy: VolumeAnatomy) -> list[str]:
    """What breaks :data:`CROP_RULE` (empty when the crop is sound).

    Checks the cover of each end region, the full cover of inner regions, and that the crop
    reaches at most :data:`OUTSIDE_TOLERANCE_MM` beyond the term's regions (beyond a neck
    end, beyond the mandible bottom).
    """
    chain = _chain(anatomy, CROP_TERMS[crop.term])
    if chain is None:
        return ["the volume's anatomy does not define this term's regions"]
    problems = []
    a, b = chain[0], chain[-1]
    if crop.z_lo < a.lo - OUTSIDE_TOLERANCE_MM:
        problems.append(f"reaches {a.lo - crop.z_lo:.1f} mm below the term's regions")
    if crop.z_hi > b.top_limit + OUTSIDE_TOLERANCE_MM:
        problems.append(f"reaches {crop.z_hi - b.top_limit:.1f} mm above the term's regions")
    for ext in (a, b) if len(chain) > 1 else (a,):
        cover = min(crop.z_hi, ext.hi) - max(crop.z_lo, ext.lo)
        if cover < ext.need_mm - 1e-6:
            problems.append(f"covers {cover:.1f} mm of an end region, needs {ext.need_mm:.1f}")
    for ext in chain[1:-1]:
        if crop.z_lo > ext.lo or crop.z_hi < ext.hi:
            problems.append("leaves part of an inner region out")
    return problems
