"""Post-processing statistics the model stores with its weights, measured on training curves.

:func:`postprocessing_statistics` cleans the score curves of the training volumes and
measures what :func:`~model.interpretation.analysis.analyze` reads back from the model's
JSON: the tangential-slope quantiles of tail removal, the expected slope per mm, and the
valid slope-ratio range of the z-spacing check (:func:`calibrate_slope_ratio_range`;
the thesis' single threshold θ, :func:`calibrate_slope_threshold`, is stored beside it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from model.interpretation.postprocess import (
    CleanedScores,
    FloatVector,
    PostprocessSettings,
    ScoreCurve,
    cleaned_curves,
    fitted_slope,
    tangential_slope_quantiles,
)
from model.interpretation.rank_correlation import spearman_rho
from model.interpretation.sanity import (
    DETECT_FACTORS,
    MIN_ORDER_RHO,
    MIN_SLICES_FOR_SLOPE,
    SlopeProfile,
)
from model.interpretation.spacing_tolerance import TOLERANCE_QUANTILES, WINDOW_EXTENTS_MM

#: Curves whose slope lies outside [1/k, k] × the median training slope are left out of
#: the slope statistics: the model cannot place their slices (small limb crops in our data)
#: or their header is wrong, and either would bias the expected slope.
SLOPE_OUTLIER_FACTOR = 2.0
#: Score bins of the slope profile (wide enough that each holds ≥ 20 mm of most curves).
PROFILE_BIN_WIDTH = 10.0
#: A bin enters the profile with slopes of at least this many curves; others are left to
#: interpolation between their neighbours, or beyond the outermost bins to their slope. Two,
#: because only two real training curves show the pelvis: with three (run p24) the pelvis
#: had no bin and took the abdomen's slope (0.096 against its own 0.12-0.13 per mm), its
#: training windows then reached slope ratios of 1.8, and the short-series tolerance grew
#: so wide that ×½ spacing went unnoticed on 7 more volumes (`term_report`: 133 of 143
#: caught, 140 with two).
PROFILE_MIN_CURVES = 2
#: A curve contributes to a bin with at least this many slices spanning this many mm there.
PROFILE_MIN_SLICES = 4
PROFILE_MIN_MM = 20.0

#: What a per-curve expected slope is: the model's mean slope, or its profile.
Expected = float | SlopeProfile


def postprocessing_statistics(curves: Sequence[ScoreCurve], *,
                              empty_slice_score: float | None,
                              settings: PostprocessSettings | None = None) -> dict[str, Any]:
    """Statistics the model JSON needs for :func:`~model.interpretation.analysis.analyze`,
    from training curves.

    1. Clean every curve without tail removal and keep the typical ones (slope within
       [½, 2] × the median, scores that follow the slices; :func:`typical_curves`).
    2. ``tangential_slope``: 0.5 % / 99.5 % quantiles of eq. 4.17 over those (thesis).
    3. ``slope_per_mm``: line fits to the fully cleaned curves (expected slope m̄_s), and
       ``slope_profile``: the slope per score bin (:func:`slope_profile`).
    4. ``slope_ratio_range``: valid [r_lo, r_hi] of |slope ratio| against the profile,
       halfway in log space between the typical ratio of the curves as stored and the
       same ratio with the z-spacing scaled by 2 and 0.5
       (:func:`calibrate_slope_ratio_range`), and the thesis' single
       ``slope_ratio_threshold`` θ against the mean slope (:func:`calibrate_slope_threshold`).
    5. ``slope_ratio_by_extent``: what short windows of those curves reach
       (:func:`extent_tolerance_statistics`), the tolerance of short series.

    Parameters
    ----------
    curves : sequence of ScoreCurve
        Training volumes on the calibrated scale
        (:func:`model.interpretation.postprocess.curves_from_volume_scores`).
    empty_slice_score : float or None
        ``statistics["empty_slice_score"]`` on the same scale.
    settings : PostprocessSettings, optional
        Must match inference (σ, body area).

    Returns
    -------
    dict
        ``{"tangential_slope": {...}, "slope_per_mm": {...}, "slope_ratio_range": [lo, hi],
        "slope_ratio_threshold": θ}`` to merge into ``ModelMeta.statistics``.
    """
    settings = settings or PostprocessSettings()
    base: dict[str, Any] = {"empty_slice_score": empty_slice_score}
    untailed = cleaned_curves(curves, base, replace(settings, remove_tails=False))
    typical = {id(c) for _, c in typical_curves(untailed)}
    chosen = [c for c, u in zip(curves, untailed, strict=True) if id(u) in typical]
    tangential = tangential_slope_quantiles(chosen, empty_slice_score=empty_slice_score,
                                            sigma_mm=settings.smoothing_sigma_mm)
    full = cleaned_curves(curves, {**base, "tangential_slope": tangential}, settings)
    slope = slope_statistics(full)
    profile = slope_profile(full)
    stored_profile = SlopeProfile.from_statistics(profile)
    expected: Expected = stored_profile or float(slope["mean"])
    lo, hi = calibrate_slope_ratio_range(full, expected)
    threshold = calibrate_slope_threshold(full, float(slope["mean"]))
    return {"tangential_slope": tangential, "slope_per_mm": slope, "slope_profile": profile,
            "slope_ratio_range": [round(lo, 4), round(hi, 4)],
            "slope_ratio_by_extent": extent_tolerance_statistics(full, expected),
            "slope_ratio_threshold": round(threshold, 4)}


def slope_profile(curves: Sequence[CleanedScores]) -> dict[str, Any]:
    """``statistics["slope_profile"]``: median slope per mm of the typical curves per score bin.

    Each typical curve (:func:`typical_curves`) gives a line-fit slope in every bin of
    :data:`PROFILE_BIN_WIDTH` where it has :data:`PROFILE_MIN_SLICES` cleaned slices over
    :data:`PROFILE_MIN_MM`; bins with slopes of :data:`PROFILE_MIN_CURVES` curves are kept.

    Returns
    -------
    dict
        ``{"score": [bin centres], "slope_per_mm": [medians], "n_curves": [counts],
        "bin_width": width}``; empty lists when no bin has enough curves.
    """
    per_bin: dict[float, list[float]] = {}
    for _, curve in typical_curves(curves):
        for centre, local in _bin_slopes(curve).items():
            per_bin.setdefault(centre, []).append(local)
    kept = sorted((c, v) for c, v in per_bin.items() if len(v) >= PROFILE_MIN_CURVES)
    return {"score": [c for c, _ in kept],
            "slope_per_mm": [round(float(np.median(v)), 6) for _, v in kept],
            "n_curves": [len(v) for _, v in kept], "bin_width": PROFILE_BIN_WIDTH}


def _bin_slopes(curve: CleanedScores) -> dict[float, float]:
    s, z = curve.scores, curve.z_mm
    out: dict[float, float] = {}
    finite = s[np.isfinite(s)]
    if finite.size == 0:
        return out
    w = PROFILE_BIN_WIDTH
    for lo in np.arange(np.floor(finite.min() / w) * w, finite.max() + w, w):
        inside = np.isfinite(s) & (s >= lo) & (s < lo + w)
        if inside.sum() >= PROFILE_MIN_SLICES and np.ptp(z[inside]) >= PROFILE_MIN_MM:
            m = fitted_slope(z[inside], s[inside])
            if m is not None and m > 0:
                out[float(lo + w / 2)] = m
    return out


def _curve_slopes(curves: Iterable[CleanedScores]) -> FloatVector:
    slopes = [fitted_slope(c.z_mm, c.scores) for c in curves
              if int(c.kept.sum()) >= MIN_SLICES_FOR_SLOPE]
    return np.array([m for m in slopes if m is not None], dtype=np.float64)


def typical_curves(curves: Iterable[CleanedScores]) -> list[tuple[float, CleanedScores]]:
    """(line-fit slope, curve) of the curves with enough cleaned slices, scores that follow
    the slices (:data:`~model.interpretation.sanity.MIN_ORDER_RHO`, as at inference) and a
    typical slope (:func:`typical_slopes`), in their order.

    A limb crop's hump of scores can fit a line of typical slope; its steep flanks would
    widen every tolerance taken from these curves.
    """
    fitted = [(fitted_slope(c.z_mm, c.scores), c) for c in curves
              if int(c.kept.sum()) >= MIN_SLICES_FOR_SLOPE and _ordered(c)]
    pairs = [(m, c) for m, c in fitted if m is not None]
    typical = set(typical_slopes([m for m, _ in pairs]).tolist())
    return [(m, c) for m, c in pairs if m in typical]


def _ordered(curve: CleanedScores) -> bool:
    kept = curve.kept
    return abs(spearman_rho(curve.z_mm[kept], curve.scores[kept])) >= MIN_ORDER_RHO


def typical_slopes(slopes: npt.ArrayLike, factor: float = SLOPE_OUTLIER_FACTOR) -> FloatVector:
    """Slopes within [median / factor, median · factor] (see :data:`SLOPE_OUTLIER_FACTOR`)."""
    m = np.asarray(slopes, dtype=np.float64)
    med = float(np.median(m)) if m.size else math.nan
    if not med > 0:
        return np.zeros(0)
    kept: FloatVector = m[(m >= med / factor) & (m <= med * factor)]
    return kept


def slope_statistics(curves: Iterable[CleanedScores]) -> dict[str, float | int]:
    """``statistics["slope_per_mm"]`` from cleaned training curves (thesis §4.3).

    A line is fitted to each cleaned curve against patient z; slopes of atypical curves
    (:func:`typical_curves`) are left out.

    Returns
    -------
    dict
        ``n``, ``mean`` (the expected slope m̄_s), ``sd``, ``q05``, ``median``, ``q95`` and
        ``n_excluded``.

    Raises
    ------
    ValueError
        If no curve has enough cleaned slices.
    """
    curves = list(curves)
    all_slopes = _curve_slopes(curves)
    m = np.array([slope for slope, _ in typical_curves(curves)], dtype=np.float64)
    if m.size == 0:
        raise ValueError("no cleaned curve with a positive typical slope")
    return {"n": int(m.size), "mean": float(m.mean()),
            "sd": float(m.std(ddof=1)) if m.size > 1 else 0.0,
            "q05": float(np.quantile(m, 0.05)), "median": float(np.median(m)),
            "q95": float(np.quantile(m, 0.95)), "n_excluded": int(all_slopes.size - m.size)}


def _typical_ratios(curves: Iterable[CleanedScores], expected: Expected) -> FloatVector:
    if isinstance(expected, float | int) and not expected > 0:
        raise ValueError(f"expected slope must be positive, got {expected}")
    ratios = [m / _expected_of(c, expected) for m, c in typical_curves(curves)]
    if not ratios:
        raise ValueError("no cleaned curve with a positive typical slope")
    return np.array(ratios, dtype=np.float64)


def _expected_of(curve: CleanedScores, expected: Expected) -> float:
    slope = _expected_at(curve.scores, expected)
    if slope is None:
        raise ValueError("a typical curve without cleaned scores")
    return slope


def _expected_at(scores: FloatVector, expected: Expected) -> float | None:
    """Expected slope of a curve with these cleaned scores (None: no finite score)."""
    if isinstance(expected, SlopeProfile):
        return expected.expected_slope(scores)
    return float(expected)


def calibrate_slope_ratio_range(curves: Iterable[CleanedScores], expected_slope: Expected,
                                factors: Sequence[float] = DETECT_FACTORS
                                ) -> tuple[float, float]:
    """Valid range [r_lo, r_hi] of |r| for the z-spacing check, from training curves.

    The check decides between two hypotheses per series: the header spacing is right
    (|r| near the typical training ratio c), or it is off by a factor f (|r| near c / f).
    Both spread alike in log |r| (patient size, model error), so the decision boundary
    lies halfway between them in log space: r_lo = c / √f for the nearest f > 1 and
    r_hi = c / √f for the nearest f < 1, with c the median of the typical training
    ratios. Unlike a cut fitted to the extremes, this does not move with a few curves the
    model cannot place (limb crops flatten the low end of our training ratios): a
    brain CT whose curve is 35 % steeper than average still passes, while a
    halved or doubled spacing of any curve within √2 of c is caught.

    Parameters
    ----------
    curves : iterable of CleanedScores
        Training curves on the calibrated scale.
    expected_slope : float or SlopeProfile
        m̄_s from :func:`slope_statistics`, or the profile each curve's expected slope
        follows (as at inference).
    factors : sequence of float
        Header spacing errors to detect (×2 and ×0.5).

    Raises
    ------
    ValueError
        If no typical curve exists or ``expected_slope`` is not positive.
    """
    ratios = np.abs(_typical_ratios(curves, expected_slope))
    centre = float(np.exp(np.median(np.log(ratios))))
    above = [f for f in factors if f > 1]
    below = [f for f in factors if 0 < f < 1]
    lo = centre / math.sqrt(min(above)) if above else 0.0
    hi = centre / math.sqrt(max(below)) if below else math.inf
    return lo, hi


def extent_tolerance_statistics(curves: Sequence[CleanedScores], expected: Expected,
                                extents_mm: Sequence[float] = WINDOW_EXTENTS_MM
                                ) -> dict[str, list[float] | list[int]]:
    """``statistics["slope_ratio_by_extent"]``: |slope ratio| quantiles of short windows.

    Every typical curve (:func:`typical_curves`) is cut into windows of each extent, one
    every half extent; each window with :data:`MIN_SLICES_FOR_SLOPE` cleaned slices over at
    least 90 % of the extent gives its slope ÷ its expected slope, as a series of that
    extent would at inference (:class:`~model.interpretation.spacing_tolerance.ExtentTolerance`).

    Returns
    -------
    dict
        ``{"extent_mm": [...], "ratio_low": [...], "ratio_high": [...], "n_windows": [...]}``
        at :data:`~model.interpretation.spacing_tolerance.TOLERANCE_QUANTILES`; extents
        without windows are left out.
    """
    chosen = [c for _, c in typical_curves(curves)]
    rows: list[tuple[float, float, float]] = []
    counts: list[int] = []
    for extent in extents_mm:
        ratios = np.abs([r for c in chosen for r in _window_ratios(c, expected, extent)])
        if ratios.size == 0:
            continue
        low, high = np.quantile(ratios, TOLERANCE_QUANTILES)
        rows.append((float(extent), round(float(low), 4), round(float(high), 4)))
        counts.append(int(ratios.size))
    return {"extent_mm": [r[0] for r in rows], "ratio_low": [r[1] for r in rows],
            "ratio_high": [r[2] for r in rows], "n_windows": counts}


def _window_ratios(curve: CleanedScores, expected: Expected, extent: float) -> list[float]:
    z, s = curve.z_mm, curve.scores
    finite = np.isfinite(s)
    if not finite.any():
        return []
    first, last = float(z[finite].min()), float(z[finite].max())
    ratios = []
    for start in np.arange(first, last - extent + 1e-6, extent / 2):
        inside = finite & (z >= start) & (z <= start + extent)
        if inside.sum() < MIN_SLICES_FOR_SLOPE or np.ptp(z[inside]) < 0.9 * extent:
            continue
        slope = fitted_slope(z[inside], s[inside])
        wanted = _expected_at(s[inside], expected)
        if slope is not None and wanted is not None:
            ratios.append(slope / wanted)
    return ratios


def calibrate_slope_threshold(curves: Iterable[CleanedScores], expected_slope: float,
                              factors: Sequence[float] = DETECT_FACTORS) -> float:
    """The thesis' θ (γ = |1 − |r|| ≤ θ) from training curves.

    Each typical curve gives γ as stored (must pass) and with its z-spacing scaled by
    each of ``factors`` (must fail); θ is the middle of the widest gap among the cuts with
    the fewest misclassified curves. Kept for the thesis' rule and bpreg-style output;
    :func:`calibrate_slope_ratio_range` separates better.

    Raises
    ------
    ValueError
        If no typical curve exists or ``expected_slope`` is not positive.
    """
    ratios = np.abs(_typical_ratios(curves, expected_slope))
    good = np.abs(1.0 - ratios)
    bad = np.concatenate([np.abs(1.0 - ratios / f) for f in factors])
    return _best_split(good, bad)


def _best_split(good: FloatVector, bad: FloatVector) -> float:
    """Threshold t (good ≤ t < bad) with fewest errors, in the widest gap between values."""
    values = np.unique(np.concatenate([good, bad]))
    if values.size == 1:
        return float(values[0])
    cuts = (values[:-1] + values[1:]) / 2
    errors = np.array([(good > t).sum() + (bad <= t).sum() for t in cuts])
    best = np.flatnonzero(errors == errors.min())
    return float(cuts[best[np.argmax(np.diff(values)[best])]])
