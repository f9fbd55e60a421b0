"""How far the slope ratio of a short, correctly spaced series strays: the z-spacing
check's tolerance by scored extent.

The model's valid ratio range (``statistics["slope_ratio_range"]``) lies halfway in log
space between a right and a ×2 / ×½ header spacing, for the spread of whole training
curves. Over a shorter stretch the model's local slope varies more than over a whole
curve (the lowest lung scores flat, the chest above it steeply): on the training curves of
``ssbr-f1975c0bcd69``, for which this was built, 100 mm windows of correctly spaced curves
reach ratios of 0.42-1.62 (1-99 %), whole curves 0.50-1.42 (the shipped model's figures are
in its model card). A ratio that correctly spaced training windows of the same extent reach
is no evidence of a wrong header, and an ``error`` withholds the term, so the range is widened
to those windows' :data:`TOLERANCE_QUANTILES` where they lie outside it. Longer series keep
the halfway range, so ×2 and ×½ headers of whole volumes are caught as before.

The windows are measured by
:func:`model.evaluation.curve_statistics.extent_tolerance_statistics` and stored as
``statistics["slope_ratio_by_extent"]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Window extents (mm of cleaned slices) at which the tolerance is measured; beyond the
#: longest, the whole-curve range holds.
WINDOW_EXTENTS_MM: tuple[float, ...] = (80.0, 100.0, 150.0, 200.0, 300.0)
#: |ratio| quantiles of correctly spaced windows that a series of the same extent may
#: reach without an error: one window in 200 on either side.
TOLERANCE_QUANTILES = (0.005, 0.995)


@dataclass(frozen=True)
class ExtentTolerance:
    """|slope ratio| quantiles of correctly spaced training windows, per window extent.

    Attributes
    ----------
    extents_mm : tuple of float
        Window extents, increasing.
    low, high : tuple of float
        The :data:`TOLERANCE_QUANTILES` of |ratio| at each extent.
    """

    extents_mm: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def from_statistics(cls, stored: object) -> ExtentTolerance | None:
        """The tolerance of ``statistics["slope_ratio_by_extent"]``; None when absent or
        malformed (the check then uses the whole-curve range alone)."""
        if not isinstance(stored, Mapping):
            return None
        extents, low, high = (stored.get(k) for k in ("extent_mm", "ratio_low", "ratio_high"))
        if not (isinstance(extents, Sequence) and isinstance(low, Sequence)
                and isinstance(high, Sequence) and len(extents) == len(low) == len(high) > 0):
            return None
        try:
            values = sorted((float(e), float(a), float(b))
                            for e, a, b in zip(extents, low, high, strict=True))
        except (TypeError, ValueError):
            return None
        if not all(math.isfinite(v) and v > 0 for row in values for v in row):
            return None
        return cls(tuple(r[0] for r in values), tuple(r[1] for r in values),
                   tuple(r[2] for r in values))

    def widen(self, valid_range: tuple[float, float], extent_mm: float
              ) -> tuple[float, float]:
        """``valid_range`` widened to what correctly spaced windows of ``extent_mm`` reach.

        Interpolated between the measured extents (the shortest one's below it); a series
        longer than the longest window keeps ``valid_range``.
        """
        if not extent_mm <= self.extents_mm[-1]:
            return valid_range
        low = float(np.interp(extent_mm, self.extents_mm, self.low))
        high = float(np.interp(extent_mm, self.extents_mm, self.high))
        return min(valid_range[0], low), max(valid_range[1], high)
