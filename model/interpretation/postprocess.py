"""Cleaned slice scores (thesis §4.3, fig. 4.8).

The network scores every slice on its own, so the raw curve has empty slices, local noise
and sometimes nonsense at its ends. Cleaning follows the thesis steps, with the score scale
already applied by :class:`model.scoring.inference.BodyPartRegressor`:

1. **Filter empty slices.** A slice is dropped when the network input holds fewer than
   :data:`MIN_BODY_AREA_MM2` of tissue (> :data:`BODY_HU`), or when its score equals the
   model's calibrated empty-slice score (``statistics["empty_slice_score"]``) within a
   tolerance. Image content is the primary test: our empty-slice score can fall inside the
   body's score range (bpreg's lies above the head), so the score test only catches exact
   repeats of the empty output and its tolerance is tight.
2. **Smooth** with a Gaussian of σ in mm (default 10 mm). Weights come from the actual z
   distances between the kept slices and are normalised per slice, so gaps, variable pitch
   and removed slices are handled; a fixed-index filter would assume uniform spacing.
3. **Remove tails** below :data:`TAIL_LOW_SCORE` or above :data:`TAIL_HIGH_SCORE` whose
   tangential slope (eq. 4.17) lies outside the model's 0.5 %–99.5 % quantiles
   (``statistics["tangential_slope"]``, :func:`tangential_slope_quantiles`), and a skull cap's fall.

Removed slices are NaN in the arrays here; JSON output turns them into null.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from model.scoring import preprocess

FloatVector = npt.NDArray[np.float64]
BoolVector = npt.NDArray[np.bool_]
IntVector = npt.NDArray[np.int64]

#: Tissue threshold: lung parenchyma (≈ −850 HU) and air lie below it (as in
#: model.evaluation.lung_landmarks).
BODY_HU = -500.0
#: A slice shows a body when its tissue covers at least this area in the network input: 20 cm²,
#: a wrist or the last centimetre of the skull cap. Table edges, tubes, noise and the 11–16 cm²
#: remnants of OpenKBP's sparse CT below pt_227's shoulders (scored as abdomen) stay below.
MIN_BODY_AREA_MM2 = 2000.0
#: Slices whose score lies this close to the empty-slice score count as empty. The output for
#: an all-air input is deterministic, and the stored value is rounded to 4 decimals.
EMPTY_SCORE_TOLERANCE = 1e-3
#: Smoothing σ of the thesis (mm).
SMOOTHING_SIGMA_MM = 10.0
#: The Gaussian is cut at this many σ; the weight beyond is below 0.04 %.
SMOOTHING_TRUNCATE = 4.0
#: Scores below / above which a curve end counts as a tail (pelvis start and eyes end).
TAIL_LOW_SCORE = 0.0
TAIL_HIGH_SCORE = 100.0
#: A curve peaking above this score (above every head landmark: brainstem top 94.6–94.9) and
#: falling from there to its end by more than SKULL_CAP_FALL (≈ 5 cm) shows the skull cap: a
#: tail too. bpreg's 100 sits at our vertex (GE head peak: 100.1 or 99.6 by model).
SKULL_CAP_SCORE, SKULL_CAP_FALL = 95.0, 5.0
#: Quantiles of eq. 4.17 for the valid tangential slopes.
TANGENTIAL_QUANTILES = (0.005, 0.995)
#: bpreg's public-model defaults (per mm), used only when the model JSON lacks its own.
DEFAULT_TANGENTIAL_SLOPE = (-0.037, 0.25)
#: Rows per block of the smoothing weight matrix; bounds memory on long series.
_SMOOTH_BLOCK = 512


@dataclass(frozen=True)
class PostprocessSettings:
    """Parameters of the cleaning steps; defaults follow the thesis.

    Attributes
    ----------
    smoothing_sigma_mm : float
        σ of the Gaussian in mm; 0 turns smoothing off.
    min_body_area_mm2 : float
        Tissue area a slice needs in the network input to count as showing a body.
    empty_score_tolerance : float
        Score distance to the empty-slice score within which a slice counts as empty.
    remove_tails : bool
        Apply step 3 (tail removal).
    tail_scores : (float, float)
        A tail is the part of the curve below the first or above the second score.
    tangential_slope : (float, float) or None
        Valid tangential slope range (per mm); None takes the model's statistics.
    """

    smoothing_sigma_mm: float = SMOOTHING_SIGMA_MM
    min_body_area_mm2: float = MIN_BODY_AREA_MM2
    empty_score_tolerance: float = EMPTY_SCORE_TOLERANCE
    remove_tails: bool = True
    tail_scores: tuple[float, float] = (TAIL_LOW_SCORE, TAIL_HIGH_SCORE)
    tangential_slope: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the JSON ``settings``."""
        return {
            "smoothing_sigma_mm": self.smoothing_sigma_mm,
            "min_body_area_mm2": self.min_body_area_mm2,
            "empty_score_tolerance": self.empty_score_tolerance,
            "remove_tails": self.remove_tails,
            "tail_scores": list(self.tail_scores),
            "tangential_slope": self.tangential_slope and list(self.tangential_slope),
        }


@dataclass(frozen=True)
class SlopeBounds:
    """Valid tangential slope range (per mm) and where it came from."""

    low: float
    high: float
    source: str  # "model", "settings" or "default"


@dataclass(frozen=True)
class CleanedScores:
    """Result of :func:`clean_scores`; every array has one entry per slice.

    Attributes
    ----------
    z_mm : ndarray
        Slice positions.
    unprocessed : ndarray
        Scores on the reference scale before cleaning.
    smoothed : ndarray
        After steps 1-2: NaN for empty slices.
    scores : ndarray
        Cleaned scores after steps 1-3: NaN where removed.
    has_body : ndarray of bool
        Slices with enough tissue (all True when image content was not given).
    empty_score : ndarray of bool
        Slices whose score matches the empty-slice score.
    tail : ndarray of bool
        Slices removed as tails in step 3.
    slope_bounds : SlopeBounds
        Tangential slope range used in step 3.
    warnings : tuple of str
        Fallbacks taken (e.g. default slope bounds).
    """

    z_mm: FloatVector
    unprocessed: FloatVector
    smoothed: FloatVector
    scores: FloatVector
    has_body: BoolVector
    empty_score: BoolVector
    tail: BoolVector
    slope_bounds: SlopeBounds
    warnings: tuple[str, ...] = field(default=())

    @property
    def kept(self) -> BoolVector:
        """Slices with a cleaned score."""
        kept: BoolVector = np.isfinite(self.scores)
        return kept

    @property
    def empty(self) -> BoolVector:
        """Slices dropped in step 1."""
        empty: BoolVector = ~self.has_body | self.empty_score
        return empty


# --- step 1: empty slices -----------------------------------------------------------------


def body_pixel_counts(slices: npt.NDArray[np.floating[Any]]) -> IntVector:
    """Tissue pixels (> :data:`BODY_HU`) per preprocessed slice of shape (n, S, S).

    Counted on the network input so that what is cropped away there does not count.
    """
    threshold = (BODY_HU - preprocess.HU_MIN) * 2.0 / (preprocess.HU_MAX - preprocess.HU_MIN) - 1.0
    counts: IntVector = (np.asarray(slices) > threshold).sum(axis=(1, 2)).astype(np.int64)
    return counts


def min_body_pixels(area_mm2: float = MIN_BODY_AREA_MM2,
                    pixel_spacing_mm: float = preprocess.PIXEL_SPACING_MM) -> int:
    """Pixels of the network grid that make up ``area_mm2``."""
    return max(1, math.ceil(area_mm2 / (pixel_spacing_mm * pixel_spacing_mm)))


def empty_score_mask(scores: FloatVector, empty_slice_score: float | None,
                     tolerance: float = EMPTY_SCORE_TOLERANCE) -> BoolVector:
    """Slices whose score equals the model's empty-slice score within ``tolerance``."""
    if empty_slice_score is None or not math.isfinite(empty_slice_score):
        return np.zeros(scores.shape, dtype=bool)
    match: BoolVector = np.abs(scores - empty_slice_score) <= tolerance
    return match


# --- step 2: smoothing --------------------------------------------------------------------


def gaussian_smooth(z_mm: npt.ArrayLike, scores: npt.ArrayLike, sigma_mm: float,
                    truncate: float = SMOOTHING_TRUNCATE) -> FloatVector:
    """Gaussian smoothing over the real slice positions.

    ``out_i = Σ_j w_ij s_j / Σ_j w_ij`` with ``w_ij = exp(−(z_i − z_j)² / 2σ²)`` over the
    finite scores within ``truncate·σ``; NaN scores neither contribute nor get a value.

    Parameters
    ----------
    z_mm : array_like, shape (n,)
        Slice positions in mm (any order, any spacing).
    scores : array_like, shape (n,)
        Scores; NaN marks removed slices.
    sigma_mm : float
        Standard deviation in mm; 0 or less returns a copy.

    Returns
    -------
    ndarray, shape (n,)
        Smoothed scores, NaN where the input was NaN.
    """
    z = np.asarray(z_mm, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    out = np.full(s.shape, np.nan)
    ok = np.isfinite(s)
    if sigma_mm <= 0 or not ok.any():
        out[ok] = s[ok]
        return out
    zk, sk = z[ok], s[ok]
    smoothed = np.empty(zk.shape)
    for start in range(0, zk.size, _SMOOTH_BLOCK):
        d = (zk[start:start + _SMOOTH_BLOCK, None] - zk[None, :]) / sigma_mm
        w = np.exp(-0.5 * d * d)
        w[np.abs(d) > truncate] = 0.0
        smoothed[start:start + _SMOOTH_BLOCK] = (w @ sk) / w.sum(axis=1)
    out[ok] = smoothed
    return out


# --- step 3: tails ------------------------------------------------------------------------


def tangential_slopes(z_mm: npt.ArrayLike, scores: npt.ArrayLike) -> FloatVector:
    """Eq. 4.17 between consecutive finite scores: ``(s_{i+1} − s_i) / (z_{i+1} − z_i)``."""
    z = np.asarray(z_mm, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(s)
    slopes: FloatVector = np.diff(s[ok]) / np.diff(z[ok])
    return slopes


def fitted_slope(z_mm: npt.ArrayLike, scores: npt.ArrayLike) -> float | None:
    """Slope (score per mm) of a least-squares line through the finite scores."""
    z = np.asarray(z_mm, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(s)
    if ok.sum() < 2 or np.ptp(z[ok]) == 0:
        return None
    zc = z[ok] - z[ok].mean()
    return float(zc @ (s[ok] - s[ok].mean()) / (zc @ zc))


def tail_mask(z_mm: npt.ArrayLike, smoothed: npt.ArrayLike, bounds: SlopeBounds,
              tail_scores: tuple[float, float] = (TAIL_LOW_SCORE, TAIL_HIGH_SCORE)
              ) -> BoolVector:
    """Slices of the curve's tails that step 3 removes.

    Along the direction of rising score, the low tail runs up to the last atypical
    tangential slope that starts below ``tail_scores[0]``, and the high tail from the first
    atypical slope that ends above ``tail_scores[1]``, or from a skull cap's peak
    (:data:`SKULL_CAP_SCORE`). The direction comes from the fitted slope, so a reversed
    series loses its tails at the correct ends instead of everywhere (its slopes would all
    be negative, hence atypical).

    Parameters
    ----------
    z_mm, smoothed : array_like, shape (n,)
        Positions and smoothed scores (NaN for empty slices).
    bounds : SlopeBounds
        Valid tangential slope range per mm.
    tail_scores : (float, float)
        Scores outside which the curve is a tail.
    """
    z = np.asarray(z_mm, dtype=np.float64)
    s = np.asarray(smoothed, dtype=np.float64)
    mask = np.zeros(s.shape, dtype=bool)
    idx = np.flatnonzero(np.isfinite(s))
    if idx.size < 2:
        return mask
    slope = fitted_slope(z, s)
    if slope is not None and slope < 0:
        idx = idx[::-1]
    zk, sk = z[idx], s[idx]
    m = np.diff(sk) / np.abs(np.diff(zk))  # per mm along the rising direction
    bad = (m < bounds.low) | (m > bounds.high)
    low = np.flatnonzero(bad & (sk[:-1] < tail_scores[0]))
    high = np.flatnonzero(bad & (sk[1:] > tail_scores[1]))
    if low.size:
        mask[idx[: low[-1] + 1]] = True
    if high.size:
        mask[idx[high[0] + 1:]] = True
    peak = int(np.argmax(sk))
    after = sk[peak + 1:]  # a skull cap falls to the curve's end; a spike's fall rises again
    if (after.size and sk[peak] > SKULL_CAP_SCORE and sk[peak] - after[-1] > SKULL_CAP_FALL
            and int(np.argmin(after)) == after.size - 1):
        mask[idx[peak + 1:]] = True
    return mask


def slope_bounds(statistics: Mapping[str, Any], settings: PostprocessSettings
                 ) -> tuple[SlopeBounds, list[str]]:
    """Tangential slope range from the settings, else the model, else bpreg's defaults."""
    if settings.tangential_slope is not None:
        low, high = settings.tangential_slope
        return SlopeBounds(float(low), float(high), "settings"), []
    stored = statistics.get("tangential_slope")
    if isinstance(stored, Mapping) and _finite_number(stored.get("q005")) \
            and _finite_number(stored.get("q995")):
        # Clamped at 0: where training curves wobble backwards (q005 < 0), falling tails
        # would count as valid and stay, e.g. a tilted head's skull cap (then unplaceable).
        low = max(float(stored["q005"]), 0.0)
        return SlopeBounds(low, float(stored["q995"]), "model"), []
    low, high = DEFAULT_TANGENTIAL_SLOPE
    return SlopeBounds(low, high, "default"), [
        f"model has no tangential slope statistics; tail removal uses bpreg's defaults "
        f"{low} … {high} per mm"
    ]


def _finite_number(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(float(x))


# --- all steps ----------------------------------------------------------------------------


def clean_scores(
    z_mm: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    body_pixels: npt.ArrayLike | None = None,
    statistics: Mapping[str, Any] | None = None,
    settings: PostprocessSettings | None = None,
) -> CleanedScores:
    """Cleaned slice scores of one volume (fig. 4.8).

    Parameters
    ----------
    z_mm : array_like, shape (n,)
        Slice positions in mm.
    scores : array_like, shape (n,)
        Scores on the reference scale (``SliceScores.scores``).
    body_pixels : array_like of int, shape (n,), optional
        Tissue pixels per slice of the network input (:func:`body_pixel_counts`); without
        it only the empty-slice score finds empty slices.
    statistics : mapping, optional
        ``ModelMeta.statistics``: ``empty_slice_score`` and ``tangential_slope``.
    settings : PostprocessSettings, optional

    Returns
    -------
    CleanedScores
    """
    settings = settings or PostprocessSettings()
    statistics = statistics or {}
    z = np.asarray(z_mm, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    warnings: list[str] = []
    if body_pixels is None:
        has_body = np.ones(s.shape, dtype=bool)
    else:
        has_body = np.asarray(body_pixels) >= min_body_pixels(settings.min_body_area_mm2)
    empty_value = statistics.get("empty_slice_score")
    if not _finite_number(empty_value):
        empty_value = None
        warnings.append("model has no empty_slice_score; empty slices are found by image "
                        "content only")
    matches = empty_score_mask(s, empty_value, settings.empty_score_tolerance)
    filtered = np.where(has_body & ~matches & np.isfinite(s), s, np.nan)
    smoothed = gaussian_smooth(z, filtered, settings.smoothing_sigma_mm)
    bounds, bound_warnings = slope_bounds(statistics, settings)
    tails = np.zeros(s.shape, dtype=bool)
    if settings.remove_tails:
        warnings += bound_warnings
        tails = tail_mask(z, smoothed, bounds, settings.tail_scores)
    cleaned = np.where(tails, np.nan, smoothed)
    return CleanedScores(z_mm=z, unprocessed=s, smoothed=smoothed, scores=cleaned,
                         has_body=has_body, empty_score=matches, tail=tails,
                         slope_bounds=bounds, warnings=tuple(warnings))


# --- model statistics ---------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreCurve:
    """Scores of one volume for model statistics (calibrated scale).

    Attributes
    ----------
    z_mm, scores : ndarray
        Slice positions and unprocessed scores on the reference scale.
    has_body : ndarray of bool or None
        Slices with image content; None keeps every slice.
    name : str
        For messages.
    """

    z_mm: FloatVector
    scores: FloatVector
    has_body: BoolVector | None = None
    name: str = ""

    def filtered(self, empty_slice_score: float | None = None) -> FloatVector:
        """Scores after step 1 (NaN for empty slices)."""
        keep = np.isfinite(self.scores)
        if self.has_body is not None:
            keep &= self.has_body
        keep &= ~empty_score_mask(self.scores, empty_slice_score)
        return np.where(keep, self.scores, np.nan)


class VolumeScoresLike(Protocol):
    """What :func:`curves_from_volume_scores` reads (``model.evaluation.evaluate.VolumeScores``)."""

    @property
    def name(self) -> str: ...
    @property
    def split(self) -> str: ...
    @property
    def z_mm(self) -> FloatVector: ...
    @property
    def raw(self) -> FloatVector: ...
    @property
    def occupied(self) -> BoolVector: ...


def curves_from_volume_scores(volumes: Iterable[VolumeScoresLike], scale: float,
                              offset: float, split: str | None = "train") -> list[ScoreCurve]:
    """Score curves of evaluated volumes (``model.evaluation.evaluate.VolumeScores``) of one split.

    ``occupied`` (image content, ≥ 10 cm² body section) stands in for the body pixel rule.
    """
    return [ScoreCurve(z_mm=np.asarray(v.z_mm, np.float64),
                       scores=scale * np.asarray(v.raw, np.float64) + offset,
                       has_body=np.asarray(v.occupied, bool), name=v.name)
            for v in volumes if split is None or v.split == split]


def tangential_slope_quantiles(
    curves: Iterable[ScoreCurve],
    *,
    empty_slice_score: float | None = None,
    sigma_mm: float = SMOOTHING_SIGMA_MM,
    quantiles: tuple[float, float] = TANGENTIAL_QUANTILES,
) -> dict[str, float | int]:
    """``statistics["tangential_slope"]``: quantiles of eq. 4.17 slopes over volumes.

    Each curve goes through steps 1-2 (empty slices out, smoothing), then the tangential
    slopes of all volumes are pooled, as in the thesis.

    Parameters
    ----------
    curves : iterable of ScoreCurve
        Training volumes on the calibrated scale.
    empty_slice_score : float, optional
        The model's empty-slice score on the same scale.
    sigma_mm : float
        Smoothing σ; must match inference.
    quantiles : (float, float)
        Lower and upper quantile (0.5 % and 99.5 %).

    Returns
    -------
    dict
        ``{"q005": low, "q995": high, "n_slopes": int, "n_volumes": int}``.

    Raises
    ------
    ValueError
        If no curve has two scored slices.
    """
    pooled: list[FloatVector] = []
    for curve in curves:
        smoothed = gaussian_smooth(curve.z_mm, curve.filtered(empty_slice_score), sigma_mm)
        slopes = tangential_slopes(curve.z_mm, smoothed)
        if slopes.size:
            pooled.append(slopes)
    if not pooled:
        raise ValueError("no score curve with two scored slices")
    values = np.concatenate(pooled)
    return {"q005": float(np.quantile(values, quantiles[0])),
            "q995": float(np.quantile(values, quantiles[1])),
            "n_slopes": int(values.size), "n_volumes": len(pooled)}


def cleaned_curves(curves: Sequence[ScoreCurve], statistics: Mapping[str, Any],
                   settings: PostprocessSettings | None = None) -> list[CleanedScores]:
    """:func:`clean_scores` of each curve (for statistics computed on cleaned scores)."""
    out = []
    for c in curves:
        body = None if c.has_body is None else np.where(c.has_body, 1 << 30, 0)
        out.append(clean_scores(c.z_mm, c.scores, body_pixels=body, statistics=statistics,
                                settings=settings))
    return out
