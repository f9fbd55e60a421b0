"""Registration prealignment along z from slice scores (Meine & Hering).

Two CT scans of the same or different patients are aligned along the body axis by their
score curves: the same anatomy has the same score, so the shift that makes the curves
agree is the z offset between the scans. The result is ``offset_mm``: add it to a
moving-scan z to get the fixed-scan z of the same anatomy.

Two methods, as in the paper:

* **three-slice** (fast): score three slices of the moving scan (at 25/50/75 % of the
  extent with image content), find for each the z where the fixed scan's cleaned curve
  has the same score, and take the median of the differences. (The paper scores the
  fixed scan's first and last slice and the moving scan's centre slice and interpolates
  linearly; with the fixed curve at hand, looking up its real shape is as cheap and
  does not assume a straight curve.)
* **l1**: resample both cleaned curves to a common spacing (1 mm) and minimise
  ``mean |s_f(z) − s_m(z − Δ)|`` over the overlap, requiring an overlap of at least
  ``min_overlap_mm`` (at most the shorter scan), refined to sub-grid precision with a
  parabola through the best three shifts.

**Small or no overlap.** When less than half of ``min_overlap_mm`` of either curve lies
in the other's score range (e.g. a chest and a pelvis scan), nothing can be matched and both
methods extrapolate with the score slope ``m`` (score per mm): the facing ends of the
two curves are placed ``(s_moving_end − s_fixed_end) / m`` mm apart, ``m`` being the
mean of the two facing ends' slopes (:func:`end_slope`: straight-line fit over the last
:data:`SLOPE_WINDOW_MM`, else the whole curve, else the model's mean slope from its
metadata). A three-slice sample whose score lies outside the fixed curve is placed the
same way beyond the fixed curve's nearer end. The result says ``extrapolated=True``;
its error grows with the gap, as the score is not linear in mm: with the shipped model
ssbr-82565a5f156b, gaps of 25-100 mm cut out of 23 real scans were bridged with a median
error of 12-14 mm (28 % of the gap), the worst 70-80 mm. Treat such an offset as a
starting point, not a registration.

The ``bpr align`` command is :mod:`model.cli.align`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from model.interpretation.postprocess import BODY_HU, MIN_BODY_AREA_MM2
from model.reading.volume import CTVolume
from model.scoring.inference import BodyPartRegressor
from model.scoring.preprocess import preprocess_slices
from model.tools.cropping import score_and_clean

FloatVector = npt.NDArray[np.float64]
IntVector = npt.NDArray[np.intp]

Method = Literal["three-slice", "l1"]

#: Fractions of the moving scan's extent where the three-slice method samples.
THREE_SLICE_FRACTIONS = (0.25, 0.5, 0.75)
#: Common grid spacing of the ℓ1 matching.
L1_SPACING_MM = 1.0
#: Shortest overlap the ℓ1 matching accepts (shorter scans: their whole length); a mean
#: over a few millimetres fits any shift.
MIN_OVERLAP_MM = 50.0
#: Length of the curve end whose slope extrapolates beyond it.
SLOPE_WINDOW_MM = 100.0


@dataclass(frozen=True)
class ScoreProfile:
    """Cleaned slice scores of one scan.

    Attributes
    ----------
    z_mm : ndarray, shape (n,)
        Slice positions, increasing.
    scores : ndarray, shape (n,)
        Cleaned scores; NaN for removed slices.
    """

    z_mm: FloatVector
    scores: FloatVector

    def __post_init__(self) -> None:
        if self.z_mm.shape != self.scores.shape or self.z_mm.ndim != 1:
            raise ValueError(f"{self.scores.size} scores for {self.z_mm.size} positions")

    @classmethod
    def of(cls, z_mm: npt.ArrayLike, scores: npt.ArrayLike) -> ScoreProfile:
        """From any array-likes (converted to float64)."""
        return cls(np.asarray(z_mm, dtype=np.float64), np.asarray(scores, dtype=np.float64))

    def valid(self) -> tuple[FloatVector, FloatVector]:
        """Positions and scores of the slices with a finite score."""
        keep = np.isfinite(self.scores)
        return self.z_mm[keep], self.scores[keep]

    def extent(self) -> tuple[float, float]:
        """First and last scored position.

        Raises
        ------
        ValueError
            If no slice has a score.
        """
        z, _ = self.valid()
        if z.size == 0:
            raise ValueError("the score curve has no scored slice")
        return float(z[0]), float(z[-1])


@dataclass(frozen=True)
class AlignmentResult:
    """A z offset between two scans.

    Attributes
    ----------
    offset_mm : float
        Add to a moving-scan z to get the fixed-scan z of the same anatomy.
    method : str
        ``"three-slice"`` or ``"l1"``.
    overlap_mm : float
        z overlap of the two scans' scored extents after alignment; negative for a gap.
    cost : float
        Mean absolute score difference at the offset (score units): over the overlap for
        ℓ1, over the three samples for three-slice; NaN when extrapolated without overlap.
    extrapolated : bool
        Whether the offset came from the score slope (see the module notes).
    """

    offset_mm: float
    method: str
    overlap_mm: float
    cost: float
    extrapolated: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN cost becomes None)."""
        d = asdict(self)
        d["cost"] = self.cost if math.isfinite(self.cost) else None
        return d

    def describe(self) -> str:
        """One line for the terminal."""
        cost = f"{self.cost:.2f}" if math.isfinite(self.cost) else "n/a"
        extra = ", extrapolated from the score slope" if self.extrapolated else ""
        return (f"{self.method}: offset {self.offset_mm:+.1f} mm (moving z + offset = fixed z)"
                f", overlap {self.overlap_mm:.0f} mm, cost {cost}{extra}")


# --- slope and extrapolation ---------------------------------------------------------------


End = Literal["bottom", "top"]


def _line_slope(z: FloatVector, s: FloatVector) -> float:
    return float(np.polyfit(z, s, 1)[0])


def end_slope(curve: ScoreProfile, end: End, fallback: float | None = None) -> float | None:
    """Score slope (per mm) at one end of a curve, for extrapolating beyond it.

    The straight-line slope of the last :data:`SLOPE_WINDOW_MM` at that end: the score
    scale is not linear in mm along the body (it is steeper in the chest than in the
    abdomen), so the slope next to a gap predicts it better than the whole curve's.
    Falls back to the whole curve's slope when the end is too short or not rising, then
    to ``fallback`` (the model's mean slope); None when neither is known.
    """
    z, s = curve.valid()
    if z.size >= 3:
        near = z >= z[-1] - SLOPE_WINDOW_MM if end == "top" else z <= z[0] + SLOPE_WINDOW_MM
        for keep in (near, np.ones_like(near)):
            zk = z[keep]
            if zk.size >= 3 and zk[-1] - zk[0] >= 0.5 * SLOPE_WINDOW_MM:
                m = _line_slope(zk, s[keep])
                if m > 0:
                    return m
    return fallback if fallback is not None and fallback > 0 else None


def model_slope(regressor: BodyPartRegressor) -> float | None:
    """Mean slope per mm from the model metadata (``statistics.slope_per_mm.mean``)."""
    stats = regressor.meta.statistics.get("slope_per_mm")
    if isinstance(stats, dict) and isinstance(stats.get("mean"), int | float):
        return float(stats["mean"])
    return None


def _overlap(fixed: tuple[float, float], moving: tuple[float, float], offset: float) -> float:
    """Overlap in mm of two z extents after moving the second by ``offset``."""
    return min(fixed[1], moving[1] + offset) - max(fixed[0], moving[0] + offset)


def shared_anatomy_mm(fixed: ScoreProfile, moving: ScoreProfile,
                      spacing_mm: float = L1_SPACING_MM) -> float:
    """How many mm of one curve lie in the other's score range (the larger of the two).

    Slope-free: measured on each curve's own grid, so a steep and a flat stretch of the
    same anatomy both count at their true length. The larger count, because smoothing
    narrows a short curve's score range: of a short scan inside a long one, all of the
    short one lies in the long one's range, but less of the long one in the short one's.
    """
    _, f = resample(fixed, spacing_mm)
    _, m = resample(moving, spacing_mm)
    in_f = np.count_nonzero((f >= m.min()) & (f <= m.max()))
    in_m = np.count_nonzero((m >= f.min()) & (m <= f.max()))
    return float(max(in_f, in_m)) * spacing_mm


def _extrapolate(fixed: ScoreProfile, moving: ScoreProfile, fallback: float | None) -> float:
    """Offset that puts the facing curve ends ``Δs / m`` apart (m: mean of both end slopes).

    Raises
    ------
    ValueError
        If neither end gives a slope and no fallback is known.
    """
    zf, sf = fixed.valid()
    zm, sm = moving.valid()
    above = bool(np.median(sm) >= np.median(sf))  # moving lies towards the head
    ends: tuple[End, End] = ("top", "bottom") if above else ("bottom", "top")
    slopes = [m for m in (end_slope(fixed, ends[0], fallback), end_slope(moving, ends[1],
                                                                          fallback))
              if m is not None]
    if not slopes:
        raise ValueError("cannot extrapolate: no rising score curve and no model slope")
    slope = float(np.mean(slopes))
    if above:
        return float(zf[-1] + (sm[0] - sf[-1]) / slope - zm[0])
    return float(zf[0] - (sf[0] - sm[-1]) / slope - zm[-1])


# --- three-slice ---------------------------------------------------------------------------


def three_slice_indices(z_mm: npt.ArrayLike, occupied: npt.ArrayLike | None = None,
                        fractions: Sequence[float] = THREE_SLICE_FRACTIONS) -> IntVector:
    """Slices nearest to the given fractions of the extent of the slices with content.

    Parameters
    ----------
    z_mm : array_like, shape (n,)
        Slice positions of the moving scan.
    occupied : array_like of bool, shape (n,), optional
        Slices with image content; empty (padding) slices carry no anatomy.
    fractions : sequence of float
        Positions as fractions of the extent, feet → head.

    Returns
    -------
    ndarray of int
    """
    z = np.asarray(z_mm, dtype=np.float64)
    candidates = np.arange(z.size) if occupied is None else np.flatnonzero(occupied)
    if candidates.size == 0:
        raise ValueError("the moving scan has no slice with image content")
    zc = z[candidates]
    targets = zc[0] + np.asarray(fractions, dtype=np.float64) * (zc[-1] - zc[0])
    nearest = np.abs(zc[None, :] - targets[:, None]).argmin(axis=1)
    picked: IntVector = candidates[nearest]
    return picked


def z_at_score(curve: ScoreProfile, score: float, fallback_slope: float | None = None
               ) -> float | None:
    """Where a cleaned curve reaches ``score``.

    The median of all crossings (a curve that wobbles crosses a score more than once near
    the true position); outside the curve's range, beyond its nearer end with that end's
    slope (:func:`end_slope`), or None when no slope is known.
    """
    z, s = curve.valid()
    if z.size == 0:
        return None
    a, b = s[:-1] - score, s[1:] - score
    hits = np.flatnonzero(a * b <= 0)  # segments that reach the score
    if hits.size:
        step = a[hits] - b[hits]
        t = np.divide(a[hits], step, out=np.zeros(hits.size), where=step != 0)
        return float(np.median(z[hits] + t * (z[hits + 1] - z[hits])))
    # scores rise towards the head: a score above the curve lies beyond its top end
    end: End = "top" if score > s.max() else "bottom"
    slope = end_slope(curve, end, fallback_slope)
    if slope is None:
        return None
    at = -1 if end == "top" else 0
    return float(z[at] + (score - s[at]) / slope)


def align_three_slice(fixed: ScoreProfile, sample_z: npt.ArrayLike, sample_scores: npt.ArrayLike,
                      *, slope_per_mm: float | None = None,
                      moving_extent: tuple[float, float] | None = None) -> AlignmentResult:
    """Three-slice prealignment: look up a few moving-scan slice scores in the fixed curve.

    Parameters
    ----------
    fixed : ScoreProfile
        Cleaned scores of the fixed scan.
    sample_z, sample_scores : array_like
        Positions and (raw) scores of the sampled moving slices.
    slope_per_mm : float, optional
        Model slope, used when the fixed curve is too short to give its own.
    moving_extent : (float, float), optional
        First and last z of the moving scan, only to report the overlap (default: the
        samples' span).

    Returns
    -------
    AlignmentResult
        ``cost`` is the mean |score difference| of the samples at the offset.

    Raises
    ------
    ValueError
        If no sample can be placed (outside the fixed curve and no slope known).
    """
    zs = np.asarray(sample_z, dtype=np.float64)
    ss = np.asarray(sample_scores, dtype=np.float64)
    found = [z_at_score(fixed, float(s), slope_per_mm) for s in ss]
    diffs = [zf - zm for zf, zm in zip(found, zs, strict=True) if zf is not None]
    if not diffs:
        raise ValueError("cannot align: the sampled scores lie outside the fixed curve and "
                         "no slope is known to extrapolate")
    offset = float(np.median(diffs))
    zf, sf = fixed.valid()
    residual = np.abs(np.interp(zs + offset, zf, sf, left=np.nan, right=np.nan) - ss)
    cost = float(np.nanmean(residual)) if np.isfinite(residual).any() else math.nan
    extrapolated = not bool(np.all((ss >= sf.min()) & (ss <= sf.max())))
    span = moving_extent or (float(zs.min()), float(zs.max()))
    return AlignmentResult(offset, "three-slice", _overlap(fixed.extent(), span, offset), cost,
                           extrapolated)


# --- ℓ1 matching ---------------------------------------------------------------------------


def resample(curve: ScoreProfile, spacing_mm: float = L1_SPACING_MM) -> tuple[float, FloatVector]:
    """Scores on a uniform grid over the valid extent: (first z, values).

    Removed slices inside the extent are bridged linearly.
    """
    z, s = curve.valid()
    if z.size < 2:
        raise ValueError("a score curve needs at least two scored slices")
    grid = z[0] + spacing_mm * np.arange(int(np.floor((z[-1] - z[0]) / spacing_mm)) + 1)
    return float(z[0]), np.interp(grid, z, s)


def _l1_costs(f: FloatVector, m: FloatVector, min_count: int) -> tuple[IntVector, FloatVector]:
    """Mean |f[j + k] − m[j]| over the overlap for every grid shift k with enough overlap."""
    shifts = np.arange(-(m.size - min_count), f.size - min_count + 1)
    costs = np.empty(shifts.size)
    for i, k in enumerate(shifts.tolist()):
        j0, j1 = max(0, -k), min(m.size, f.size - k)
        costs[i] = np.abs(f[j0 + k : j1 + k] - m[j0:j1]).mean()
    return shifts, costs


def _parabola_vertex(c_left: float, c_mid: float, c_right: float) -> float:
    """Sub-step position (−0.5..0.5) of the minimum of a parabola through three costs."""
    curvature = c_left - 2.0 * c_mid + c_right
    if curvature <= 0:
        return 0.0
    return float(np.clip(0.5 * (c_left - c_right) / curvature, -0.5, 0.5))


def align_l1(fixed: ScoreProfile, moving: ScoreProfile, *, spacing_mm: float = L1_SPACING_MM,
             min_overlap_mm: float = MIN_OVERLAP_MM,
             slope_per_mm: float | None = None) -> AlignmentResult:
    """ℓ1 matching of two cleaned score curves (see the module notes).

    Parameters
    ----------
    fixed, moving : ScoreProfile
        Cleaned scores of both scans.
    spacing_mm : float
        Common grid spacing.
    min_overlap_mm : float
        Shortest accepted overlap; capped at the shorter scan's extent.
    slope_per_mm : float, optional
        Model slope, for extrapolation when the curves themselves are too short.

    Returns
    -------
    AlignmentResult
    """
    f0, f = resample(fixed, spacing_mm)
    m0, m = resample(moving, spacing_mm)
    need_mm = min(min_overlap_mm, (min(f.size, m.size) - 1) * spacing_mm)
    # half the overlap: the curves' score ranges shrink at both ends by the smoothing
    if shared_anatomy_mm(fixed, moving, spacing_mm) < 0.5 * need_mm:
        offset = _extrapolate(fixed, moving, slope_per_mm)
        overlap = _overlap(fixed.extent(), moving.extent(), offset)
        return AlignmentResult(offset, "l1", overlap, math.nan, True)
    shifts, costs = _l1_costs(f, m, round(need_mm / spacing_mm) + 1)
    best = int(np.argmin(costs))
    step = float(shifts[best])
    if 0 < best < costs.size - 1:
        step += _parabola_vertex(costs[best - 1], costs[best], costs[best + 1])
    offset = f0 - m0 + step * spacing_mm
    overlap = _overlap(fixed.extent(), moving.extent(), offset)
    return AlignmentResult(offset, "l1", overlap, float(costs[best]), False)


# --- volumes -------------------------------------------------------------------------------


def score_profile(volume: CTVolume, regressor: BodyPartRegressor) -> ScoreProfile:
    """Cleaned score curve of a whole volume (:func:`model.tools.cropping.score_and_clean`)."""
    return ScoreProfile.of(volume.z_mm, score_and_clean(volume, regressor).scores)


def has_body(volume: CTVolume) -> npt.NDArray[np.bool_]:
    """Slices showing a body, from the HU alone so the fast method scores no extra slice.

    The rule of :mod:`~model.interpretation.postprocess` (tissue area >
    :data:`MIN_BODY_AREA_MM2`) on the
    stored grid instead of the network input.
    """
    pixel_mm2 = volume.pixel_spacing_mm[0] * volume.pixel_spacing_mm[1]
    body: npt.NDArray[np.bool_] = ((volume.hu > BODY_HU).sum(axis=(1, 2)) * pixel_mm2
                                   >= MIN_BODY_AREA_MM2)
    return body


def score_slices(volume: CTVolume, regressor: BodyPartRegressor, indices: IntVector
                 ) -> FloatVector:
    """Scores of a few slices only (the point of the fast method)."""
    slices = preprocess_slices(volume.hu[indices], volume.pixel_spacing_mm)
    return regressor.to_reference_scale(regressor.raw_scores(slices))


def prealign(fixed: CTVolume, moving: CTVolume, regressor: BodyPartRegressor,
             method: Method = "l1", *, fixed_profile: ScoreProfile | None = None
             ) -> AlignmentResult:
    """z offset between two CT volumes.

    Parameters
    ----------
    fixed, moving : CTVolume
        The scans; ``offset_mm`` maps moving z to fixed z.
    regressor : BodyPartRegressor
        The scoring model.
    method : {"l1", "three-slice"}
        ``"three-slice"`` scores only three slices of the moving scan.
    fixed_profile : ScoreProfile, optional
        The fixed scan's cleaned curve when it is known already (e.g. an atlas scored
        once for many moving scans).

    Returns
    -------
    AlignmentResult
    """
    curve = fixed_profile or score_profile(fixed, regressor)
    slope = model_slope(regressor)
    if method == "three-slice":
        body = has_body(moving)
        idx = three_slice_indices(moving.z_mm, body)
        z_body = moving.z_mm[body]
        return align_three_slice(curve, moving.z_mm[idx], score_slices(moving, regressor, idx),
                                 slope_per_mm=slope,
                                 moving_extent=(float(z_body[0]), float(z_body[-1])))
    return align_l1(curve, score_profile(moving, regressor), slope_per_mm=slope)
