"""A discontinuity withholds the term only on evidence of a stacked or corrupt series."""

from __future__ import annotations

import numpy as np

from model.interpretation.discontinuity import (
    discontinuity_anomalies,
    find_discontinuities,
    judge_breaks,
)
from model.interpretation.sanity import Severity


def _judged(z: np.ndarray, s: np.ndarray) -> list:
    noisy = s + np.random.default_rng(1).normal(0.0, 0.4, z.size)
    return judge_breaks(z, noisy, find_discontinuities(z, noisy))


def test_a_second_series_that_starts_lower_is_an_error() -> None:
    z = np.arange(120) * 2.5
    s = np.concatenate([44 + 0.12 * z[:60], 50 + 0.12 * (z[60:] - z[60])])
    (b,) = _judged(z, s)
    assert b.evidence == "backward" and (b.before, b.after) == (59, 60)
    (a,) = discontinuity_anomalies([b])
    assert a.severity is Severity.ERROR and a.details is not None
    assert a.details["evidence"] == "backward"


def test_a_skip_of_anatomy_between_ordered_parts_is_an_error() -> None:
    z = np.arange(120) * 2.5
    s = np.concatenate([10 + 0.12 * z[:60], 70 + 0.12 * (z[60:] - z[60])])
    (b,) = _judged(z, s)
    assert b.evidence == "skip"


def test_a_forward_step_inside_one_body_is_a_warning() -> None:
    # the model's step at the thoracic inlet of a 3 mm chest series: ~10 between neighbours
    z = np.arange(100) * 3.0
    s = 45 + 0.11 * z
    s[70:] += 10.0
    (b,) = _judged(z, s)
    assert b.evidence is None and "along the curve's direction" in b.reason
    assert discontinuity_anomalies([b])[0].severity is Severity.WARNING


def test_odd_end_slices_of_a_thin_series_are_a_warning() -> None:
    # 13 slices before the end of a 1.25 mm chest series: 16 mm is not a second series
    z = np.arange(300) * 1.25
    s = 44 + 0.11 * z
    s[-13:] -= 15.0
    (b,) = _judged(z, s)
    assert b.evidence is None and "too few" in b.reason


def test_a_wobbling_side_is_not_evidence() -> None:
    z = np.arange(120) * 2.5
    rng = np.random.default_rng(3)
    s = np.concatenate([44 + 0.12 * z[:60], 40 + rng.normal(0, 4.0, 60)])
    judged = _judged(z, s)
    assert judged and all(b.evidence is None for b in judged)


def test_a_drop_spread_over_two_slices_is_one_break() -> None:
    z = np.arange(100) * 2.5
    s = np.concatenate([40 + 0.12 * z[:50], 45 + 0.12 * (z[50:] - z[50])])
    s[50] = 38.0  # a slice with partial content between the two series
    s[50:] -= 20.0
    s[50] += 10.0
    (b,) = _judged(z, s)
    assert b.evidence == "backward"
