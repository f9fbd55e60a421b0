"""Meaning from the score curve: the one call the DICOM node makes per series.

:func:`analyze` scores a :class:`~model.reading.volume.CTVolume`, cleans the curve
(:mod:`~model.interpretation.postprocess`), runs the sanity checks
(:mod:`~model.interpretation.sanity`) and derives the body regions, the thesis tag and the DICOM
BodyPartExamined term (:mod:`~model.interpretation.bodypart`).
:meth:`BodyPartResult.to_json_dict` gives strict JSON (no NaN) with bpreg's keys of
thesis table 4.7 plus ours; ``model/schema/bpr-result.schema.json`` describes it.

The model JSON carries what the checks need (``tangential_slope``, ``slope_per_mm``,
``slope_ratio_range``), measured on training curves by
:mod:`model.evaluation.curve_statistics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt

from model.interpretation.bodypart import (
    Z_RANGE_THRESHOLD_MM,
    DicomTerm,
    LandmarkScore,
    RegionRange,
    body_part_examined_dict,
    body_part_examined_tag,
    describe_boundaries,
    landmark_table,
    scores_table_dict,
)
from model.interpretation.clinical import ClinicalRegion, ClinicalResult, clinical_regions
from model.interpretation.discontinuity import (
    DiscontinuitySettings,
    discontinuity_anomalies,
    find_discontinuities,
    judge_breaks,
)
from model.interpretation.image_content import (
    ImageContent,
    image_content,
    limb_crop_anomaly,
)
from model.interpretation.placement import find_placement, placement_anomaly
from model.interpretation.postprocess import (
    CleanedScores,
    IntVector,
    PostprocessSettings,
    body_pixel_counts,
    clean_scores,
)
from model.interpretation.sanity import (
    DEFAULT_SLOPE_RATIO_THRESHOLD,
    Anomaly,
    Severity,
    SlopeCheck,
    SlopeProfile,
    check_slope,
    ct_content_anomaly,
    no_body_anomaly,
    ratio_range_from_threshold,
    scope_anomaly,
    slope_anomalies,
)
from model.interpretation.spacing_tolerance import ExtentTolerance
from model.interpretation.strict_json import jsonable
from model.reading.dicom_assembly import SeriesPlan
from model.reading.volume import ContentSample, CTVolume, FloatArray, SeriesDescription
from model.scoring import preprocess
from model.scoring.inference import BodyPartRegressor, SliceScores
from model.scoring.streaming import stream_series

#: Version of the JSON layout of :meth:`BodyPartResult.to_json_dict` (1 is model.cli.output's
#: scores-only document).
SCHEMA_VERSION = 2
#: bpreg's mean slope (score per mm); our scale matches bpreg's at the lungs, so it is the
#: fallback expected slope when the model JSON has none.
DEFAULT_EXPECTED_SLOPE = 0.118
MODEL_NAME = "bpr-node SliceScoreNet"


@dataclass(frozen=True)
class AnalysisSettings:
    """Everything :func:`analyze` can be told; defaults follow the thesis.

    Attributes
    ----------
    postprocess : PostprocessSettings
        Cleaning of the score curve.
    region_boundaries : mapping, optional
        Region → (start landmark, end landmark) overriding table 4.6.
    z_range_threshold_mm : float
        Shorter volumes get the per-slice majority tag (fig. 4.9).
    slope_ratio_range : (float, float), optional
        Valid range of |slope ratio| for the z-spacing check; None takes the model's.
    slope_ratio_threshold : float, optional
        The thesis' θ (valid range 1 ± θ), used when no range is given; None takes the
        model's.
    discontinuity : DiscontinuitySettings
        Break detection.
    check_content : bool
        Run the HU plausibility check on the image.
    """

    postprocess: PostprocessSettings = field(default_factory=PostprocessSettings)
    region_boundaries: Mapping[str, tuple[str | None, str | None]] | None = None
    z_range_threshold_mm: float = Z_RANGE_THRESHOLD_MM
    slope_ratio_range: tuple[float, float] | None = None
    slope_ratio_threshold: float | None = None
    discontinuity: DiscontinuitySettings = field(default_factory=DiscontinuitySettings)
    check_content: bool = True


@dataclass(frozen=True)
class BodyPartResult:
    """Everything the score curve says about one series.

    Per-slice tuples follow the volume's slice order (feet → head by patient z).
    Scores are on the model's reference scale (pelvis start 0, eyes end 100).
    """

    identity: str
    source: str
    series_instance_uid: str | None
    n_slices: int
    pixel_spacing_mm: tuple[float, float]
    input_warnings: tuple[str, ...]
    patient_z_mm: tuple[float, ...]
    unprocessed_scores: tuple[float, ...]
    cleaned_scores: tuple[float | None, ...]
    regions: Mapping[str, RegionRange | None]
    clinical_regions: Mapping[str, ClinicalRegion]
    body_part_examined: str | None
    snomed: DicomTerm | None
    term_regions: tuple[str, ...]
    term_note: str
    body_part_examined_tag: str
    tag_method: str
    reverse_z_ordering: bool | None
    valid_z_spacing: bool | None
    z_spacing_mm: float | None
    expected_z_spacing_mm: float | None
    observed_slope: float | None
    expected_slope: float | None
    slope_ratio: float | None
    valid_slope_ratio_range: tuple[float, float]
    anomalies: tuple[Anomaly, ...]
    warnings: tuple[str, ...]
    model_version: str
    landmark_table: Mapping[str, LandmarkScore]
    settings: Mapping[str, Any]

    @property
    def has_errors(self) -> bool:
        """Whether an anomaly makes the body part result untrustworthy."""
        return any(a.severity is Severity.ERROR for a in self.anomalies)

    def to_json_dict(self) -> dict[str, Any]:
        """Strict-JSON document: bpreg's table 4.7 keys plus ours, null for missing values."""
        z = self.patient_z_mm
        cleaned = [_round(s) for s in self.cleaned_scores]
        unprocessed = [_round(s) for s in self.unprocessed_scores]
        snomed = None if self.snomed is None else {
            "code": self.snomed.snomed_code, "scheme": self.snomed.scheme,
            "meaning": self.snomed.snomed_meaning}
        return {
            "schema_version": SCHEMA_VERSION,
            "input": {"source": self.source, "series_instance_uid": self.series_instance_uid,
                      "n_slices": self.n_slices,
                      "pixel_spacing_mm": list(self.pixel_spacing_mm),
                      "warnings": list(self.input_warnings)},
            "model": {"name": MODEL_NAME, "version": self.model_version},
            "patient_z_mm": [_round(v, 3) for v in z],
            "slice_scores": cleaned,
            "body_part_examined": self.body_part_examined,
            "body_part_examined_snomed": snomed,
            "body_part_examined_tag": self.body_part_examined_tag,
            "body_part_examined_detail": {
                "regions": list(self.term_regions), "note": self.term_note,
                "rule": "clinical_regions", "tag_method": self.tag_method,
                "withheld_by": [a.to_dict() for a in self.anomalies
                                if a.severity is Severity.ERROR]},
            "clinical_regions": {r: v.to_dict() for r, v in self.clinical_regions.items()},
            "regions": {r: (v.to_dict() if v is not None else None)
                        for r, v in self.regions.items()},
            "reverse_z_ordering": self.reverse_z_ordering,
            "valid_z_spacing": self.valid_z_spacing,
            "expected_z_spacing": _round(self.expected_z_spacing_mm),
            "anomalies": [a.to_dict() for a in self.anomalies],
            "warnings": list(self.warnings),
            "cleaned slice scores": cleaned,
            "z": [_round(v - z[0], 3) for v in z] if z else [],
            "unprocessed slice scores": unprocessed,
            "body part examined": {r: (list(v.indices) if v is not None else [])
                                   for r, v in self.regions.items()},
            "body part examined tag": self.body_part_examined_tag,
            "look-up table": scores_table_dict(self.landmark_table),
            "reverse z-ordering": self.reverse_z_ordering,
            "valid z-spacing": self.valid_z_spacing,
            "expected slope": _round(self.expected_slope, 6),
            "observed slope": _round(self.observed_slope, 6),
            "slope ratio": _round(self.slope_ratio, 6),
            "expected z-spacing": _round(self.expected_z_spacing_mm),
            "z-spacing": _round(self.z_spacing_mm),
            "settings": jsonable(self.settings),
        }


def _round(x: float | None, ndigits: int = 4) -> float | None:
    return round(float(x), ndigits) if x is not None and math.isfinite(x) else None


# --- the call -----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def default_regressor() -> BodyPartRegressor:
    """The shipped model, loaded once per process."""
    return BodyPartRegressor.load()


def score_with_content(volume: CTVolume, regressor: BodyPartRegressor
                       ) -> tuple[SliceScores, IntVector]:
    """Slice scores and tissue pixels per slice from one preprocessing pass."""
    slices = preprocess.preprocess_slices(volume.hu, volume.pixel_spacing_mm)
    return _score_slices(slices, volume.z_mm, regressor)


def _score_slices(slices: FloatArray, z_mm: npt.NDArray[np.float64],
                  regressor: BodyPartRegressor) -> tuple[SliceScores, IntVector]:
    """Scores and tissue pixels per slice of preprocessed ``slices``."""
    raw = regressor.raw_scores(slices)
    scores = SliceScores(z_mm=z_mm, raw=raw, scores=regressor.to_reference_scale(raw))
    return scores, body_pixel_counts(slices)


def analyze(volume: CTVolume, regressor: BodyPartRegressor | None = None, *,
            settings: AnalysisSettings | None = None) -> BodyPartResult:
    """Score ``volume`` and interpret the curve.

    Parameters
    ----------
    volume : CTVolume
        One series.
    regressor : BodyPartRegressor, optional
        Default: the shipped model (:func:`default_regressor`).
    settings : AnalysisSettings, optional

    Returns
    -------
    BodyPartResult
        ``body_part_examined`` is None when an error anomaly makes the result untrustworthy
        or no region is found; ``anomalies`` says why.
    """
    settings = settings or AnalysisSettings()
    regressor = regressor or default_regressor()
    scored, body_pixels = score_with_content(volume, regressor)
    return interpret(volume, scored, body_pixels, regressor, settings)


def analyze_plan(plan: SeriesPlan, errors: list[str],
                 regressor: BodyPartRegressor | None = None, *,
                 settings: AnalysisSettings | None = None
                 ) -> tuple[BodyPartResult, SeriesDescription]:
    """:func:`analyze` for a DICOM series read chunk by chunk (:mod:`model.scoring.streaming`).

    Memory stays bounded on long series: the full-resolution volume is never held.
    Undecodable frames are appended to ``errors``; CTInputError when none can be decoded.
    """
    regressor = regressor or default_regressor()
    streamed = stream_series(plan, errors)
    series = streamed.description
    scored, body_pixels = _score_slices(streamed.slices, series.z_mm, regressor)
    result = interpret(series, scored, body_pixels, regressor,
                       settings or AnalysisSettings(), sample=streamed.sample)
    return result, series


def interpret(volume: CTVolume | SeriesDescription, scored: SliceScores,
              body_pixels: npt.ArrayLike | None, regressor: BodyPartRegressor,
              settings: AnalysisSettings, sample: ContentSample | None = None
              ) -> BodyPartResult:
    """:func:`analyze` after scoring (for callers that already have the scores).

    ``sample`` is what the image checks look at; by default taken from ``volume.hu``
    (which a :class:`SeriesDescription` does not have).
    """
    if sample is None:
        if not isinstance(volume, CTVolume):
            raise TypeError("a series without pixels needs its content sample")
        sample = ContentSample.of(volume.hu, volume.pixel_spacing_mm)
    stats = regressor.meta.statistics
    content = image_content(sample.hu, sample.pixel_spacing_mm)
    z = np.asarray(volume.z_mm, dtype=np.float64)
    cleaned = clean_scores(z, scored.scores, body_pixels=body_pixels, statistics=stats,
                           settings=settings.postprocess)
    table = landmark_table(regressor.meta.reference_table)
    expected, valid_range, warnings = _slope_parameters(stats, settings, cleaned.scores)
    warnings = list(cleaned.warnings) + warnings
    check = check_slope(z, cleaned.scores, expected, valid_range,
                        tolerance=_tolerance(stats, settings))
    named_scores, partial = cleaned.scores, None
    if content.limb_crop:
        # the model cannot place a limb crop: its slope says nothing about the header
        check = replace(check, reverse_z_ordering=None, valid_z_spacing=None,
                        expected_z_spacing_mm=None)
    elif check.unplaceable or _too_flat(check):
        check, named_scores, partial = _placed_part(z, cleaned.scores, check, stats, settings)
    anomalies = _anomalies(sample, cleaned, check, table, settings, content)
    if partial is not None:
        anomalies.append(partial)
    regions = body_part_examined_dict(z, cleaned.scores, table, settings.region_boundaries)
    tag = body_part_examined_tag(cleaned.scores, _z_range(z, cleaned), table,
                                 valid_z_spacing=check.valid_z_spacing,
                                 placeable=not (check.unplaceable or check.unordered),
                                 z_range_threshold_mm=settings.z_range_threshold_mm)
    clinical = clinical_regions(z, named_scores, table)
    term, term_regions, note = _term(clinical, anomalies)
    return BodyPartResult(
        identity=volume.identity, source=volume.source,
        series_instance_uid=volume.series_instance_uid, n_slices=volume.n_slices,
        pixel_spacing_mm=(float(volume.pixel_spacing_mm[0]),
                          float(volume.pixel_spacing_mm[1])),
        input_warnings=tuple(volume.warnings), patient_z_mm=tuple(float(v) for v in z),
        unprocessed_scores=tuple(float(v) for v in cleaned.unprocessed),
        cleaned_scores=tuple(float(v) if math.isfinite(v) else None for v in cleaned.scores),
        regions=regions, clinical_regions=clinical.regions,
        body_part_examined=term.term if term else None, snomed=term,
        term_regions=term_regions, term_note=note, body_part_examined_tag=tag.tag,
        tag_method=tag.method, reverse_z_ordering=check.reverse_z_ordering,
        valid_z_spacing=check.valid_z_spacing, z_spacing_mm=check.z_spacing_mm,
        expected_z_spacing_mm=check.expected_z_spacing_mm,
        observed_slope=check.observed_slope, expected_slope=check.expected_slope,
        slope_ratio=check.slope_ratio, valid_slope_ratio_range=check.valid_range,
        anomalies=tuple(anomalies), warnings=tuple(warnings),
        model_version=regressor.meta.version, landmark_table=table,
        settings=_settings_dict(settings, cleaned, stats, expected, valid_range),
    )


def _too_flat(check: SlopeCheck) -> bool:
    """The spacing check failed because the curve is flatter than the valid range."""
    return (check.valid_z_spacing is False and check.slope_ratio is not None
            and abs(check.slope_ratio) < check.valid_range[0])


def _placed_part(z: npt.NDArray[np.float64], cleaned: npt.NDArray[np.float64],
                 check: SlopeCheck, stats: Mapping[str, Any], settings: AnalysisSettings
                 ) -> tuple[SlopeCheck, npt.NDArray[np.float64], Anomaly | None]:
    """For a curve too flat as a whole: the check and scores of the part the model places.

    A header spacing off by ×2 flattens every part alike, so its placed part fails the
    check again; a curve flat only where the model cannot place the slices passes on the
    rest.

    Returns the check of the placed run, its scores (NaN elsewhere) and the warning that
    says so; or, when too little is placed, the whole curve's check with the placed share.
    """
    profile = SlopeProfile.from_statistics(stats.get("slope_profile"))
    mean = check.expected_slope or DEFAULT_EXPECTED_SLOPE

    def expected_at(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return profile.at(scores) if profile is not None else np.full(scores.shape, mean)

    placed_floor = _ratio_range(stats, settings, [])[0] / 2  # as check_slope's unplaceable
    placement = find_placement(z, cleaned, expected_at, placed_floor)
    if not placement.usable:
        return replace(check, placed_fraction=placement.fraction), cleaned, None
    placed = placement.only_placed(cleaned)
    expected, valid_range, _ = _slope_parameters(stats, settings, placed)
    return (check_slope(z, placed, expected, valid_range, tolerance=_tolerance(stats, settings)),
            placed, placement_anomaly(placement, z))


def _slope_parameters(stats: Mapping[str, Any], settings: AnalysisSettings,
                      cleaned: npt.NDArray[np.float64]
                      ) -> tuple[float, tuple[float, float], list[str]]:
    """Expected slope of this curve and valid |ratio| range.

    The expected slope follows the model's slope profile over the curve's scores when the
    model has one (:class:`~model.interpretation.sanity.SlopeProfile`), else its mean
    slope, else bpreg's; the range comes from settings, else the model, else bpreg.
    """
    warnings: list[str] = []
    profile = SlopeProfile.from_statistics(stats.get("slope_profile"))
    by_region = profile.expected_slope(cleaned) if profile is not None else None
    if by_region is not None:
        return by_region, _ratio_range(stats, settings, warnings), warnings
    slope_stats = stats.get("slope_per_mm")
    mean = slope_stats.get("mean") if isinstance(slope_stats, Mapping) else None
    if _positive(mean):
        expected = float(mean)
    else:
        expected = DEFAULT_EXPECTED_SLOPE
        warnings.append(f"model has no slope_per_mm statistics; the z-spacing check uses "
                        f"bpreg's expected slope {DEFAULT_EXPECTED_SLOPE} per mm")
    return expected, _ratio_range(stats, settings, warnings), warnings


def _ratio_range(stats: Mapping[str, Any], settings: AnalysisSettings,
                 warnings: list[str]) -> tuple[float, float]:
    if settings.slope_ratio_range is not None:
        return settings.slope_ratio_range
    if settings.slope_ratio_threshold is not None:
        return ratio_range_from_threshold(settings.slope_ratio_threshold)
    stored = stats.get("slope_ratio_range")
    if isinstance(stored, Sequence) and len(stored) == 2 and all(map(_positive, stored)):
        return float(stored[0]), float(stored[1])
    threshold = stats.get("slope_ratio_threshold")
    if _positive(threshold):
        return ratio_range_from_threshold(float(threshold))
    warnings.append(f"model has no slope_ratio_range or slope_ratio_threshold; the z-spacing "
                    f"check uses bpreg's threshold {DEFAULT_SLOPE_RATIO_THRESHOLD}")
    return ratio_range_from_threshold(DEFAULT_SLOPE_RATIO_THRESHOLD)


def _tolerance(stats: Mapping[str, Any], settings: AnalysisSettings
               ) -> ExtentTolerance | None:
    """The model's short-series tolerance; none for a range set by hand (applied as given)."""
    if settings.slope_ratio_range is not None or settings.slope_ratio_threshold is not None:
        return None
    return ExtentTolerance.from_statistics(stats.get("slope_ratio_by_extent"))


def _positive(x: object) -> TypeGuard[float]:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def _anomalies(sample: ContentSample, cleaned: CleanedScores, check: SlopeCheck,
               table: Mapping[str, LandmarkScore], settings: AnalysisSettings,
               content: ImageContent) -> list[Anomaly]:
    found: list[Anomaly | None] = []
    not_ct = ct_content_anomaly(sample.hu) if settings.check_content else None
    found.append(not_ct)
    found.append(no_body_anomaly(cleaned))
    if not_ct is None:  # the tissue rule of a limb crop assumes Hounsfield units
        found.append(limb_crop_anomaly(content))
    if cleaned.kept.any():
        scores = [v.score for v in table.values()]
        found.append(scope_anomaly(cleaned, (min(scores), max(scores))))
        if not content.limb_crop:
            found += slope_anomalies(check, cleaned.z_mm)
        unprocessed = np.where(cleaned.empty, np.nan, cleaned.unprocessed)
        candidates = find_discontinuities(cleaned.z_mm, unprocessed, settings.discontinuity)
        found += discontinuity_anomalies(
            judge_breaks(cleaned.z_mm, unprocessed, candidates, settings.discontinuity))
    return [a for a in found if a is not None]


def _z_range(z: npt.NDArray[np.float64], cleaned: CleanedScores) -> float:
    """Length of the scored part of the series: slice count × spacing, as in bpreg."""
    kept = z[cleaned.kept]
    if kept.size == 0:
        return 0.0
    spacing = float(np.median(np.diff(z))) if z.size > 1 else 0.0
    return float(np.ptp(kept)) + spacing


def _term(clinical: ClinicalResult, anomalies: Sequence[Anomaly]
          ) -> tuple[DicomTerm | None, tuple[str, ...], str]:
    errors = [a for a in anomalies if a.severity is Severity.ERROR]
    if errors:
        return None, (), "withheld: " + "; ".join(f"{a.code.value} ({a.message})" for a in errors)
    if clinical.choice is None:
        return None, (), "no region found"
    choice = clinical.choice
    return choice.term, choice.regions, choice.note


def _settings_dict(settings: AnalysisSettings, cleaned: CleanedScores,
                   stats: Mapping[str, Any], expected: float,
                   valid_range: tuple[float, float]) -> dict[str, Any]:
    bounds = cleaned.slope_bounds
    return {
        **settings.postprocess.to_dict(),
        "tangential_slope_min": bounds.low, "tangential_slope_max": bounds.high,
        "tangential_slope_source": bounds.source,
        "empty_slice_score": stats.get("empty_slice_score"),
        "expected_slope": expected, "valid_slope_ratio_range": list(valid_range),
        "z_range_threshold_mm": settings.z_range_threshold_mm,
        "region_boundaries": describe_boundaries(settings.region_boundaries),
        "discontinuity": asdict(settings.discontinuity),
    }
