"""Label-free guard metrics of a model on hold-out series, and the promotion rule.

A site has no labels, so a candidate model is judged by what a good body-part score must do
on any CT, each measured per model on the same hold-out series:

* ``monotone_fraction`` — the share of series whose scores rise with z (Spearman ρ above
  :data:`MONOTONE_RHO`); higher is better;
* ``slope_spread.<region>`` — how much the score per mm varies between series in one body
  region (robust coefficient of variation, so a model is not rewarded for compressing its
  scale); lower is better;
* ``landmark_spread_mm.<landmark>`` — how far apart the scores of one image-rule landmark
  (lung top and bottom, iliac crest, femoral head, pelvis bottom;
  :func:`model.training.anchors.find_anchors`) lie between patients, in mm at the model's own
  median slope; lower is better.

:func:`compare` resamples the hold-out series (paired bootstrap, both models on the same
resample) to give every difference its standard error; :func:`decide` promotes the candidate
only if no metric is worse by more than :data:`NOISE_SE` standard errors (and by more than
the metric's :data:`MIN_EFFECT`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from model.interpretation.bodypart import PUBLISHED_REFERENCE
from model.interpretation.postprocess import fitted_slope
from model.training.anchors import ANCHOR_LANDMARKS
from model.training.dataset import TrainVolume

#: A series counts as monotone above this Spearman ρ of its scores against z.
MONOTONE_RHO = 0.98
#: Body regions of the slope spread, bounded by bpreg's published landmark scores.
SLOPE_REGIONS: dict[str, tuple[float, float]] = {
    "pelvis": (-math.inf, PUBLISHED_REFERENCE["pelvis_end"]),
    "abdomen": (PUBLISHED_REFERENCE["pelvis_end"], PUBLISHED_REFERENCE["lung_start"]),
    "chest": (PUBLISHED_REFERENCE["lung_start"], PUBLISHED_REFERENCE["lung_end"]),
    "head_neck": (PUBLISHED_REFERENCE["lung_end"], math.inf),
}
#: A series gives a region's slope with at least this many slices over this many mm there.
REGION_MIN_SLICES = 4
REGION_MIN_MM = 20.0
#: A spread needs this many distinct series (fewer: the metric is not computed). A bootstrap
#: resample repeats series; counting repeats, a resample of 3 series holding one twice has a
#: median absolute deviation of 0 for both models, so 78 % of the resamples differ by 0 and
#: any loss of the 3 series looked "worse beyond noise". Counting distinct series, such a
#: metric is undecided (:data:`MIN_DEFINED_SHARE`) until the hold-out can measure its noise.
MIN_SERIES = 3
#: Bootstrap resamples of the hold-out, and their seed (fixed: runs are reproducible).
BOOTSTRAP = 400
BOOTSTRAP_SEED = 0
#: A candidate is worse on a metric when it loses by more than this many standard errors
#: of the paired difference (one-sided, about 2.5 % false alarms per metric).
NOISE_SE = 1.96
#: Smallest loss that counts, per metric family: two nearly identical models differ by tiny
#: but systematic amounts whose paired standard error is tinier still, and a loss of 0.01 in
#: a coefficient of variation or of 1 mm in a landmark's spread matters to no one.
MIN_EFFECT: dict[str, float] = {"monotone_fraction": 0.0, "slope_spread": 0.01,
                                "landmark_spread_mm": 1.0}
#: Metrics whose resamples are defined less often than this are left undecided.
MIN_DEFINED_SHARE = 0.5


@dataclass(frozen=True)
class SeriesMeasure:
    """What one model says about one hold-out series."""

    rho: float | None
    slope_per_mm: float | None
    region_slopes: Mapping[str, float]
    landmark_scores: Mapping[str, float]


@dataclass(frozen=True)
class MetricDelta:
    """One guard metric for the active model and the candidate.

    ``se`` is the bootstrap standard error of ``candidate − active``; ``worse`` says whether
    the candidate loses by more than :data:`NOISE_SE` of it (None: undecided).
    """

    name: str
    higher_is_better: bool
    active: float | None
    candidate: float | None
    se: float | None
    worse: bool | None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (no NaN)."""
        return {"active": _finite(self.active), "candidate": _finite(self.candidate),
                "se": _finite(self.se), "higher_is_better": self.higher_is_better,
                "worse": self.worse}


def _finite(v: float | None) -> float | None:
    return round(v, 6) if v is not None and math.isfinite(v) else None


def measure_series(volume: TrainVolume, scores: npt.ArrayLike) -> SeriesMeasure:
    """Monotonicity, slopes and landmark scores of one series scored by one model."""
    s = np.asarray(scores, dtype=np.float64)
    z = np.asarray(volume.z_mm, dtype=np.float64)
    rho = None
    if s.size >= 3 and np.ptp(s) > 0:
        value = float(stats.spearmanr(z, s).statistic)
        rho = value if math.isfinite(value) else None
    regions = {}
    for name, (lo, hi) in SLOPE_REGIONS.items():
        inside = (s >= lo) & (s < hi)
        if inside.sum() >= REGION_MIN_SLICES and np.ptp(z[inside]) >= REGION_MIN_MM:
            slope = fitted_slope(z[inside], s[inside])
            if slope is not None and slope > 0:
                regions[name] = slope
    anchors = volume.anchors
    landmarks = {n: float(s[i]) for n, i in zip(anchors.names, anchors.slice_index, strict=True)
                 if n in ANCHOR_LANDMARKS}
    return SeriesMeasure(rho, fitted_slope(z, s), regions, landmarks)


def guard_metrics(measures: Sequence[SeriesMeasure]) -> dict[str, float]:
    """The guard metrics of one model over some series (a spread without
    :data:`MIN_SERIES` distinct series is absent)."""
    out: dict[str, float] = {}
    rhos = [m.rho for m in measures if m.rho is not None]
    if rhos:
        out["monotone_fraction"] = float(np.mean([r > MONOTONE_RHO for r in rhos]))
    for region in SLOPE_REGIONS:
        having = [m for m in measures if region in m.region_slopes]
        slopes = np.array([m.region_slopes[region] for m in having])
        if _distinct(having) >= MIN_SERIES:
            median = float(np.median(slopes))
            out[f"slope_spread.{region}"] = float(stats.median_abs_deviation(
                slopes, scale="normal")) / median
    overall = [m.slope_per_mm for m in measures if m.slope_per_mm is not None
               and m.slope_per_mm > 0]
    per_mm = float(np.median(overall)) if overall else math.nan
    for name in ANCHOR_LANDMARKS:
        having = [m for m in measures if name in m.landmark_scores]
        values = np.array([m.landmark_scores[name] for m in having])
        if _distinct(having) >= MIN_SERIES and per_mm > 0:
            out[f"landmark_spread_mm.{name}"] = float(np.std(values, ddof=1)) / per_mm
    return out


def _distinct(measures: Sequence[SeriesMeasure]) -> int:
    # a resample repeats the very same measure objects (see compare)
    return len({id(m) for m in measures})


def higher_is_better(metric: str) -> bool:
    """Direction of a guard metric (only the monotone fraction should rise)."""
    return metric == "monotone_fraction"


def compare(active: Sequence[SeriesMeasure], candidate: Sequence[SeriesMeasure]
            ) -> list[MetricDelta]:
    """Every guard metric of both models on the same series, with paired bootstrap errors.

    ``active[i]`` and ``candidate[i]`` must measure the same series.
    """
    if len(active) != len(candidate):
        raise ValueError("both models must be measured on the same series")
    base, cand = guard_metrics(active), guard_metrics(candidate)
    names = sorted(set(base) | set(cand))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    deltas: dict[str, list[float]] = {n: [] for n in names}
    n = len(active)
    for _ in range(BOOTSTRAP if n else 0):
        pick = rng.integers(0, n, n)
        a = guard_metrics([active[i] for i in pick])
        c = guard_metrics([candidate[i] for i in pick])
        for name in names:
            if name in a and name in c:
                deltas[name].append(c[name] - a[name])
    out = []
    for name in names:
        defined = len(deltas[name]) >= MIN_DEFINED_SHARE * BOOTSTRAP
        se = float(np.std(deltas[name], ddof=1)) if defined else None
        worse = _is_worse(name, base.get(name), cand.get(name), se)
        out.append(MetricDelta(name, higher_is_better(name), base.get(name), cand.get(name),
                               se, worse))
    return out


def _is_worse(name: str, active: float | None, candidate: float | None,
              se: float | None) -> bool | None:
    if active is not None and candidate is None:
        return True  # the candidate no longer gives the series what the metric needs
    if active is None or candidate is None or se is None:
        return None
    loss = (active - candidate) if higher_is_better(name) else (candidate - active)
    return loss > NOISE_SE * se and loss > max(MIN_EFFECT[name.split(".")[0]], 1e-12)


@dataclass(frozen=True)
class Decision:
    """Whether the candidate replaces the active model, and why."""

    promoted: bool
    reason: str


def decide(deltas: Sequence[MetricDelta], extra_losses: Sequence[str] = ()) -> Decision:
    """Promote only if no guard metric is worse beyond its noise and no ``extra_losses``
    (e.g. a significantly worse validation LMSE) were found; some metric must be decided."""
    worse = [d.name for d in deltas if d.worse] + list(extra_losses)
    if worse:
        return Decision(False, "worse beyond noise: " + ", ".join(worse))
    decided = [d for d in deltas if d.worse is not None]
    if not decided:
        return Decision(False, "no guard metric could be measured on the hold-out")
    better = [d.name for d in decided if _gain(d) > 0]
    return Decision(True, f"no guard metric worse beyond noise ({len(decided)} measured"
                          + (f"; better: {', '.join(better)})" if better else ")"))


def _gain(d: MetricDelta) -> float:
    assert d.active is not None and d.candidate is not None
    return (d.candidate - d.active) * (1 if d.higher_is_better else -1)


#: Scores a hold-out volume with one model (calibrated scale).
Scorer = Callable[[TrainVolume], npt.NDArray[np.float64]]


def measure_all(volumes: Sequence[TrainVolume], scorer: Scorer) -> list[SeriesMeasure]:
    """:func:`measure_series` of every volume under one model."""
    return [measure_series(v, scorer(v)) for v in volumes]
