"""The part of a series the model places, when the whole curve is too flat to judge.

A curve flatter than any plausible z-spacing explains (``SlopeCheck.unplaceable``) is not
always flat everywhere: a chest-to-abdomen series whose abdomen the model cannot place, or
an upper-body PET-CT with the arms raised beside the head, rises normally over part of its
length. Withholding the whole term there throws away what the model does know.

:func:`find_placement` measures the local slope of the cleaned curve around every slice
(a line fit over :data:`LOCAL_WINDOW_MM`) against the model's expected slope at that score;
a slice is **placed** when its local ratio reaches the same floor as the whole-curve test
(half the valid range's lower end). The longest run of placed slices is used when it holds
at least :data:`MIN_PLACED_FRACTION` of the scored slices and spans the ordering and
spacing checks' minimum extent; the term then names that run only, and a warning says
which slices were left out. Otherwise the series stays ``out_of_scope`` and the record says
how much could be placed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model.interpretation.postprocess import FloatVector, fitted_slope
from model.interpretation.sanity import (
    MIN_SLOPE_EXTENT_MM,
    Anomaly,
    AnomalyCode,
    Severity,
)

#: Local slopes are line fits over this stretch of z around each slice.
LOCAL_WINDOW_MM = 60.0
#: Fewest slices for a local fit.
MIN_LOCAL_SLICES = 4
#: The placed run must hold at least this share of the scored slices to be named.
MIN_PLACED_FRACTION = 0.5

#: Expected slope per mm at each of the given scores.
ExpectedAt = Callable[[FloatVector], FloatVector]


@dataclass(frozen=True)
class Placement:
    """The longest run of placed slices of a curve.

    Attributes
    ----------
    first, last : int or None
        Volume slice indices of the run (inclusive); None when no slice is placed.
    fraction : float
        Share of the scored slices inside the run.
    extent_mm : float
        z extent of the run.
    """

    first: int | None
    last: int | None
    fraction: float
    extent_mm: float

    @property
    def usable(self) -> bool:
        """The run is long enough to name and to check (module docstring)."""
        return (self.first is not None and self.fraction >= MIN_PLACED_FRACTION
                and self.extent_mm >= MIN_SLOPE_EXTENT_MM)

    def only_placed(self, cleaned: npt.ArrayLike) -> FloatVector:
        """``cleaned`` with NaN outside the run."""
        out = np.full(np.shape(cleaned), np.nan)
        if self.first is not None and self.last is not None:
            part = slice(self.first, self.last + 1)
            out[part] = np.asarray(cleaned, dtype=np.float64)[part]
        return out


def find_placement(z_mm: npt.ArrayLike, cleaned: npt.ArrayLike, expected_at: ExpectedAt,
                   floor: float) -> Placement:
    """The longest run of slices whose local slope ratio reaches ``floor``.

    Parameters
    ----------
    z_mm, cleaned : array_like, shape (n,)
        Slice positions and cleaned scores (NaN where removed).
    expected_at : callable
        Expected slope per mm at given scores (the model's profile or its mean slope).
    floor : float
        Smallest |local slope| / expected slope of a placed slice.
    """
    z = np.asarray(z_mm, dtype=np.float64)
    s = np.asarray(cleaned, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(s))
    if idx.size == 0:
        return Placement(None, None, 0.0, 0.0)
    zk, sk = z[idx], s[idx]
    local = np.zeros(idx.size)
    for k in range(idx.size):
        near = np.abs(zk - zk[k]) <= LOCAL_WINDOW_MM / 2
        if near.sum() >= MIN_LOCAL_SLICES:
            local[k] = abs(fitted_slope(zk[near], sk[near]) or 0.0)
    placed = local / expected_at(sk) >= floor
    best = _longest_run(placed)
    if best is None:
        return Placement(None, None, 0.0, 0.0)
    a, b = best
    return Placement(int(idx[a]), int(idx[b]), (b - a + 1) / idx.size, float(zk[b] - zk[a]))


def _longest_run(mask: npt.NDArray[np.bool_]) -> tuple[int, int] | None:
    best: tuple[int, int] | None = None
    start = None
    for k, on in enumerate([*mask.tolist(), False]):
        if on and start is None:
            start = k
        elif not on and start is not None:
            if best is None or k - 1 - start > best[1] - best[0]:
                best = (start, k - 1)
            start = None
    return best


def placement_anomaly(placement: Placement, z_mm: npt.ArrayLike) -> Anomaly:
    """The warning that the term names only the placed run."""
    z = np.asarray(z_mm, dtype=np.float64)
    assert placement.first is not None and placement.last is not None
    return Anomaly(
        AnomalyCode.OUT_OF_SCOPE, Severity.WARNING,
        f"the model places only slices {placement.first}-{placement.last} "
        f"({100 * placement.fraction:.0f} % of the scored slices, "
        f"{placement.extent_mm:.0f} mm); the term and the checks use them, the other slices "
        "are not placed",
        slices=(placement.first, placement.last),
        z_mm=(float(z[placement.first]), float(z[placement.last])),
        details={"placed_fraction": placement.fraction,
                 "placed_extent_mm": placement.extent_mm})
