"""A curve flat only where the model cannot place the slices is named by the placed part."""

from __future__ import annotations

import numpy as np
import pytest

from model.interpretation.analysis import AnalysisSettings, BodyPartResult, interpret
from model.interpretation.placement import MIN_PLACED_FRACTION, find_placement
from model.reading.volume import CTVolume
from model.scoring.inference import BodyPartRegressor, SliceScores

Z = np.arange(160) * 2.5  # 400 mm


def _half_flat(seed: int = 0) -> np.ndarray:
    """Chest to abdomen: the lower 160 mm flat at the lung bases, the chest above rising."""
    rng = np.random.default_rng(seed)
    s = np.where(Z < 160.0, 44.0, 44.0 + 0.11 * (Z - 160.0))
    return s + rng.normal(0.0, 0.3, Z.size)


def _interpret(scores: np.ndarray, regressor: BodyPartRegressor, z_factor: float = 1.0
               ) -> BodyPartResult:
    z = Z * z_factor
    volume = CTVolume(np.zeros((z.size, 1, 1), np.float32), z, (1.0, 1.0), "synthetic")
    return interpret(volume, SliceScores(z, scores, scores), np.full(z.size, 1 << 20),
                     regressor, AnalysisSettings(check_content=False))


def test_the_placed_run_is_the_rising_part() -> None:
    placement = find_placement(Z, _half_flat(), lambda s: np.full(s.shape, 0.11), 0.37)
    assert placement.usable and placement.fraction >= MIN_PLACED_FRACTION
    assert placement.first is not None and Z[placement.first] == pytest.approx(160.0, abs=35)
    assert placement.last == Z.size - 1


def test_a_partly_placed_series_keeps_its_term_with_a_warning(
        regressor: BodyPartRegressor) -> None:
    result = _interpret(_half_flat(), regressor)
    assert result.body_part_examined == "CHEST", result.anomalies
    assert result.valid_z_spacing is True
    (note,) = [a for a in result.anomalies if "places only" in a.message]
    assert note.severity.value == "warning" and note.slices is not None
    assert note.slices[1] == Z.size - 1
    assert result.to_json_dict()["body_part_examined_detail"]["withheld_by"] == []


def test_a_doubled_header_spacing_is_still_caught(regressor: BodyPartRegressor) -> None:
    result = _interpret(_half_flat(), regressor, z_factor=2.0)
    assert result.body_part_examined is None and result.valid_z_spacing is not True
    withheld = result.to_json_dict()["body_part_examined_detail"]["withheld_by"]
    # Halved slopes either fail the spacing check on the placed part, or, where the model's
    # slope profile expects a steep rise just above the lung bases (issue 12 model: 0.16 per
    # mm at 50-60), leave less than half of the curve placed: never named either way.
    assert [a["code"] for a in withheld] in (["invalid_z_spacing"], ["out_of_scope"])


def test_a_mostly_flat_series_says_how_much_was_placed(regressor: BodyPartRegressor) -> None:
    s = np.where(Z < 330.0, 60.0, 60.0 + 0.11 * (Z - 330.0))
    result = _interpret(s + np.random.default_rng(2).normal(0, 0.3, Z.size), regressor)
    assert result.body_part_examined is None
    (error,) = [a for a in result.anomalies if a.severity.value == "error"]
    assert error.code.value == "out_of_scope" and "places only" in error.message
    assert error.details is not None and 0 < float(error.details["placed_fraction"]) < 0.5
