"""Known region cropping (thesis §4.3.2): keep only the slices an algorithm knows.

An image algorithm trained on, say, abdomen CT has a *known region*: the scores
``[s_min, s_max]`` of the anatomy it saw in training. Slices of a new volume whose cleaned
score lies outside that range show anatomy the algorithm never saw; cropping them away
before the algorithm runs saves time, and zeroing its output there afterwards removes
false positives (thesis table 5.17: of 177 volumes with false-positive segmentations by
eight nnU-Nets, 164 were caught this way, 86 % on average per model).

The known range comes from

* explicit scores (:func:`known_range_from_scores`),
* two landmark names, looked up in the model's reference table and, for names it lacks,
  bpreg's published table (:func:`known_range_from_landmarks`, via
  :func:`model.interpretation.bodypart.landmark_table`), or
* the algorithm's training volumes, data-driven (:func:`known_range_from_training`): the
  ``q_min`` quantile of the per-volume minimum cleaned scores and the ``q_max`` quantile
  of the per-volume maximum cleaned scores (thesis defaults 25 % and 75 %).

:func:`crop_range` turns a score curve into the kept slice run;
:mod:`model.tools.crop_outputs` writes what a crop produces (cropped NIfTI, SOP Instance
UIDs, filtered mask) and :mod:`model.cli.crop` is the ``bpr crop`` command.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model.interpretation.analysis import score_with_content
from model.interpretation.bodypart import landmark_score, landmark_table
from model.interpretation.postprocess import (
    SMOOTHING_SIGMA_MM,
    CleanedScores,
    clean_scores,
    gaussian_smooth,
)
from model.reading.volume import CTInputError, CTVolume
from model.scoring.inference import BodyPartRegressor, ModelMeta

FloatVector = npt.NDArray[np.float64]
BoolVector = npt.NDArray[np.bool_]

#: Quantiles of the per-volume minimum and maximum scores (thesis §5.2.2: 25 % / 75 %).
DEFAULT_QUANTILES = (0.25, 0.75)


# --- known range ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownRange:
    """The score range an algorithm knows.

    Attributes
    ----------
    s_min, s_max : float
        Lowest and highest known score, ``s_min <= s_max``.
    source : str
        How the range was found, for reports.
    """

    s_min: float
    s_max: float
    source: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.s_min) and math.isfinite(self.s_max)):
            raise ValueError(f"known range must be finite, got [{self.s_min}, {self.s_max}]")
        if self.s_min > self.s_max:
            raise ValueError(f"known range is reversed: [{self.s_min}, {self.s_max}]")

    def widened(self, margin: float) -> KnownRange:
        """The range grown by ``margin`` score units at both ends."""
        if margin == 0:
            return self
        return KnownRange(self.s_min - margin, self.s_max + margin,
                          f"{self.source} ± {margin:g}")


def known_range_from_scores(a: float, b: float) -> KnownRange:
    """Known range from two explicit scores (either order)."""
    lo, hi = sorted((float(a), float(b)))
    return KnownRange(lo, hi, f"scores {lo:g}..{hi:g}")


def known_range_from_landmarks(start: str, end: str, meta: ModelMeta | None = None
                               ) -> KnownRange:
    """Known range between the expected scores of two landmarks (either order).

    The thesis' manual approach: e.g. a kidney algorithm knows ``femur_end`` .. ``Th12``.
    Scores come from :func:`~model.interpretation.bodypart.landmark_table`: the model's
    reference table
    (our names, e.g. ``lung_bottom``) over bpreg's published table (e.g. ``lung_start``)
    with interpolated vertebral levels.

    Raises
    ------
    KeyError
        If a name is in neither table; the message lists the known names.
    """
    table = landmark_table(meta.reference_table if meta is not None else None)
    a, b = landmark_score(table, start, math.nan), landmark_score(table, end, math.nan)
    lo, hi = sorted((a, b))
    return KnownRange(lo, hi, f"landmarks {start} ({a:.1f}) .. {end} ({b:.1f})")


def known_range_from_training(curves: Iterable[npt.ArrayLike],
                              quantiles: tuple[float, float] = DEFAULT_QUANTILES
                              ) -> KnownRange:
    """Data-driven known range from the cleaned score curves of an algorithm's training set.

    Parameters
    ----------
    curves : iterable of array_like
        Cleaned slice scores of each training volume; NaN marks removed slices.
    quantiles : (float, float)
        ``(q_min, q_max)`` in [0, 1]: ``s_min`` is the ``q_min`` quantile of the
        per-volume minima, ``s_max`` the ``q_max`` quantile of the per-volume maxima.

    Returns
    -------
    KnownRange

    Raises
    ------
    ValueError
        If no curve has a finite score or the quantiles are outside [0, 1].
    """
    q_min, q_max = quantiles
    if not (0.0 <= q_min <= 1.0 and 0.0 <= q_max <= 1.0):
        raise ValueError(f"quantiles must lie in [0, 1], got {quantiles}")
    mins, maxs = [], []
    for curve in curves:
        s = np.asarray(curve, dtype=np.float64)
        s = s[np.isfinite(s)]
        if s.size:
            mins.append(float(s.min()))
            maxs.append(float(s.max()))
    if not mins:
        raise ValueError("no training volume has a finite score")
    s_min = float(np.quantile(mins, q_min))
    s_max = float(np.quantile(maxs, q_max))
    if s_min > s_max:
        raise ValueError(f"quantiles {quantiles} give an empty range [{s_min:.2f}, {s_max:.2f}]")
    return KnownRange(s_min, s_max,
                      f"training data, {len(mins)} volumes, quantiles {q_min:g}/{q_max:g}")


# --- score curves --------------------------------------------------------------------------


def as_score_array(scores: Sequence[float | None] | npt.ArrayLike) -> FloatVector:
    """Scores as float64 with NaN for removed slices (``None`` in JSON documents)."""
    if isinstance(scores, Sequence) and not isinstance(scores, str):
        return np.array([np.nan if s is None else float(s) for s in scores], dtype=np.float64)
    return np.asarray(scores, dtype=np.float64)


def score_and_clean(volume: CTVolume, regressor: BodyPartRegressor) -> CleanedScores:
    """Score every slice and clean the curve as :func:`model.interpretation.analysis.analyze` does.

    Only the scores are needed here, so tag, regions and sanity checks are skipped.
    """
    scored, body_pixels = score_with_content(volume, regressor)
    return clean_scores(volume.z_mm, scored.scores, body_pixels=body_pixels,
                        statistics=regressor.meta.statistics)


# --- crop range ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CropRange:
    """The run of slices inside a known range.

    Attributes
    ----------
    start, stop : int
        Kept slices ``start <= k < stop`` (feet → head order of :class:`CTVolume`);
        ``start == stop`` when nothing is inside.
    n_slices : int
        Slices of the whole volume.
    z_min_mm, z_max_mm : float or None
        Centres of the first and last kept slice.
    lower_mm, upper_mm : float or None
        Slab bounds: halfway to the first removed neighbour, or half a spacing beyond
        the volume end; what a mask on another z grid is cut at.
    s_min, s_max : float
        The known range that was applied.
    """

    start: int
    stop: int
    n_slices: int
    z_min_mm: float | None
    z_max_mm: float | None
    lower_mm: float | None
    upper_mm: float | None
    s_min: float
    s_max: float

    @property
    def n_kept(self) -> int:
        return self.stop - self.start

    @property
    def is_empty(self) -> bool:
        return self.stop <= self.start

    def mask(self) -> BoolVector:
        """Per-slice bool: True for kept slices."""
        keep = np.zeros(self.n_slices, dtype=bool)
        keep[self.start : self.stop] = True
        return keep

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus ``n_kept``."""
        return {**asdict(self), "n_kept": self.n_kept}

    def describe(self) -> str:
        """One line for the terminal."""
        if self.is_empty:
            return (f"no slice lies in the known range [{self.s_min:.1f}, {self.s_max:.1f}]"
                    f" ({self.n_slices} slices)")
        return (f"slices {self.start}..{self.stop - 1} ({self.n_kept} of {self.n_slices}), "
                f"z {self.z_min_mm:.1f}..{self.z_max_mm:.1f} mm, "
                f"scores [{self.s_min:.1f}, {self.s_max:.1f}]")


def _fill_interior(z: FloatVector, s: FloatVector) -> FloatVector:
    """Interpolate NaN slices between valid ones; NaN before the first/after the last stay."""
    valid = np.flatnonzero(np.isfinite(s))
    out = s.copy()
    if valid.size == 0:
        return out
    inner = np.arange(valid[0], valid[-1] + 1)
    out[inner] = np.interp(z[inner], z[valid], s[valid])
    return out


def _longest_run(inside: BoolVector, z: FloatVector) -> tuple[int, int]:
    """``(start, stop)`` of the run of True with the largest z extent; (0, 0) if none."""
    edges = np.diff(np.concatenate([[0], inside.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if starts.size == 0:
        return 0, 0
    # extent by position, not slice count, so a thin-slice stretch does not outweigh it
    extent = z[stops - 1] - z[starts]
    best = int(np.argmax(extent + 1e-6 * (stops - starts)))
    return int(starts[best]), int(stops[best])


def _slab_bounds(z: FloatVector, start: int, stop: int) -> tuple[float, float]:
    half = 0.5 * float(np.median(np.diff(z))) if z.size > 1 else 0.5
    lower = 0.5 * (z[start - 1] + z[start]) if start > 0 else z[0] - half
    upper = 0.5 * (z[stop - 1] + z[stop]) if stop < z.size else z[-1] + half
    return float(lower), float(upper)


def crop_range(scores: Sequence[float | None] | npt.ArrayLike, z_mm: npt.ArrayLike,
               s_min: float, s_max: float, *, sigma_mm: float = SMOOTHING_SIGMA_MM
               ) -> CropRange:
    """Slice run of a volume whose smoothed score lies in ``[s_min, s_max]``.

    Parameters
    ----------
    scores : array_like or sequence of float or None, shape (n,)
        Slice scores (raw or cleaned); NaN or None for removed slices. Removed slices
        between valid ones take the interpolated score, so a gap does not split the run;
        removed slices at either end (padding, cut tails) are never kept.
    z_mm : array_like, shape (n,)
        Slice positions, increasing.
    s_min, s_max : float
        Known range.
    sigma_mm : float
        σ of the Gaussian smoothing in mm
        (:func:`~model.interpretation.postprocess.gaussian_smooth`),
        so single-slice noise cannot cut the run; 0 for scores that are cleaned already.

    Returns
    -------
    CropRange
        The longest (in mm) contiguous run of slices inside the range: a noisy curve may
        touch the range at a few scattered slices far from the anatomy, which must not
        be kept; non-monotonic dips inside the run are bridged by the smoothing.
    """
    s = as_score_array(scores)
    z = np.asarray(z_mm, dtype=np.float64)
    if s.shape != z.shape:
        raise ValueError(f"{s.size} scores for {z.size} slice positions")
    lo, hi = sorted((float(s_min), float(s_max)))
    curve = _fill_interior(z, gaussian_smooth(z, s, sigma_mm))
    with np.errstate(invalid="ignore"):
        inside = (curve >= lo) & (curve <= hi)
    start, stop = _longest_run(inside, z)
    if stop <= start:
        return CropRange(0, 0, z.size, None, None, None, None, lo, hi)
    lower, upper = _slab_bounds(z, start, stop)
    return CropRange(start, stop, z.size, float(z[start]), float(z[stop - 1]), lower, upper,
                     lo, hi)


# --- training data -------------------------------------------------------------------------


def training_volume_paths(source: Path) -> list[Path]:
    """Inputs of an algorithm's training set: a CSV list (column ``file``) or a folder.

    A CSV is read like ``manifest.csv`` (paths relative to its folder, every row counts,
    whatever its ``split``); a folder or file is one input for
    :func:`~model.reading.load.load_volumes`.
    """
    from model.training.dataset import read_list

    if source.suffix.lower() == ".csv":
        return [entry.path for entry in read_list(source)]
    return [source]


def training_curves(source: Path, regressor: BodyPartRegressor) -> tuple[list[FloatVector],
                                                                        list[str]]:
    """Cleaned score curves of every series under a training-set source.

    Returns
    -------
    curves : list of ndarray
        One cleaned curve per readable series.
    errors : list of str
        One message per unreadable file or series; they never stop the others.
    """
    from model.reading.load import load_volumes

    curves: list[FloatVector] = []
    errors: list[str] = []
    for path in training_volume_paths(source):
        try:
            loaded = load_volumes(path)
        except CTInputError as exc:
            errors.append(str(exc))
            continue
        errors += loaded.errors
        for volume in loaded.volumes:
            curves.append(score_and_clean(volume, regressor).scores)
    return curves, errors
