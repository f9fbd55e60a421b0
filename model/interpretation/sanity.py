"""Data sanity checks from the score curve (thesis §4.3.3) and from the image.

* **z-ordering**: the slope of a line fitted to the cleaned scores against patient z is
  negative when the slices' positions run against the anatomy (undecided for curves too
  flat to have a meaningful sign).
* **z-spacing**: slope ratio r = observed slope / expected slope (eq. 4.19); the expected
  spacing is spacing · |r| (eq. 4.21). The thesis calls the spacing valid when
  γ = |1 − |r|| (eq. 4.20) stays within a threshold θ (``calibrate_slope_threshold`` in
  :mod:`model.evaluation.curve_statistics`).
  A band symmetric around 1 cannot work for us: on the training curves |r| spans
  0.65 … 1.13, so a ×0.5 header error of the flattest curve (|r| = 1.31) lies closer to 1
  than that curve as stored. We therefore calibrate the valid range [r_lo, r_hi] of |r| on
  each side separately (``calibrate_slope_ratio_range``, same module) and fall back to 1 ± θ only
  for models without it.
* **discontinuities** live in :mod:`model.interpretation.discontinuity` (an error only on
  evidence of a stacked or corrupt series).
* **no body**, **non-CT content** and **out of the model's scope**.

Every finding is an :class:`Anomaly` record. ``severity`` "error" means the body part
result cannot be trusted (no DICOM term is given); "warning" means the term stands.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from model.interpretation.postprocess import (
    BODY_HU,
    CleanedScores,
    FloatVector,
    fitted_slope,
)
from model.interpretation.rank_correlation import spearman_rho
from model.interpretation.spacing_tolerance import ExtentTolerance

#: Scaling factors of the header z-spacing that the z-spacing check must detect.
DETECT_FACTORS: tuple[float, ...] = (2.0, 0.5)
#: bpreg's threshold θ, used only when the model has none.
DEFAULT_SLOPE_RATIO_THRESHOLD = 0.28
#: Fewest cleaned slices for a slope fit.
MIN_SLICES_FOR_SLOPE = 3
#: Shortest z-extent of cleaned slices for the ordering and spacing checks. Over less, the
#: model's local slope varies more than a ×2 spacing error: on 1,008 crops under 80 mm of
#: training and validation volumes (``benchmarks.term_crops``) the slope ratio spans
#: 0.43-1.16 (2-98 %) and 13 % failed the check, against 4 % of 80-120 mm crops and none of
#: the whole volumes; the 38 mm slab of the TotalSegmentator example is a case in point.
MIN_SLOPE_EXTENT_MM = 80.0
#: Smallest |Spearman ρ| between the cleaned scores and z of a curve the model places. A
#: line fits any curve, so a hump (a limb crop scored 76 → 81 → 54) passes the slope
#: checks as "reversed" and gets named. Measured on all 196 volumes: every named volume
#: of 80 mm or more has |ρ| ≥ 0.85, while the limb crops and the brachytherapy pelvis that
#: a model named wrongly had 0.32 and 0.59.
MIN_ORDER_RHO = 0.7
#: Plausible stored CT values (HU); well beyond the −1024…3071 of 12-bit CT but below MR
#: or raw detector values.
CT_HU_RANGE = (-1100.0, 4000.0)
#: Largest fraction of voxels that may lie outside :data:`CT_HU_RANGE` (metal streaks).
MAX_OUTSIDE_HU_FRACTION = 0.01
#: Smallest fraction of voxels below :data:`BODY_HU` (air around the body, lungs, bowel gas):
#: every CT field of view holds some, MR magnitudes and wrongly rescaled data do not.
MIN_AIR_FRACTION = 1e-4
#: Voxels sampled per volume for the content check (bounds time on 512² series).
CONTENT_SAMPLE = 2_000_000
#: Offset of CT stored as HU + 1024 whose RescaleIntercept was written as 0 instead of
#: −1024 (air reads ≈ 0, fat ≈ +925). The content check names this cause rather than
#: correcting it: a volume whose air is missing for another reason must not be shifted.
HU_OFFSET_SUSPECT = 1024.0
#: The offset is suspected when the 1st percentile (air) lies within this of 0 HU...
OFFSET_AIR_TOLERANCE_HU = 100.0
#: ...and, shifted back, the volume passes the content check and the median of its body
#: voxels (> :data:`BODY_HU`) lies in this range: soft tissue, as in every CT of the shared
#: data (−90…+40 HU); MR magnitudes have no such anchor.
SOFT_TISSUE_MEDIAN_HU = (-200.0, 200.0)


class AnomalyCode(StrEnum):
    """Kinds of :class:`Anomaly`."""

    NO_BODY = "no_body"
    NOT_CT = "not_ct_like"
    OUT_OF_SCOPE = "out_of_scope"
    REVERSED_Z = "reversed_z_ordering"
    INVALID_Z_SPACING = "invalid_z_spacing"
    DISCONTINUITY = "discontinuity"
    TOO_FEW_SLICES = "too_few_slices"


class Severity(StrEnum):
    """``error``: withhold the body part term; ``warning``: the term stands."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Anomaly:
    """One finding of the sanity checks.

    Attributes
    ----------
    code : AnomalyCode
    severity : Severity
    message : str
        One sentence for people.
    slices : (int, int) or None
        First and last slice index concerned (inclusive); None when not tied to slices.
    z_mm : (float, float) or None
        Patient z of those slices.
    details : mapping
        Numbers behind the finding (JSON-ready scalars).
    """

    code: AnomalyCode
    severity: Severity
    message: str
    slices: tuple[int, int] | None = None
    z_mm: tuple[float, float] | None = None
    details: Mapping[str, float | int | str | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (no NaN)."""
        return {
            "code": self.code.value, "severity": self.severity.value, "message": self.message,
            "slices": list(self.slices) if self.slices is not None else None,
            "z_mm": [round(z, 3) for z in self.z_mm] if self.z_mm is not None else None,
            "details": {k: _finite(v) for k, v in (self.details or {}).items()},
        }


def _finite(v: float | int | str | None) -> float | int | str | None:
    if isinstance(v, float):
        return round(v, 6) if math.isfinite(v) else None
    return v


# --- z-ordering and z-spacing -------------------------------------------------------------


@dataclass(frozen=True)
class SlopeProfile:
    """Expected score per mm as a function of the score: the model's slope per body region.

    The model's curve is not equally steep everywhere (on the training curves the upper
    chest, scores 60-70, rises at 0.089 per mm against 0.11-0.13 elsewhere), so a short
    series of one region is judged against that region's slope rather than the mean.
    Stored in the model JSON as ``statistics["slope_profile"]`` by
    :func:`model.evaluation.curve_statistics.slope_profile`.

    Attributes
    ----------
    scores : tuple of float
        Bin centres, increasing.
    slopes : tuple of float
        Median slope per mm of the training curves in each bin.
    """

    scores: tuple[float, ...]
    slopes: tuple[float, ...]

    @classmethod
    def from_statistics(cls, stored: object) -> SlopeProfile | None:
        """The profile of ``statistics["slope_profile"]``; None when absent or malformed."""
        if not isinstance(stored, Mapping):
            return None
        scores, slopes = stored.get("score"), stored.get("slope_per_mm")
        if not (isinstance(scores, Sequence) and isinstance(slopes, Sequence)
                and len(scores) == len(slopes) > 0):
            return None
        pairs = [(float(a), float(b)) for a, b in zip(scores, slopes, strict=True)]
        if not all(math.isfinite(a) and math.isfinite(b) and b > 0 for a, b in pairs):
            return None
        pairs.sort()
        return cls(tuple(a for a, _ in pairs), tuple(b for _, b in pairs))

    def at(self, scores: npt.ArrayLike) -> FloatVector:
        """Expected slope per mm at each score (flat beyond the outermost bins)."""
        at: FloatVector = np.interp(np.asarray(scores, dtype=np.float64), self.scores,
                                    self.slopes)
        return at

    def expected_slope(self, cleaned: npt.ArrayLike) -> float | None:
        """Mean expected slope over the finite scores of ``cleaned`` (None without any)."""
        s = np.asarray(cleaned, dtype=np.float64)
        s = s[np.isfinite(s)]
        if s.size == 0:
            return None
        return float(np.mean(self.at(s)))




@dataclass(frozen=True)
class SlopeCheck:
    """Result of the z-ordering and z-spacing checks (eq. 4.19-4.21).

    Slopes are in score per mm; ``None`` where a value cannot be computed (too few
    slices, no expected slope).
    """

    observed_slope: float | None
    expected_slope: float | None
    slope_ratio: float | None
    z_spacing_mm: float | None
    expected_z_spacing_mm: float | None
    valid_range: tuple[float, float]
    reverse_z_ordering: bool | None
    valid_z_spacing: bool | None
    #: The curve is flatter than half the valid range's floor: no plausible spacing error
    #: explains it, so the model cannot place these slices (or the header is off by far
    #: more than ×2); ordering and spacing stay undecided.
    unplaceable: bool = False
    #: Cleaned slices span less than the checks need (:data:`MIN_SLOPE_EXTENT_MM`); the slope
    #: is reported, ordering and spacing stay undecided.
    too_short: bool = False
    #: Patient-z extent of the cleaned slices (mm).
    scored_extent_mm: float | None = None
    #: Share of the scored slices the model places (:mod:`~model.interpretation.placement`),
    #: where an unplaceable curve was searched for a placed part.
    placed_fraction: float | None = None
    #: Spearman ρ of the cleaned scores against z (None where the checks did not run).
    order_rho: float | None = None
    #: |ρ| < :data:`MIN_ORDER_RHO`: the scores do not follow the slices, so the model
    #: cannot place them; ordering and spacing stay undecided.
    unordered: bool = False

    @property
    def relative_error(self) -> float | None:
        """γ = |1 − |r|| (eq. 4.20)."""
        return None if self.slope_ratio is None else abs(1.0 - abs(self.slope_ratio))


def z_spacing_of(z_mm: npt.ArrayLike) -> float | None:
    """Median distance between neighbouring slices (the series' nominal spacing)."""
    z = np.asarray(z_mm, dtype=np.float64)
    return float(np.median(np.diff(z))) if z.size > 1 else None


def ratio_range_from_threshold(threshold: float) -> tuple[float, float]:
    """Valid |r| of the thesis' rule γ = |1 − |r|| ≤ θ: [1 − θ, 1 + θ]."""
    return (1.0 - threshold, 1.0 + threshold)


def check_slope(z_mm: npt.ArrayLike, cleaned: npt.ArrayLike, expected_slope: float | None,
                valid_range: tuple[float, float], *,
                min_extent_mm: float = MIN_SLOPE_EXTENT_MM,
                tolerance: ExtentTolerance | None = None) -> SlopeCheck:
    """Fit a line to the cleaned scores and run the z-ordering and z-spacing checks.

    Parameters
    ----------
    z_mm, cleaned : array_like, shape (n,)
        Patient z and cleaned scores (NaN where removed).
    expected_slope : float or None
        m̄_s, the model's mean slope per mm; None skips the z-spacing check.
    valid_range : (float, float)
        The spacing is valid when r_lo ≤ |r| ≤ r_hi.
    min_extent_mm : float
        Cleaned slices spanning less leave both checks undecided.
    tolerance : ExtentTolerance, optional
        Widens ``valid_range`` for a series as short as the training windows it holds;
        the check's ``valid_range`` is then the widened one.
    """
    z = np.asarray(z_mm, dtype=np.float64)
    s = np.asarray(cleaned, dtype=np.float64)
    spacing = z_spacing_of(z)
    n = int(np.isfinite(s).sum())
    slope = fitted_slope(z, s) if n >= MIN_SLICES_FOR_SLOPE else None
    if slope is None:
        return SlopeCheck(None, expected_slope, None, spacing, None, valid_range, None, None)
    reverse = slope < 0
    if expected_slope is None or expected_slope <= 0:
        return SlopeCheck(slope, expected_slope, None, spacing, None, valid_range, reverse,
                          None)
    ratio = slope / expected_slope
    kept = np.isfinite(s)
    extent = float(np.ptp(z[kept]))
    # undecided checks suggest no spacing (eq. 4.21 would extrapolate noise)
    if extent < min_extent_mm:
        return SlopeCheck(slope, expected_slope, ratio, spacing, None, valid_range, None,
                          None, too_short=True, scored_extent_mm=extent)
    # a curve flatter than half the valid range's floor is not explained by a doubled
    # spacing either: its sign is noise, and its spacing cannot be judged
    if abs(ratio) < valid_range[0] / 2:
        return SlopeCheck(slope, expected_slope, ratio, spacing, None, valid_range, None,
                          None, unplaceable=True, scored_extent_mm=extent)
    rho = spearman_rho(z[kept], s[kept])
    if abs(rho) < MIN_ORDER_RHO:
        return SlopeCheck(slope, expected_slope, ratio, spacing, None, valid_range, None,
                          None, scored_extent_mm=extent, order_rho=rho, unordered=True)
    expected_spacing = spacing * abs(ratio) if spacing is not None else None
    if tolerance is not None:
        valid_range = tolerance.widen(valid_range, extent)
    valid = valid_range[0] <= abs(ratio) <= valid_range[1]
    return SlopeCheck(slope, expected_slope, ratio, spacing, expected_spacing, valid_range,
                      reverse, valid, scored_extent_mm=extent, order_rho=rho)


def slope_anomalies(check: SlopeCheck, z_mm: npt.ArrayLike) -> list[Anomaly]:
    """Anomaly records of a :class:`SlopeCheck` of the volume with slice positions ``z_mm``."""
    z = np.asarray(z_mm, dtype=np.float64)
    out: list[Anomaly] = []
    if check.observed_slope is None:
        out.append(Anomaly(AnomalyCode.TOO_FEW_SLICES, Severity.WARNING,
                           f"fewer than {MIN_SLICES_FOR_SLOPE} slices with a cleaned score: "
                           "z-ordering and z-spacing cannot be checked"))
        return out
    if check.too_short:
        out.append(Anomaly(AnomalyCode.TOO_FEW_SLICES, Severity.WARNING,
                           f"the scored slices span only {check.scored_extent_mm:.0f} mm: too "
                           "short for the z-ordering and z-spacing checks",
                           details={"scored_extent_mm": check.scored_extent_mm,
                                    "slope_ratio": check.slope_ratio}))
        return out
    whole, z_range = (0, z.size - 1), (float(z[0]), float(z[-1]))
    if check.unplaceable and check.slope_ratio is not None:
        out.append(Anomaly(
            AnomalyCode.OUT_OF_SCOPE, Severity.ERROR,
            f"scores change only {abs(check.slope_ratio):.2f}× as fast per mm as expected, "
            "too little for any plausible z-spacing: the model cannot place these slices "
            "(e.g. a small limb crop), so ordering and spacing cannot be judged"
            + ("" if check.placed_fraction is None else
               f"; it places only {100 * check.placed_fraction:.0f} % of them, too few to "
               "name"),
            slices=whole, z_mm=z_range,
            details={"slope_ratio": check.slope_ratio,
                     "valid_ratio_min": check.valid_range[0],
                     "valid_ratio_max": check.valid_range[1],
                     "placed_fraction": check.placed_fraction}))
    if check.unordered and check.order_rho is not None:
        out.append(Anomaly(
            AnomalyCode.OUT_OF_SCOPE, Severity.ERROR,
            f"the scores do not follow the slice order (Spearman ρ {check.order_rho:.2f} "
            f"over {check.scored_extent_mm:.0f} mm): the model cannot place these slices "
            "(e.g. a limb crop), so ordering and spacing cannot be judged",
            slices=whole, z_mm=z_range,
            details={"spearman_rho": check.order_rho, "min_abs_rho": MIN_ORDER_RHO}))
    if check.reverse_z_ordering:
        out.append(Anomaly(
            AnomalyCode.REVERSED_Z, Severity.WARNING,
            "scores fall towards the head: slice positions run against the anatomy "
            "(reversed z-ordering)", slices=whole, z_mm=z_range,
            details={"observed_slope": check.observed_slope}))
    if check.valid_z_spacing is False and check.slope_ratio is not None:
        out.append(Anomaly(
            AnomalyCode.INVALID_Z_SPACING, Severity.ERROR,
            f"scores change {abs(check.slope_ratio):.2f}× as fast per mm as expected: the "
            f"header z-spacing {check.z_spacing_mm:.3g} mm is wrong (the anatomy suggests "
            f"{check.expected_z_spacing_mm:.3g} mm), or the model cannot place these slices",
            slices=whole, z_mm=z_range,
            details={"slope_ratio": check.slope_ratio, "relative_error": check.relative_error,
                     "valid_ratio_min": check.valid_range[0],
                     "valid_ratio_max": check.valid_range[1],
                     "z_spacing_mm": check.z_spacing_mm,
                     "expected_z_spacing_mm": check.expected_z_spacing_mm}))
    return out


# --- image content and scope --------------------------------------------------------------


def ct_content_anomaly(hu: npt.NDArray[np.floating[Any]]) -> Anomaly | None:
    """An error record when the intensities do not look like CT in Hounsfield units.

    Checks a sample of voxels: at most :data:`MAX_OUTSIDE_HU_FRACTION` outside
    :data:`CT_HU_RANGE`, and at least :data:`MIN_AIR_FRACTION` below :data:`BODY_HU`.
    Scanner padding is air by now (:mod:`model.reading.padding`), so this rejects what is
    really not CT: MR magnitudes, PET, wrongly rescaled data. When the volume looks like
    CT stored as HU + :data:`HU_OFFSET_SUSPECT` with RescaleIntercept 0, the message names
    that cause.
    """
    sample = _sample(hu)
    if sample.size == 0:
        return None
    reasons, outside, air = _content_reasons(sample)
    if not reasons:
        return None
    p01 = float(np.percentile(sample, 1))
    offset = _looks_offset(sample, p01)
    if offset:
        reasons.append(f"air reads ≈ {p01:.0f} instead of −1000 HU: stored values look like "
                       f"HU + {HU_OFFSET_SUSPECT:g} with RescaleIntercept 0 (should be "
                       f"−{HU_OFFSET_SUSPECT:g})")
    return Anomaly(AnomalyCode.NOT_CT, Severity.ERROR,
                   "intensities do not look like CT in Hounsfield units: " + "; ".join(reasons),
                   details={"outside_fraction": outside, "air_fraction": air,
                            "p01": p01, "p99": float(np.percentile(sample, 99)),
                            "likely_hu_offset": HU_OFFSET_SUSPECT if offset else None})


def _content_reasons(sample: FloatVector) -> tuple[list[str], float, float]:
    """Why ``sample`` is not CT-like (empty when it is), its outside and air fractions."""
    outside = float(np.mean((sample < CT_HU_RANGE[0]) | (sample > CT_HU_RANGE[1])))
    air = float(np.mean(sample < BODY_HU))
    reasons = []
    if outside > MAX_OUTSIDE_HU_FRACTION:
        reasons.append(f"{100 * outside:.1f} % of voxels lie outside {CT_HU_RANGE[0]:g}…"
                       f"{CT_HU_RANGE[1]:g} HU")
    if air < MIN_AIR_FRACTION:
        reasons.append(f"no air: {100 * air:.3f} % of voxels below {BODY_HU:g} HU")
    return reasons, outside, air


def _looks_offset(sample: FloatVector, p01: float) -> bool:
    """Whether ``sample`` looks like CT stored as HU + :data:`HU_OFFSET_SUSPECT`."""
    if abs(p01) > OFFSET_AIR_TOLERANCE_HU:
        return False
    shifted: FloatVector = sample - HU_OFFSET_SUSPECT
    body = shifted[shifted > BODY_HU]
    if body.size == 0 or _content_reasons(shifted)[0]:
        return False
    return bool(SOFT_TISSUE_MEDIAN_HU[0] <= np.median(body) <= SOFT_TISSUE_MEDIAN_HU[1])


def _sample(hu: npt.NDArray[np.floating[Any]]) -> FloatVector:
    step = max(1, math.ceil(math.sqrt(hu.size / CONTENT_SAMPLE)))
    sample: FloatVector = np.asarray(hu[:, ::step, ::step], dtype=np.float64).ravel()
    return sample


def no_body_anomaly(cleaned: CleanedScores) -> Anomaly | None:
    """An error record when no slice kept a cleaned score."""
    if cleaned.kept.any():
        return None
    n = cleaned.z_mm.size
    reason = ("every slice is empty" if cleaned.empty.all()
              else "every slice was removed (empty or atypical tails)")
    return Anomaly(AnomalyCode.NO_BODY, Severity.ERROR, f"no body in the series: {reason}",
                   slices=(0, n - 1) if n else None,
                   details={"empty_slices": int(cleaned.empty.sum()),
                            "tail_slices": int(cleaned.tail.sum())})


def scope_anomaly(cleaned: CleanedScores, score_range: tuple[float, float]) -> Anomaly | None:
    """A record when every cleaned score lies outside the landmark table's range.

    Below the lowest landmark (pelvis start) the scan shows only legs, outside the
    thesis' scope but still nameable (warning); above the highest (head end) the scores
    have no anatomical meaning (error).
    """
    s = cleaned.scores[cleaned.kept]
    if s.size == 0:
        return None
    lo, hi = score_range
    if np.all(s < lo):
        return Anomaly(AnomalyCode.OUT_OF_SCOPE, Severity.WARNING,
                       f"every score is below the pelvis start ({lo:g}): legs only, outside "
                       "the range the landmark table describes",
                       details={"max_score": float(s.max()), "table_min": lo})
    if np.all(s > hi):
        return Anomaly(AnomalyCode.OUT_OF_SCOPE, Severity.ERROR,
                       f"every score is above the top of the head ({hi:g}): the slices do not "
                       "show anatomy the model knows",
                       details={"min_score": float(s.min()), "table_max": hi})
    return None
