"""Sanity checks: z-ordering, z-spacing, discontinuities, content, scope (thesis §4.3.3)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from model.evaluation.curve_statistics import (
    calibrate_slope_ratio_range,
    calibrate_slope_threshold,
    slope_statistics,
    typical_curves,
    typical_slopes,
)
from model.evaluation.manifest import read_manifest
from model.evaluation.term_check import variant
from model.interpretation.analysis import (
    BodyPartResult,
    analyze,
    score_with_content,
)
from model.interpretation.discontinuity import DiscontinuitySettings, find_discontinuities
from model.interpretation.postprocess import CleanedScores, clean_scores, fitted_slope
from model.interpretation.sanity import (
    AnomalyCode,
    Severity,
    check_slope,
    ct_content_anomaly,
    no_body_anomaly,
    ratio_range_from_threshold,
    scope_anomaly,
    slope_anomalies,
)
from model.reading.nifti import read_nifti
from model.reading.volume import CTVolume
from model.scoring import preprocess
from model.scoring.inference import BodyPartRegressor, SliceScores

# --- z-ordering and z-spacing -------------------------------------------------------------


def test_slope_ratio_and_expected_spacing() -> None:
    z = np.arange(0.0, 300.0, 2.5)
    s = 20 + 0.1 * z
    band = ratio_range_from_threshold(0.3)
    assert band == pytest.approx((0.7, 1.3))
    ok = check_slope(z, s, expected_slope=0.1, valid_range=band)
    assert ok.slope_ratio == pytest.approx(1.0) and ok.valid_z_spacing
    assert ok.reverse_z_ordering is False and ok.expected_z_spacing_mm == pytest.approx(2.5)
    doubled = check_slope(2 * z, s, expected_slope=0.1, valid_range=band)  # header: 5 mm
    assert doubled.slope_ratio == pytest.approx(0.5) and doubled.valid_z_spacing is False
    assert doubled.z_spacing_mm == pytest.approx(5.0)
    assert doubled.expected_z_spacing_mm == pytest.approx(2.5)  # eq. 4.21 finds the truth
    assert check_slope(z / 2, s, 0.1, band).valid_z_spacing is False
    assert check_slope(z / 2, s, 0.1, (0.5, 2.5)).valid_z_spacing is True


def test_reversed_order_is_detected_and_spacing_uses_the_magnitude() -> None:
    z = np.arange(0.0, 300.0, 2.5)
    check = check_slope(z, 50 - 0.1 * z, expected_slope=0.1, valid_range=(0.7, 1.3))
    assert check.reverse_z_ordering is True and check.valid_z_spacing is True
    assert check.relative_error == pytest.approx(0.0)
    codes = [a.code for a in slope_anomalies(check, z)]
    assert codes == [AnomalyCode.REVERSED_Z]


def test_flat_curve_is_out_of_scope_not_a_spacing_error() -> None:
    z = np.arange(0.0, 300.0, 2.5)
    check = check_slope(z, 80 - 0.005 * z, expected_slope=0.1, valid_range=(0.6, 1.25))
    assert check.unplaceable
    assert check.reverse_z_ordering is None and check.valid_z_spacing is None
    (anomaly,) = slope_anomalies(check, z)
    assert anomaly.code is AnomalyCode.OUT_OF_SCOPE and anomaly.severity is Severity.ERROR
    assert "cannot place" in anomaly.message
    # just above half the floor a doubled spacing explains the curve: a spacing error
    steeper = check_slope(z, 80 + 0.031 * z, expected_slope=0.1, valid_range=(0.6, 1.25))
    assert not steeper.unplaceable and steeper.valid_z_spacing is False
    assert [a.code for a in slope_anomalies(steeper, z)] == [AnomalyCode.INVALID_Z_SPACING]


def test_a_curve_that_does_not_follow_the_slices_is_out_of_scope() -> None:
    # a limb crop as one model scored it: up 76 → 81 over two thirds, then down to 54
    z = np.arange(0.0, 220.0, 2.0)
    hump = np.interp(z, [0.0, 150.0, 218.0], [76.0, 81.0, 54.0])
    check = check_slope(z, hump, expected_slope=0.1, valid_range=(0.35, 2.0))
    assert check.unordered and check.order_rho is not None and abs(check.order_rho) < 0.7
    assert check.reverse_z_ordering is None and check.valid_z_spacing is None
    (anomaly,) = slope_anomalies(check, z)
    assert anomaly.code is AnomalyCode.OUT_OF_SCOPE and anomaly.severity is Severity.ERROR
    assert "do not follow the slice order" in anomaly.message
    # noise on an ordered curve is not disorder
    noisy = 20 + 0.1 * z + np.random.default_rng(0).normal(0.0, 1.0, z.size)
    ordered = check_slope(z, noisy, expected_slope=0.1, valid_range=(0.7, 1.3))
    assert not ordered.unordered and ordered.order_rho is not None and ordered.order_rho > 0.9
    assert ordered.valid_z_spacing is True


def test_too_few_slices_leave_checks_open() -> None:
    check = check_slope([0.0, 5.0], [1.0, 2.0], 0.1, (0.7, 1.3))
    assert check.reverse_z_ordering is None and check.valid_z_spacing is None
    assert slope_anomalies(check, [0.0, 5.0])[0].code is AnomalyCode.TOO_FEW_SLICES


def test_short_series_leave_checks_open_with_a_warning() -> None:
    z = np.arange(0.0, 40.0, 2.0)  # 38 mm, the TotalSegmentator example's slab
    check = check_slope(z, 42 - 0.006 * z, 0.11, (0.7, 1.4))
    assert check.too_short and check.scored_extent_mm == pytest.approx(38.0)
    assert check.reverse_z_ordering is None and check.valid_z_spacing is None
    assert check.expected_z_spacing_mm is None and check.slope_ratio is not None
    (anomaly,) = slope_anomalies(check, z)
    assert anomaly.code is AnomalyCode.TOO_FEW_SLICES and anomaly.severity is Severity.WARNING
    assert "38 mm" in anomaly.message
    longer = np.arange(0.0, 90.0, 2.0)
    assert check_slope(longer, 42 + 0.11 * longer, 0.11, (0.7, 1.4)).valid_z_spacing is True


def test_invalid_spacing_is_an_error_record() -> None:
    z = np.arange(0.0, 300.0, 2.5)
    check = check_slope(2 * z, 20 + 0.1 * z, 0.1, (0.7, 1.3))
    (anomaly,) = slope_anomalies(check, 2 * z)
    assert anomaly.code is AnomalyCode.INVALID_Z_SPACING and anomaly.severity is Severity.ERROR
    assert anomaly.to_dict()["details"]["expected_z_spacing_mm"] == pytest.approx(2.5)
    assert anomaly.slices == (0, z.size - 1) and anomaly.z_mm == (0.0, 2 * z[-1])


# --- threshold calibration ----------------------------------------------------------------


def _cleaned_line(slope: float, spacing: float = 2.5, n: int = 120) -> CleanedScores:
    z = np.arange(n) * spacing
    return clean_scores(z, 30 + slope * z, statistics={"empty_slice_score": 999.0},
                        settings=None)


def test_slope_statistics_leave_out_flat_curves() -> None:
    curves = [_cleaned_line(m) for m in (0.09, 0.1, 0.11, 0.12, 0.01, 0.02)]
    stats = slope_statistics(curves)
    assert stats["n"] == 4 and stats["n_excluded"] == 2
    assert stats["mean"] == pytest.approx(0.105, rel=0.02)
    np.testing.assert_allclose(typical_slopes([0.1, 0.1, 0.04, 0.3]), [0.1, 0.1])


def test_slope_statistics_leave_out_curves_whose_scores_do_not_follow_the_slices() -> None:
    # a limb crop's hump: its line fit has a typical slope, its flanks are steep
    z = np.arange(120) * 2.5
    hump = np.interp(z, [0.0, 200.0, 297.5], [40.0, 90.0, 55.0])
    crop = clean_scores(z, hump, statistics={"empty_slice_score": 999.0}, settings=None)
    lines = [_cleaned_line(m) for m in (0.09, 0.1, 0.11, 0.12)]
    slope = fitted_slope(z, hump)
    assert slope is not None and typical_slopes([0.09, 0.1, 0.11, 0.12, slope]).size == 5
    stats = slope_statistics([*lines, crop])
    assert stats["n"] == 4 and stats["n_excluded"] == 1
    assert [c for _, c in typical_curves([*lines, crop])] == lines


def test_threshold_separates_stored_from_scaled_spacing() -> None:
    slopes = np.linspace(0.085, 0.135, 11)
    curves = [_cleaned_line(m) for m in slopes]
    theta = calibrate_slope_threshold(curves, expected_slope=0.11)
    ratios = slopes / 0.11
    assert np.all(np.abs(1 - ratios) < theta)
    assert np.all(np.abs(1 - ratios / 2) > theta) and np.all(np.abs(1 - ratios * 2) > theta)
    with pytest.raises(ValueError, match="positive"):
        calibrate_slope_threshold(curves, expected_slope=0.0)


def test_ratio_range_is_halfway_to_a_scaled_spacing_in_log_space() -> None:
    # a steep brain CT (|r| = 1.35) among ordinary curves
    slopes = 0.11 * np.array([0.9, 0.95, 1.0, 1.05, 1.1, 1.35])
    curves = [_cleaned_line(m) for m in slopes]
    lo, hi = calibrate_slope_ratio_range(curves, expected_slope=0.11)
    ratios = np.array([check_slope(c.z_mm, c.scores, 0.11, (lo, hi)).slope_ratio
                       for c in curves], dtype=float)
    centre = np.exp(np.median(np.log(ratios)))
    assert (lo, hi) == pytest.approx((centre / np.sqrt(2), centre * np.sqrt(2)))
    assert np.all((ratios >= lo) & (ratios <= hi))
    assert np.all(ratios / 2 < lo) and np.all(ratios * 2 > hi)


def test_ratio_range_does_not_follow_curves_the_model_cannot_place() -> None:
    ordinary = 0.11 * np.array([0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3])
    flat_crops = 0.11 * np.array([0.55, 0.6])  # typical by the ×2 rule, but limb crops
    lo, hi = calibrate_slope_ratio_range([_cleaned_line(m) for m in ordinary], 0.11)
    lo2, hi2 = calibrate_slope_ratio_range(
        [_cleaned_line(m) for m in np.concatenate([ordinary, flat_crops])], 0.11)
    assert lo2 == pytest.approx(lo, rel=0.06) and hi2 == pytest.approx(hi, rel=0.06)
    assert hi2 > 1.3  # the steepest ordinary curve stays valid
    with pytest.raises(ValueError, match="positive"):
        calibrate_slope_ratio_range([_cleaned_line(0.1)], expected_slope=-1.0)


# --- discontinuities ----------------------------------------------------------------------


def _noisy(z: np.ndarray, s: np.ndarray, seed: int = 0) -> np.ndarray:
    return s + np.random.default_rng(seed).normal(0.0, 0.5, z.size)


def test_stacked_series_break_is_found_with_its_position() -> None:
    z = np.arange(200) * 2.5
    s = np.concatenate([44 + 0.12 * z[:100], 60 + 0.12 * (z[100:] - z[100])])
    (b,) = find_discontinuities(z, _noisy(z, s))
    assert (b.before, b.after) == (99, 100)
    assert (b.z_before_mm, b.z_after_mm) == (247.5, 250.0)
    assert b.jump == pytest.approx(60 - (44 + 0.12 * 250), abs=1.5)


def test_no_break_for_spikes_gaps_end_slices_or_a_clean_curve() -> None:
    z = np.arange(200) * 2.5
    s = _noisy(z, 20 + 0.12 * z)
    assert find_discontinuities(z, s) == []
    spike = s.copy()
    spike[80] += 25.0
    assert find_discontinuities(z, spike) == []
    gap = np.concatenate([z[:100], z[100:] + 300.0])  # 30 cm missing, scores follow anatomy
    assert find_discontinuities(gap, _noisy(gap, 20 + 0.12 * gap)) == []
    end = s.copy()
    end[-2:] -= 20.0  # two odd slices at the end of the scan
    assert find_discontinuities(z, end) == []
    strict = DiscontinuitySettings(min_support=1)
    assert len(find_discontinuities(z, end, strict)) == 1


def test_empty_slices_between_parts_do_not_hide_a_break() -> None:
    z = np.arange(100) * 3.0
    s = np.concatenate([70 + 0.1 * z[:50], 45 + 0.1 * (z[50:] - z[50])])
    s[50:53] = np.nan
    (b,) = find_discontinuities(z, _noisy(z, s))
    assert (b.before, b.after) == (49, 53)


# --- content, body, scope -----------------------------------------------------------------


def _phantom_hu() -> np.ndarray:
    hu = np.full((4, 64, 64), -1024.0, dtype=np.float32)
    hu[:, 16:48, 12:52] = 40.0
    hu[:, 24:40, 20:30] = -850.0
    return hu


def test_ct_like_content_passes_and_mr_like_does_not() -> None:
    assert ct_content_anomaly(_phantom_hu()) is None
    mr = np.random.default_rng(0).uniform(0.0, 2000.0, (4, 64, 64)).astype(np.float32)
    anomaly = ct_content_anomaly(mr)
    assert anomaly is not None and anomaly.code is AnomalyCode.NOT_CT
    assert "no air" in anomaly.message
    raw = _phantom_hu() * 20  # a wrong rescale slope
    assert ct_content_anomaly(raw) is not None


def test_no_body_and_scope_records() -> None:
    z = np.arange(10) * 5.0
    empty = clean_scores(z, np.full(10, 3.0), body_pixels=np.zeros(10),
                         statistics={"empty_slice_score": 3.0})
    anomaly = no_body_anomaly(empty)
    assert anomaly is not None and anomaly.severity is Severity.ERROR
    assert anomaly.slices == (0, 9)
    legs = clean_scores(z, np.linspace(-30, -20, 10), statistics={"empty_slice_score": 99.0})
    low = scope_anomaly(legs, (0.0, 107.8))
    assert low is not None and low.severity is Severity.WARNING
    high = scope_anomaly(clean_scores(z, np.full(10, 130.0)), (0.0, 107.8))
    assert high is not None and high.severity is Severity.ERROR
    assert scope_anomaly(clean_scores(z, np.linspace(40, 60, 10)), (0.0, 107.8)) is None


# --- real volumes -------------------------------------------------------------------------

#: Limb crops of the IBSI set (5 cm around a sarcoma, body outline cut): the model cannot
#: place their slices, so they are not part of the spacing and ordering checks.
OUT_OF_SCOPE_PREFIX = "ibsi_"


@dataclass
class Scored:
    volume: CTVolume
    scores: SliceScores
    body: np.ndarray


@pytest.fixture(scope="module")
def val_scored(shared_data: Path, regressor: BodyPartRegressor) -> dict[str, Scored]:
    items = [i for i in read_manifest(shared_data / "manifest.csv")
             if i.split == "val" and not i.name.startswith(OUT_OF_SCOPE_PREFIX)]
    out = {}
    for item in items:
        volume = read_nifti(item.ct_path)
        scores, body = score_with_content(volume, regressor)
        out[item.name] = Scored(volume, scores, body)
    return out


def _variant(s: Scored, regressor: BodyPartRegressor, *, z_factor: float = 1.0,
             reverse: bool = False) -> BodyPartResult:
    return variant(s.volume, s.scores, s.body, regressor, z_factor=z_factor, reverse=reverse)


def test_real_originals_pass_every_check(val_scored: dict[str, Scored],
                                        regressor: BodyPartRegressor) -> None:
    for name, s in val_scored.items():
        r = _variant(s, regressor)
        assert r.valid_z_spacing is True, (name, r.slope_ratio)
        assert r.reverse_z_ordering is False, name
        # no error; Pelvic-Ref-002 carries a placement-wobble warning (a bowel-gas slice
        # above its iliac crest scores 8 higher than its neighbours)
        assert not [a for a in r.anomalies if a.severity.value == "error"], (name, r.anomalies)
        assert all(a.code.value == "discontinuity" for a in r.anomalies), (name, r.anomalies)


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_real_scaled_z_spacing_is_detected(val_scored: dict[str, Scored],
                                           regressor: BodyPartRegressor, factor: float) -> None:
    for name, s in val_scored.items():
        r = _variant(s, regressor, z_factor=factor)
        assert r.valid_z_spacing is False, (name, r.slope_ratio)
        true_spacing = float(np.median(np.diff(s.volume.z_mm)))
        # eq. 4.21 points back towards the true spacing
        expected = r.expected_z_spacing_mm
        assert expected is not None
        assert abs(np.log(expected / true_spacing)) < abs(np.log(factor)), name


def test_real_reversed_order_is_detected(val_scored: dict[str, Scored],
                                         regressor: BodyPartRegressor) -> None:
    for name, s in val_scored.items():
        r = _variant(s, regressor, reverse=True)
        assert r.reverse_z_ordering is True, name
        assert r.valid_z_spacing is True, name
    lidc = val_scored["lidc_0003"].volume
    flipped = CTVolume(lidc.hu[::-1].copy(), lidc.z_mm, lidc.pixel_spacing_mm, lidc.source)
    result = analyze(flipped, regressor)
    assert result.reverse_z_ordering is True
    assert [a.code for a in result.anomalies] == [AnomalyCode.REVERSED_Z]
    assert result.body_part_examined == "CHEST"  # the anatomy is still right


def _on_network_grid(volume: CTVolume) -> np.ndarray:
    unit = preprocess.preprocess_slices(volume.hu, volume.pixel_spacing_mm)
    return (unit + 1.0) * (preprocess.HU_MAX - preprocess.HU_MIN) / 2 + preprocess.HU_MIN


def test_real_stacked_series_is_flagged_at_the_break(val_scored: dict[str, Scored],
                                                     regressor: BodyPartRegressor) -> None:
    chest = val_scored["lidc_0003"].volume
    head_neck = val_scored["openkbp_pt_211"].volume
    z_top = head_neck.z_mm - head_neck.z_mm[0] + chest.z_mm[-1] + 3.0  # z continued
    stacked = CTVolume(
        np.concatenate([_on_network_grid(chest), _on_network_grid(head_neck)]),
        np.concatenate([chest.z_mm, z_top]), (preprocess.PIXEL_SPACING_MM,) * 2, "stacked")
    result = analyze(stacked, regressor)
    breaks = [a for a in result.anomalies if a.code is AnomalyCode.DISCONTINUITY]
    assert len(breaks) == 1, result.anomalies
    first_top = chest.n_slices + int(np.argmax(val_scored["openkbp_pt_211"].body >= 82))
    assert breaks[0].slices == (chest.n_slices - 1, first_top)
    z_break = breaks[0].z_mm
    assert z_break is not None
    np.testing.assert_allclose(z_break, (chest.z_mm[-1], z_top[first_top - chest.n_slices]))
    assert result.body_part_examined is None
