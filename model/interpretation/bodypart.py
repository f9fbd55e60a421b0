"""Body regions and BodyPartExamined from cleaned slice scores (thesis §4.3.1).

Three results come from one cleaned score curve:

* the **body part examined dictionary** (table 4.6, eq. 4.18): per region (legs, pelvis,
  abdomen, chest, neck, head) the slices whose score lies between the region's start and
  end landmark scores; regions overlap on purpose;
* the thesis **tag** (fig. 4.9), e.g. ``"CHEST-ABDOMEN-PELVIS"`` or ``"NONE"``: a region
  counts when enough of its landmarks lie inside the curve, or, for volumes under 10 cm,
  the most frequent region per slice wins;
* the table of valid DICOM **BodyPartExamined** defined terms (CID 4031, CS: ≤ 16
  characters of A-Z, 0-9, space and underscore) with their SNOMED CT codes, and the term
  of a contiguous run of regions (:func:`dicom_term_for_regions`); which regions a series
  covers is decided by clinical usage in :mod:`model.interpretation.clinical`, not by the tag.

Landmark scores come from :func:`landmark_table`: bpreg's published reference table,
vertebral levels it lacks interpolated between published neighbours, and the model's own
reference table on top. The term tables live in ``model/data/*.csv``.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

FloatVector = npt.NDArray[np.float64]

#: Core regions of table 4.6, feet → head ("neck" is the thesis' neck-and-shoulder).
REGIONS: tuple[str, ...] = ("legs", "pelvis", "abdomen", "chest", "neck", "head")

#: Vertebral levels feet → head. The thesis' tag rules use every level; the published
#: table has only L5, L3, L1, Th12, Th8, Th1, C7 and C1.
VERTEBRAL_LEVELS: tuple[str, ...] = (
    "L5", "L4", "L3", "L2", "L1",
    "Th12", "Th11", "Th10", "Th9", "Th8", "Th7", "Th6", "Th5", "Th4", "Th3", "Th2", "Th1",
    "C7", "C6", "C5", "C4", "C3", "C2", "C1",
)
INTERPOLATION_RULE = (
    "Vertebral levels missing from the table are interpolated linearly in level number "
    "between the nearest levels present below and above (published: L5, L3, L1, Th12, Th8, "
    "Th1, C7, C1), i.e. equal score steps per vertebra within each published interval; "
    "levels outside the outermost present ones are not extrapolated."
)

#: Table 4.6: (start landmark, end landmark) per region; None is −∞ / +∞. Th3, C2 and C5
#: are interpolated levels (see INTERPOLATION_RULE); L5, Th8, Th12 and Th1 are published.
REGION_BOUNDARIES: dict[str, tuple[str | None, str | None]] = {
    "legs": (None, "pelvis_start"),
    "pelvis": ("pelvis_start", "pelvis_end"),
    "abdomen": ("L5", "Th8"),
    "chest": ("Th12", "Th1"),
    "neck": ("Th3", "C2"),
    "head": ("C5", None),
}

#: Fig. 4.9, large volumes: landmarks of each tag region and how many must lie inside the
#: curve (a landmark lies inside when scores below and above its reference score exist).
TAG_LANDMARKS: dict[str, tuple[tuple[str, ...], int]] = {
    "PELVIS": (("pelvis_start", "femur_end", "pelvis_end"), 2),
    "ABDOMEN": (("L5", "L4", "L3", "L2", "L1", "Th12", "Th11", "Th10", "Th9"), 7),
    "CHEST": (("Th12", "Th11", "Th10", "Th9", "Th8", "Th7", "Th6", "Th5", "Th4", "Th3",
                "Th2", "Th1"), 9),
    "NECK": (("Th3", "Th2", "Th1", "C7", "C6", "C5", "C4", "C3", "C2"), 6),
    "HEAD": (("C3", "C2", "C1", "eyes_end"), 3),
}
#: Fig. 4.9, small volumes: score range (start, end landmark) per tag region per slice.
TAG_SLICE_CLASSES: dict[str, tuple[str, str | None]] = {
    "PELVIS": ("pelvis_start", "pelvis_end"),
    "ABDOMEN": ("pelvis_end", "Th9"),
    "CHEST": ("Th9", "Th2"),
    "NECK": ("Th2", "C3"),
    "HEAD": ("C3", None),
}
#: Tag regions head → feet (the order of the concatenated tag) and their core region.
TAG_ORDER: tuple[str, ...] = ("HEAD", "NECK", "CHEST", "ABDOMEN", "PELVIS")
TAG_TO_REGION: dict[str, str] = {t: t.lower() for t in TAG_ORDER}
NO_TAG = "NONE"
#: Volumes shorter than this get the per-slice majority tag (fig. 4.9).
Z_RANGE_THRESHOLD_MM = 100.0

#: Pattern every emitted BodyPartExamined value matches (CS value representation).
CS_PATTERN = r"^[A-Z0-9 _]{1,16}$"
#: Coding scheme of the codes in ``dicom_body_parts.csv``.
SNOMED_SCHEME = "SCT"


# --- landmark table -----------------------------------------------------------------------


@dataclass(frozen=True)
class LandmarkScore:
    """Expected score of a landmark and where the value comes from."""

    score: float
    source: str  # "model", "published" or "interpolated"


LandmarkTable = dict[str, LandmarkScore]


def landmark_table(model_table: Mapping[str, float] | None = None) -> LandmarkTable:
    """Landmark scores: the model's reference table merged over bpreg's published one.

    Parameters
    ----------
    model_table : mapping of str to float, optional
        ``ModelMeta.reference_table`` (our landmark names; a published name here replaces
        the published value).

    Returns
    -------
    dict of str to LandmarkScore
        Published landmarks, the vertebral levels of :data:`VERTEBRAL_LEVELS` that can be
        interpolated (:data:`INTERPOLATION_RULE`), and the model's landmarks, sorted by
        score.
    """
    table = {n: LandmarkScore(float(s), "published") for n, s in PUBLISHED_REFERENCE.items()}
    for name, score in (model_table or {}).items():
        if math.isfinite(float(score)):
            table[name] = LandmarkScore(float(score), "model")
    table.update(_interpolated_levels(table))
    return dict(sorted(table.items(), key=lambda kv: kv[1].score))


def _interpolated_levels(table: Mapping[str, LandmarkScore]) -> LandmarkTable:
    known = [(i, table[n].score) for i, n in enumerate(VERTEBRAL_LEVELS) if n in table]
    out: LandmarkTable = {}
    for (i0, s0), (i1, s1) in itertools.pairwise(known):
        for i in range(i0 + 1, i1):
            out[VERTEBRAL_LEVELS[i]] = LandmarkScore(s0 + (s1 - s0) * (i - i0) / (i1 - i0),
                                                     "interpolated")
    return out


def landmark_score(table: Mapping[str, LandmarkScore], name: str | None,
                   default: float) -> float:
    """Score of landmark ``name``; ``default`` (±∞ for open ends) when ``name`` is None.

    Raises
    ------
    KeyError
        If the table has no landmark of that name.
    """
    if name is None:
        return default
    if name not in table:
        raise KeyError(f"unknown landmark {name!r}; known: {', '.join(table)}")
    return table[name].score


def region_score_ranges(table: Mapping[str, LandmarkScore],
                        boundaries: Mapping[str, tuple[str | None, str | None]] | None = None
                        ) -> dict[str, tuple[float, float]]:
    """(start, end) score per region from landmark names (default :data:`REGION_BOUNDARIES`).

    Raises
    ------
    KeyError
        If a boundary names a landmark the table lacks, or a region is unknown.
    """
    bounds = {**REGION_BOUNDARIES, **(boundaries or {})}
    unknown = set(bounds) - set(REGIONS)
    if unknown:
        raise KeyError(f"unknown region(s) {sorted(unknown)}; regions are {REGIONS}")
    return {r: (landmark_score(table, bounds[r][0], -math.inf),
                landmark_score(table, bounds[r][1], math.inf)) for r in REGIONS}


# --- body part examined dictionary --------------------------------------------------------


@dataclass(frozen=True)
class RegionRange:
    """Slices of one region in the body part examined dictionary (eq. 4.18)."""

    indices: tuple[int, ...]
    z_min_mm: float
    z_max_mm: float
    score_range: tuple[float, float]

    @property
    def first_slice(self) -> int:
        return self.indices[0]

    @property
    def last_slice(self) -> int:
        return self.indices[-1]

    @property
    def extent_mm(self) -> float:
        return self.z_max_mm - self.z_min_mm

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: first/last slice index, count, mm range and the region's scores."""
        return {"first_slice": self.first_slice, "last_slice": self.last_slice,
                "n_slices": len(self.indices), "z_min_mm": round(self.z_min_mm, 3),
                "z_max_mm": round(self.z_max_mm, 3),
                "score_range": [_json_float(s) for s in self.score_range]}


def _json_float(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


def body_part_examined_dict(
    z_mm: npt.ArrayLike,
    cleaned: npt.ArrayLike,
    table: Mapping[str, LandmarkScore],
    boundaries: Mapping[str, tuple[str | None, str | None]] | None = None,
) -> dict[str, RegionRange | None]:
    """Body part examined dictionary (eq. 4.18) with slice indices and mm ranges.

    Parameters
    ----------
    z_mm : array_like, shape (n,)
        Slice positions.
    cleaned : array_like, shape (n,)
        Cleaned scores, NaN where removed.
    table : mapping of str to LandmarkScore
        From :func:`landmark_table`.
    boundaries : mapping, optional
        Region → (start landmark, end landmark) overriding :data:`REGION_BOUNDARIES`.

    Returns
    -------
    dict of str to RegionRange or None
        Every region of :data:`REGIONS`; None where no slice scores inside it.
    """
    z = np.asarray(z_mm, dtype=np.float64)
    s = np.asarray(cleaned, dtype=np.float64)
    out: dict[str, RegionRange | None] = {}
    for region, (lo, hi) in region_score_ranges(table, boundaries).items():
        with np.errstate(invalid="ignore"):
            idx = np.flatnonzero((s > lo) & (s < hi))
        out[region] = None if idx.size == 0 else RegionRange(
            indices=tuple(int(i) for i in idx), z_min_mm=float(z[idx].min()),
            z_max_mm=float(z[idx].max()), score_range=(lo, hi))
    return out


# --- thesis tag ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TagResult:
    """Body part examined tag of fig. 4.9 and how it was reached."""

    tag: str
    regions: tuple[str, ...]  # tag regions head → feet, e.g. ("CHEST", "ABDOMEN")
    method: str  # "landmarks", "slice_majority", "invalid_z_spacing", "unplaceable", "no_scores"


def landmark_inside(scores: FloatVector, value: float) -> bool:
    """A landmark is visible when the curve has scores below and above its score."""
    return bool(np.any(scores < value) and np.any(scores > value))


def body_part_examined_tag(
    cleaned: npt.ArrayLike,
    z_range_mm: float,
    table: Mapping[str, LandmarkScore],
    *,
    valid_z_spacing: bool | None = True,
    placeable: bool = True,
    z_range_threshold_mm: float = Z_RANGE_THRESHOLD_MM,
) -> TagResult:
    """Thesis tag (fig. 4.9), e.g. ``"HEAD-NECK"``, ``"CHEST-ABDOMEN-PELVIS"``, ``"NONE"``.

    ``NONE`` when the z-spacing is invalid, the model cannot place the slices
    (``placeable`` false: a flat curve), no cleaned score exists, or no region is found.
    Volumes of at least ``z_range_threshold_mm`` list the regions with enough visible
    landmarks (:data:`TAG_LANDMARKS`); shorter ones, and longer ones without such a region
    (as bpreg does), take the most frequent per-slice region (:data:`TAG_SLICE_CLASSES`).
    Regions are joined head → feet with hyphens; gaps between found regions are filled,
    since every tag of the thesis is a contiguous run.
    """
    s = np.asarray(cleaned, dtype=np.float64)
    s = s[np.isfinite(s)]
    if valid_z_spacing is False:
        return TagResult(NO_TAG, (), "invalid_z_spacing")
    if not placeable:
        return TagResult(NO_TAG, (), "unplaceable")
    if s.size == 0:
        return TagResult(NO_TAG, (), "no_scores")
    regions: tuple[str, ...] = ()
    method = "landmarks"
    if z_range_mm >= z_range_threshold_mm:
        regions = _regions_by_landmarks(s, table)
    if not regions:
        regions = _majority_region(s, table)
        method = "slice_majority"
    if not regions:
        return TagResult(NO_TAG, (), method)
    return TagResult("-".join(regions), regions, method)


def _regions_by_landmarks(s: FloatVector, table: Mapping[str, LandmarkScore]
                          ) -> tuple[str, ...]:
    found = []
    for region in TAG_ORDER:
        names, needed = TAG_LANDMARKS[region]
        inside = sum(landmark_inside(s, landmark_score(table, n, math.nan)) for n in names)
        if inside >= needed:
            found.append(region)
    if not found:
        return ()
    first, last = TAG_ORDER.index(found[0]), TAG_ORDER.index(found[-1])
    return TAG_ORDER[first:last + 1]


def _majority_region(s: FloatVector, table: Mapping[str, LandmarkScore]) -> tuple[str, ...]:
    counts: Counter[str] = Counter()
    for region in TAG_ORDER:
        lo_name, hi_name = TAG_SLICE_CLASSES[region]
        lo = landmark_score(table, lo_name, -math.inf)
        hi = landmark_score(table, hi_name, math.inf)
        counts[region] = int(np.sum((s > lo) & (s < hi)))
    region, n = max(counts.items(), key=lambda kv: (kv[1], -TAG_ORDER.index(kv[0])))
    return (region,) if n > 0 else ()


# --- DICOM term ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomTerm:
    """A BodyPartExamined defined term with its SNOMED CT code (CID 4031).

    ``regions`` are the core regions (feet → head) the term names; empty for terms that
    are not made of them (e.g. KNEE).
    """

    term: str
    snomed_code: str
    snomed_meaning: str
    regions: tuple[str, ...] = ()
    scheme: str = SNOMED_SCHEME


@dataclass(frozen=True)
class TermChoice:
    """The term for a set of regions and why."""

    term: DicomTerm
    regions: tuple[str, ...]  # the detected regions (feet → head) the choice was made for
    note: str


def _data_rows(name: str) -> list[dict[str, str]]:
    text = (resources.files("model") / "data" / name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def _published_reference() -> dict[str, float]:
    return {r["landmark"]: float(r["score"]) for r in _data_rows("published_reference.csv")}


#: bpreg's published reference table (landmark → score 0-100, field notes), feet → head.
PUBLISHED_REFERENCE: dict[str, float] = _published_reference()


@lru_cache(maxsize=1)
def dicom_terms() -> dict[str, DicomTerm]:
    """Defined terms with SNOMED CT codes (``model/data/dicom_body_parts.csv``)."""
    return {r["term"]: DicomTerm(r["term"], r["snomed_code"], r["snomed_meaning"],
                                 tuple(x for x in r["regions"].split("+") if x))
            for r in _data_rows("dicom_body_parts.csv")}


@lru_cache(maxsize=1)
def region_terms() -> dict[tuple[str, ...], tuple[str, str]]:
    """Contiguous region run (feet → head) → (term, note), from ``region_terms.csv``."""
    return {tuple(r["regions"].split("+")): (r["term"], r["note"] or "")
            for r in _data_rows("region_terms.csv")}


def dicom_term_for_regions(regions: Iterable[str]) -> TermChoice:
    """BodyPartExamined term for detected core regions.

    The regions are put in feet → head order and gaps between them filled (one scan covers
    a contiguous stretch of body); the run is looked up in ``region_terms.csv``, whose
    rule is: name a contiguous part of the detected regions and never an absent one, as
    much of it as CID 4031 allows.

    Raises
    ------
    ValueError
        If ``regions`` is empty or holds a name outside :data:`REGIONS`.
    """
    names = set(regions)
    unknown = names - set(REGIONS)
    if unknown or not names:
        raise ValueError(f"need regions from {REGIONS}, got {sorted(names)}")
    idx = sorted(REGIONS.index(r) for r in names)
    run = REGIONS[idx[0]: idx[-1] + 1]
    term, note = region_terms()[run]
    if len(run) > len(names):
        note = "; ".join(x for x in (f"gap filled: {'+'.join(run)}", note) if x)
    return TermChoice(dicom_terms()[term], run, note)


def scores_table_dict(table: Mapping[str, LandmarkScore]) -> dict[str, dict[str, Any]]:
    """JSON-ready look-up table: name → {"mean": score, "source": ...}."""
    return {n: {"mean": round(v.score, 4), "source": v.source} for n, v in table.items()}


def describe_boundaries(boundaries: Mapping[str, tuple[str | None, str | None]] | None = None
                        ) -> dict[str, list[str | None]]:
    """Region → [start landmark, end landmark] actually used (for JSON settings)."""
    bounds = {**REGION_BOUNDARIES, **(boundaries or {})}
    return {r: list(bounds[r]) for r in REGIONS}

