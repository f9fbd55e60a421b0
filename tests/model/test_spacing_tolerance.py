"""A short series is judged against what correctly spaced training windows of its extent reach."""

from __future__ import annotations

import numpy as np
import pytest

from model.evaluation.curve_statistics import extent_tolerance_statistics
from model.interpretation.postprocess import CleanedScores, clean_scores
from model.interpretation.sanity import check_slope
from model.interpretation.spacing_tolerance import ExtentTolerance

TOLERANCE = ExtentTolerance(extents_mm=(100.0, 200.0, 300.0), low=(0.4, 0.5, 0.8),
                            high=(1.8, 1.6, 1.3))
BASE = (0.73, 1.47)


def test_short_series_get_the_windows_range_and_long_ones_the_base_range() -> None:
    assert TOLERANCE.widen(BASE, 100.0) == (0.4, 1.8)
    assert TOLERANCE.widen(BASE, 150.0) == pytest.approx((0.45, 1.7))
    assert TOLERANCE.widen(BASE, 50.0) == (0.4, 1.8)  # the shortest window's below it
    # never narrower than the base range, and untouched beyond the longest window
    assert TOLERANCE.widen(BASE, 300.0) == (0.73, 1.47)
    assert TOLERANCE.widen(BASE, 450.0) == BASE
    assert TOLERANCE.widen(BASE, float("nan")) == BASE


def test_stored_tolerance_is_read_back_and_malformed_ones_are_ignored() -> None:
    stored = {"extent_mm": [200.0, 100.0], "ratio_low": [0.5, 0.4],
              "ratio_high": [1.6, 1.8], "n_windows": [10, 20]}
    assert ExtentTolerance.from_statistics(stored) == ExtentTolerance(
        (100.0, 200.0), (0.4, 0.5), (1.8, 1.6))
    for bad in (None, [], {"extent_mm": [100.0]},
                {**stored, "ratio_low": [0.5]}, {**stored, "ratio_high": [1.6, "x"]},
                {**stored, "ratio_low": [0.5, -0.4]}, {**stored, "extent_mm": []},
                {**stored, "ratio_high": [1.6, float("nan")]}):
        assert ExtentTolerance.from_statistics(bad) is None


def test_check_slope_passes_a_steep_short_series_but_still_catches_half_spacing() -> None:
    z = np.arange(0.0, 200.0, 4.0)
    steep = 40.0 + 0.1 * 1.55 * z  # 1.55× the expected slope over 196 mm
    assert check_slope(z, steep, 0.1, BASE).valid_z_spacing is False
    check = check_slope(z, steep, 0.1, BASE, tolerance=TOLERANCE)
    assert check.valid_z_spacing is True
    assert check.valid_range == pytest.approx(TOLERANCE.widen(BASE, 196.0))
    # a ×½ header doubles it beyond what any window reaches
    assert check_slope(z / 2, steep, 0.1, BASE, tolerance=TOLERANCE).valid_z_spacing is False
    # a whole volume keeps the base range
    long_z = np.arange(0.0, 500.0, 4.0)
    long_check = check_slope(long_z, 40.0 + 0.16 * long_z, 0.1, BASE, tolerance=TOLERANCE)
    assert long_check.valid_z_spacing is False and long_check.valid_range == BASE


def _curve(rates: list[float], length_mm: float = 200.0, spacing: float = 2.0
           ) -> CleanedScores:
    """Equal stretches of ``length_mm`` rising at each rate per mm in turn."""
    z = np.arange(0.0, length_mm * len(rates), spacing)
    s = 20.0 + np.cumsum([rates[min(int(v // length_mm), len(rates) - 1)] * spacing
                          for v in z])
    return clean_scores(z, s, statistics={"empty_slice_score": 999.0}, settings=None)


def test_window_quantiles_span_the_curves_local_slopes() -> None:
    curves = [_curve([0.05, 0.15]) for _ in range(3)]
    stats = extent_tolerance_statistics(curves, 0.1, extents_mm=(100.0, 1000.0))
    # 100 mm windows lie in either stretch; no curve is 1000 mm long
    assert stats["extent_mm"] == [100.0]
    assert stats["ratio_low"][0] == pytest.approx(0.5, rel=0.05)
    assert stats["ratio_high"][0] == pytest.approx(1.5, rel=0.05)
    assert stats["n_windows"][0] > 3
