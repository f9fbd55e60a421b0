"""Δh is sampled in mm and converted to a slice step (thesis eq. 4.1)."""

from __future__ import annotations

import numpy as np
import pytest

from model.training.sampling import sample_equidistant


@pytest.mark.parametrize("spacing", [1.0, 2.5, 5.0])
def test_delta_h_distribution_is_in_mm_whatever_the_spacing(spacing: float) -> None:
    rng = np.random.default_rng(0)
    samples = [sample_equidistant(rng, 2000, spacing, 4, (5.0, 100.0)) for _ in range(2000)]
    dh = np.array([s.delta_h_mm for s in samples])
    # k = round(Δh / z): the realised distance is within half a slice of the draw range.
    assert dh.min() >= max(5.0 - spacing / 2, spacing) - 1e-9
    assert dh.max() <= 100.0 + spacing / 2 + 1e-9
    assert np.mean(dh) == pytest.approx(52.5, abs=2.5)


def test_indices_are_equidistant_and_inside_the_volume() -> None:
    rng = np.random.default_rng(1)
    for _ in range(500):
        s = sample_equidistant(rng, 30, 5.0, 8, (5.0, 100.0))
        steps = np.diff(s.indices)
        assert len(s.indices) == 8
        assert np.all(steps == steps[0]) and steps[0] >= 1
        assert s.indices[0] >= 0 and s.indices[-1] < 30
        assert s.delta_h_mm == pytest.approx(steps[0] * 5.0)


def test_step_shrinks_to_fit_short_volumes() -> None:
    s = sample_equidistant(np.random.default_rng(2), 8, 1.0, 8, (90.0, 100.0))
    assert list(s.indices) == list(range(8))


def test_too_few_slices_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least m=4"):
        sample_equidistant(np.random.default_rng(0), 3, 1.0, 4, (5.0, 100.0))
