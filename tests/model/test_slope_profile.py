"""The expected slope follows the model's slope per body region (score bins)."""

from __future__ import annotations

import numpy as np
import pytest

from model.evaluation.curve_statistics import calibrate_slope_ratio_range, slope_profile
from model.interpretation.postprocess import CleanedScores, clean_scores
from model.interpretation.sanity import SlopeProfile


def _curve(slopes: dict[tuple[float, float], float], spacing: float = 2.5) -> CleanedScores:
    """A curve rising at ``slopes[(lo, hi)]`` per mm while its score is in [lo, hi)."""
    z, s = [0.0], [20.0]
    while s[-1] < 100.0:
        rate = next(m for (lo, hi), m in slopes.items() if lo <= s[-1] < hi)
        z.append(z[-1] + spacing)
        s.append(s[-1] + rate * spacing)
    return clean_scores(np.array(z), np.array(s), statistics={"empty_slice_score": 999.0},
                        settings=None)


BENT = {(0.0, 60.0): 0.12, (60.0, 70.0): 0.06, (70.0, 200.0): 0.12}


def test_profile_finds_the_flat_region_of_the_training_curves() -> None:
    profile = slope_profile([_curve(BENT) for _ in range(4)])
    by_bin = dict(zip(profile["score"], profile["slope_per_mm"], strict=True))
    assert by_bin[65.0] == pytest.approx(0.06, rel=0.1)
    assert by_bin[45.0] == pytest.approx(0.12, rel=0.05)
    assert set(profile["n_curves"]) == {4}


def test_profile_needs_enough_curves_per_bin() -> None:
    assert slope_profile([_curve(BENT)])["score"] == []
    # two: only two real training curves show the pelvis (PROFILE_MIN_CURVES)
    assert slope_profile([_curve(BENT) for _ in range(2)])["score"] != []


def test_a_series_of_the_flat_region_is_judged_against_its_slope() -> None:
    profile = SlopeProfile.from_statistics(slope_profile([_curve(BENT) for _ in range(4)]))
    assert profile is not None
    flat = profile.expected_slope(np.linspace(61.0, 69.0, 30))
    steep = profile.expected_slope(np.linspace(41.0, 55.0, 30))
    assert flat is not None and steep is not None
    assert flat < 0.75 * steep
    assert profile.expected_slope(np.full(3, np.nan)) is None


def test_malformed_profiles_are_ignored() -> None:
    assert SlopeProfile.from_statistics(None) is None
    assert SlopeProfile.from_statistics({"score": [1.0], "slope_per_mm": [-0.1]}) is None
    assert SlopeProfile.from_statistics({"score": [1.0, 2.0], "slope_per_mm": [0.1]}) is None


def test_ratio_range_against_the_profile_centres_on_one() -> None:
    curves = [_curve(BENT) for _ in range(4)]
    profile = SlopeProfile.from_statistics(slope_profile(curves))
    assert profile is not None
    lo, hi = calibrate_slope_ratio_range(curves, profile)
    assert lo < 1.0 < hi
    assert hi / lo == pytest.approx(2.0)
