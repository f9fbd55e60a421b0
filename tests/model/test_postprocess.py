"""Cleaned slice scores: empty slices, smoothing over real z, tail removal (thesis §4.3)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from model.interpretation.postprocess import (
    DEFAULT_TANGENTIAL_SLOPE,
    PostprocessSettings,
    ScoreCurve,
    SlopeBounds,
    body_pixel_counts,
    clean_scores,
    gaussian_smooth,
    min_body_pixels,
    slope_bounds,
    tail_mask,
    tangential_slope_quantiles,
    tangential_slopes,
)
from model.scoring import preprocess

BOUNDS = SlopeBounds(-0.05, 0.25, "test")
STATS = {"empty_slice_score": 61.8784, "tangential_slope": {"q005": -0.05, "q995": 0.25}}


# --- smoothing ----------------------------------------------------------------------------


def test_smoothing_weights_come_from_real_distances() -> None:
    z = np.array([0.0, 10.0, 30.0])
    s = np.array([0.0, 10.0, 40.0])
    out = gaussian_smooth(z, s, sigma_mm=10.0)
    # by hand: w = exp(-d²/2σ²) for d = 0, 10, 30 mm (first slice) ...
    w0 = np.array([1.0, math.exp(-0.5), math.exp(-4.5)])
    assert out[0] == pytest.approx(w0 @ s / w0.sum())
    # ... and d = 10, 0, 20 mm for the middle slice
    w1 = np.array([math.exp(-0.5), 1.0, math.exp(-2.0)])
    assert out[1] == pytest.approx(w1 @ s / w1.sum())
    # an index-based kernel (σ = 1 slice) would weigh the 20 mm gap like the 10 mm one
    assert out[1] != pytest.approx((math.exp(-0.5) * 0 + 10 + math.exp(-0.5) * 40)
                                   / (1 + 2 * math.exp(-0.5)))


def test_smoothing_skips_removed_slices_and_keeps_them_nan() -> None:
    z = np.array([0.0, 5.0, 10.0, 15.0])
    s = np.array([1.0, np.nan, 3.0, 5.0])
    out = gaussian_smooth(z, s, sigma_mm=5.0)
    assert np.isnan(out[1])
    w = np.array([1.0, math.exp(-2.0), math.exp(-4.5)])
    assert out[0] == pytest.approx(w @ np.array([1.0, 3.0, 5.0]) / w.sum())


def test_smoothing_preserves_a_line_inside_and_cuts_at_four_sigma() -> None:
    z = np.concatenate([np.arange(0.0, 200.0, 2.5), [1000.0]])
    s = 0.1 * z
    s[-1] = 7.0
    out = gaussian_smooth(z, s, sigma_mm=10.0)
    inner = (z > 40) & (z < 160)
    np.testing.assert_allclose(out[inner], s[inner], atol=1e-9)
    assert out[-1] == 7.0  # 800 mm away: nothing else inside 4σ


def test_zero_sigma_is_identity() -> None:
    s = np.array([1.0, 5.0, np.nan])
    np.testing.assert_array_equal(gaussian_smooth([0, 1, 2], s, 0.0), s)


# --- empty slices -------------------------------------------------------------------------


def test_body_pixels_are_counted_on_the_network_input() -> None:
    hu = np.full((2, 128, 128), -1024.0, dtype=np.float32)
    hu[1, 40:60, 40:60] = 40.0  # 400 tissue pixels
    slices = preprocess.preprocess_slices(hu, (preprocess.PIXEL_SPACING_MM,) * 2)
    np.testing.assert_array_equal(body_pixel_counts(slices), [0, 400])
    assert min_body_pixels(1000.0, 3.5) == 82


def test_empty_slices_by_content_and_by_empty_score() -> None:
    z = np.arange(6) * 5.0
    s = np.array([61.8784, 10.0, 61.8790, 12.0, 61.8784 + 0.01, 14.0])
    body = np.array([500, 0, 500, 500, 500, 500])
    c = clean_scores(z, s, body_pixels=body, statistics=STATS)
    np.testing.assert_array_equal(c.empty, [True, True, True, False, False, False])
    assert np.isnan(c.scores[:3]).all() and np.isfinite(c.scores[3:]).all()
    np.testing.assert_array_equal(c.unprocessed, s)


def test_missing_empty_score_falls_back_to_content_with_a_warning() -> None:
    c = clean_scores([0.0, 5.0], [61.8784, 62.0], body_pixels=[500, 500], statistics={})
    assert c.kept.all()
    assert any("empty_slice_score" in w for w in c.warnings)


# --- tails --------------------------------------------------------------------------------


def _curve_with_tails() -> tuple[np.ndarray, np.ndarray]:
    z = np.arange(0.0, 1000.0, 5.0)
    s = -20.0 + 0.12 * z  # -20 … 99.4
    s[z < 40] = -5.0 - 0.5 * (40 - z[z < 40])  # falls steeply towards the feet: 1 per mm
    s[z >= 900] = 100.0 + 0.5 * (z[z >= 900] - 900)  # jumps up at the top: 0.5 per mm
    return z, s


def test_tails_with_atypical_slopes_are_removed() -> None:
    z, s = _curve_with_tails()
    mask = tail_mask(z, s, BOUNDS)
    low = np.flatnonzero(mask & (z < 500))
    high = np.flatnonzero(mask & (z >= 500))
    # the last atypical low slope starts at z = 35 (slope 0.5→0.12 crossing at 40)
    assert z[low].max() == 35.0 and low.size == 8
    # the jump 895 → 900 mm ends at exactly 100, not above; 900 → 905 mm is the first
    # atypical slope ending above 100, so the tail starts at 905 mm
    assert z[high].min() == 905.0 and mask[z >= 905].all()


def _head_curve() -> tuple[np.ndarray, np.ndarray]:
    """A brain rising to 99.6 at 95 mm, then a skull cap falling 0.3 per mm to 130 mm."""
    z = np.arange(0.0, 135.0, 5.0)
    s = 86.3 + 0.14 * z
    s[z >= 100] = 99.6 - 0.3 * (z[z >= 100] - 95)
    return z, s


def test_a_skull_cap_falling_from_below_100_is_a_tail() -> None:
    # bpreg's bound (100, its eyes end) sits at our vertex: the tilted GE head series peaked
    # at 99.6 under one trained model and kept its fall, which flattened its slope
    z, s = _head_curve()
    mask = tail_mask(z, s, BOUNDS)
    assert mask[z >= 100].all() and not mask[z < 100].any()


def test_a_spike_or_a_small_dip_after_the_peak_is_no_skull_cap() -> None:
    z, s = _head_curve()
    rises_again = s.copy()
    rises_again[-2:] = 96.0  # the fall turns back up: a spike at the peak, not a skull cap
    assert not tail_mask(z, rises_again, BOUNDS)[z < 125].any()
    z2 = np.arange(0.0, 100.0, 5.0)
    dip = 86.3 + 0.14 * z2
    dip[-3:] = dip[-4] - np.array([1.0, 2.0, 3.0])  # falls 3 units at the end: kept
    assert not tail_mask(z2, dip, BOUNDS).any()


def test_typical_tails_stay() -> None:
    z = np.arange(0.0, 1200.0, 5.0)
    s = -20.0 + 0.12 * z  # -20 … 123, slope 0.12 everywhere
    assert not tail_mask(z, s, BOUNDS).any()


def test_tail_removal_follows_a_reversed_curve() -> None:
    z, s = _curve_with_tails()
    forward = tail_mask(z, s, BOUNDS)
    backward = tail_mask(z, s[::-1], BOUNDS)
    np.testing.assert_array_equal(backward, forward[::-1])


def test_slope_bounds_model_settings_default() -> None:
    # a negative lower quantile is clamped at 0: a falling tail is never kept as valid
    assert slope_bounds(STATS, PostprocessSettings())[0] == SlopeBounds(0.0, 0.25, "model")
    positive = {"tangential_slope": {"q005": 0.01, "q995": 0.25}}
    assert slope_bounds(positive, PostprocessSettings())[0] == SlopeBounds(0.01, 0.25, "model")
    own = PostprocessSettings(tangential_slope=(-0.1, 0.3))
    assert slope_bounds(STATS, own)[0].source == "settings"
    bounds, warnings = slope_bounds({}, PostprocessSettings())
    assert (bounds.low, bounds.high, bounds.source) == (*DEFAULT_TANGENTIAL_SLOPE, "default")
    assert warnings and "default" in warnings[0]
    c = clean_scores([0.0, 5.0], [1.0, 2.0], statistics={"empty_slice_score": 99.0})
    assert any("tangential slope" in w for w in c.warnings)


def test_cleaned_scores_are_nan_exactly_where_removed() -> None:
    z, s = _curve_with_tails()
    body = np.full(z.shape, 500)
    body[100] = 0
    c = clean_scores(z, s, body_pixels=body, statistics=STATS)
    removed = c.empty | c.tail
    assert np.isnan(c.scores[removed]).all() and np.isfinite(c.scores[~removed]).all()
    assert c.kept.sum() == z.size - removed.sum()


# --- statistics ---------------------------------------------------------------------------


def test_tangential_quantiles_of_straight_curves() -> None:
    curves = [ScoreCurve(np.arange(0.0, 300.0, 2.5), 10 + m * np.arange(0.0, 300.0, 2.5))
              for m in (0.08, 0.1, 0.12)]
    q = tangential_slope_quantiles(curves, sigma_mm=0.0)
    assert q["q005"] == pytest.approx(0.08) and q["q995"] == pytest.approx(0.12)
    assert q["n_volumes"] == 3 and q["n_slopes"] == 3 * 119
    # smoothed, the one-sided kernel flattens the curve ends, which widens the low side
    smoothed = tangential_slope_quantiles(curves)
    assert smoothed["q005"] < 0.08 and smoothed["q995"] == pytest.approx(0.12)
    np.testing.assert_allclose(tangential_slopes([0, 2, 5], [0, 1, 4]), [0.5, 1.0])


def test_quantiles_need_a_curve() -> None:
    with pytest.raises(ValueError, match="no score curve"):
        tangential_slope_quantiles([ScoreCurve(np.zeros(1), np.zeros(1))])


# --- real volume --------------------------------------------------------------------------


def test_openkbp_padding_is_dropped_on_real_data(shared_data: Path) -> None:
    from model.reading.nifti import read_nifti

    volume = read_nifti(shared_data / "ct" / "openkbp_pt_96.nii.gz")
    slices = preprocess.preprocess_slices(volume.hu, volume.pixel_spacing_mm)
    body = body_pixel_counts(slices)
    fake = np.linspace(60.0, 100.0, volume.n_slices)
    c = clean_scores(volume.z_mm, fake, body_pixels=body, statistics=STATS)
    tissue = (volume.hu > -500).sum(axis=(1, 2)) * np.prod(volume.pixel_spacing_mm)
    # slices with almost no tissue in the CT are the ones dropped as empty
    assert np.all(tissue[c.empty] < 2000) and np.all(tissue[~c.empty] > 500)
    assert 0 < c.empty.sum() < 20


def test_spearman_rho_is_scipys_without_importing_scipy_stats() -> None:
    from scipy.stats import spearmanr

    from model.interpretation.rank_correlation import spearman_rho

    rng = np.random.default_rng(0)
    for n in (3, 7, 60, 400):
        x = rng.integers(0, 9, n).astype(float)  # many ties
        y = rng.normal(size=n)
        y[: n // 3] = 1.0
        assert spearman_rho(x, y) == pytest.approx(float(spearmanr(x, y)[0]), abs=1e-12)
    assert np.isnan(spearman_rho(np.arange(5.0), np.ones(5)))
