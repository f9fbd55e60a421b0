"""The DICOM BodyPartExamined term by clinical regions, and where each region lies.

Clinical usage, not the thesis' tag (fig. 4.9), decides the term: HEAD is the skull and
brain, NECK runs from the skull base to the thoracic inlet, CHEST from there to the lung
bases, ABDOMEN down to the iliac crests, PELVIS down to the ischial tuberosities, and the
legs lie below (``model/data/clinical_regions.csv`` holds the boundary landmarks, the
shortest stretch that counts, and each definition in words).

The rule, per series:

1. Each region's score range runs between its two boundary landmarks on the model's scale
   (:func:`clinical_score_ranges`).
2. A region's **coverage** is the length along z of the scored slices whose cleaned score
   lies in its range (slice count × slice spacing): lengths, unlike score spans, do not
   depend on how steep the model's curve is in that region.
3. A region **counts** when its coverage reaches the table's ``min_mm``; a few slices of
   smoothing overshoot or model error past a boundary do not. When no region reaches it,
   the one with the most coverage counts (a short series still gets a name).
4. Counted regions are joined into one contiguous run (a scan covers one stretch of body)
   and named by ``model/data/region_terms.csv``.

Each counted region is reported as its contiguous **runs** of slices
(:class:`SliceRun`), never as one min-max span: a few low-scoring slices at the top of a
chest scan do not stretch "abdomen" over the whole series.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from model.interpretation.bodypart import (
    PUBLISHED_REFERENCE,
    REGIONS,
    LandmarkScore,
    TermChoice,
    dicom_term_for_regions,
)

#: Boundary landmark → the published landmark of the same anatomy, read when the model
#: has not measured it (the foramen magnum lies at the level of C1).
PUBLISHED_ALIASES: dict[str, str] = {
    "iliac_crest_top": "pelvis_end", "lung_bottom": "lung_start", "lung_top": "lung_end",
    "brainstem_bottom": "C1",
}


@dataclass(frozen=True)
class ClinicalRegionRule:
    """One row of ``clinical_regions.csv``."""

    region: str
    lower_landmark: str | None
    upper_landmark: str | None
    min_mm: float
    definition: str


@dataclass(frozen=True)
class SliceRun:
    """Consecutive scored slices of one region (volume slice indices, inclusive)."""

    first: int
    last: int
    z_first_mm: float
    z_last_mm: float
    n_slices: int

    def to_dict(self) -> dict[str, Any]:
        return {"first_slice": self.first, "last_slice": self.last, "n_slices": self.n_slices,
                "z_min_mm": round(self.z_first_mm, 3), "z_max_mm": round(self.z_last_mm, 3)}


@dataclass(frozen=True)
class ClinicalRegion:
    """Coverage of one clinical region by a series."""

    name: str
    score_range: tuple[float, float]
    coverage_mm: float
    min_mm: float
    counted: bool
    runs: tuple[SliceRun, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"score_range": [_finite(s) for s in self.score_range],
                "coverage_mm": round(self.coverage_mm, 1), "min_mm": self.min_mm,
                "counted": self.counted, "runs": [r.to_dict() for r in self.runs]}


@dataclass(frozen=True)
class ClinicalResult:
    """The clinical term choice and the coverage of every region."""

    choice: TermChoice | None
    regions: Mapping[str, ClinicalRegion]


def _finite(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


@lru_cache(maxsize=1)
def clinical_rules() -> dict[str, ClinicalRegionRule]:
    """Rows of ``model/data/clinical_regions.csv`` by region, feet → head."""
    text = (resources.files("model") / "data" / "clinical_regions.csv").read_text("utf-8")
    rules = {r["region"]: ClinicalRegionRule(r["region"], r["lower_landmark"] or None,
                                             r["upper_landmark"] or None, float(r["min_mm"]),
                                             r["definition"])
             for r in csv.DictReader(text.splitlines())}
    if tuple(rules) != REGIONS:
        raise ValueError(f"clinical_regions.csv must list {REGIONS} in order, has {tuple(rules)}")
    return rules


def boundary_score(table: Mapping[str, LandmarkScore], name: str) -> float:
    """Score of a boundary landmark: the model's own, else bpreg's published one.

    The model's scale matches bpreg's at the lungs and its torso curves keep bpreg's slope
    (training chest-abdomen curves reach ≈ 30, pelvis curves ≈ 3-12), so the published
    pelvis landmarks stand where the model has measured none. Landmarks named differently
    there are read through :data:`PUBLISHED_ALIASES`.

    Raises
    ------
    KeyError
        If neither the model nor the published table knows the landmark.
    """
    if name in table and table[name].source == "model":
        return table[name].score
    published = PUBLISHED_ALIASES.get(name, name)
    if published not in PUBLISHED_REFERENCE:
        raise KeyError(f"no score for boundary landmark {name!r}")
    return PUBLISHED_REFERENCE[published]


def clinical_score_ranges(table: Mapping[str, LandmarkScore]) -> dict[str, tuple[float, float]]:
    """(lower, upper) score of every clinical region; ±∞ at the open ends."""
    def score(name: str | None, open_end: float) -> float:
        return open_end if name is None else boundary_score(table, name)

    return {name: (score(rule.lower_landmark, -math.inf), score(rule.upper_landmark, math.inf))
            for name, rule in clinical_rules().items()}


def clinical_regions(z_mm: npt.ArrayLike, cleaned: npt.ArrayLike,
                     table: Mapping[str, LandmarkScore]) -> ClinicalResult:
    """Coverage, counted regions and the term of one series (module docstring, steps 1-4).

    Parameters
    ----------
    z_mm, cleaned : array_like, shape (n,)
        Slice positions and cleaned scores (NaN where removed).
    table : mapping of str to LandmarkScore
        From :func:`~model.interpretation.bodypart.landmark_table`.
    """
    z = np.asarray(z_mm, dtype=np.float64)
    s = np.asarray(cleaned, dtype=np.float64)
    spacing = float(np.median(np.diff(z))) if z.size > 1 else 0.0
    regions = {}
    for name, (lo, hi) in clinical_score_ranges(table).items():
        with np.errstate(invalid="ignore"):
            inside = (s >= lo) & (s < hi)
        runs = _slice_runs(np.flatnonzero(inside), z)
        coverage = float(inside.sum()) * spacing
        regions[name] = ClinicalRegion(name, (lo, hi), coverage, clinical_rules()[name].min_mm,
                                       False, runs)
    counted = [n for n, r in regions.items() if r.coverage_mm >= r.min_mm and r.runs]
    if not counted:
        best = max(regions.values(), key=lambda r: r.coverage_mm)
        counted = [best.name] if best.coverage_mm > 0 else []
    if not counted:
        return ClinicalResult(None, regions)
    choice = dicom_term_for_regions(counted)
    final = {n: ClinicalRegion(r.name, r.score_range, r.coverage_mm, r.min_mm,
                               n in choice.term.regions, r.runs)
             for n, r in regions.items()}
    return ClinicalResult(choice, final)


def _slice_runs(indices: npt.NDArray[np.intp], z: npt.NDArray[np.float64]) -> tuple[SliceRun, ...]:
    """Consecutive indices as runs; removed (NaN) slices in between split a run."""
    if indices.size == 0:
        return ()
    cuts = np.flatnonzero(np.diff(indices) > 1) + 1
    return tuple(SliceRun(int(part[0]), int(part[-1]), float(z[part[0]]), float(z[part[-1]]),
                          int(part.size)) for part in np.split(indices, cuts))
