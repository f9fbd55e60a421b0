"""The shipped model on the validation split: scores rise with z, landmarks land where expected.

Thresholds are the model card's measured figures with a margin, so a retrained or broken
model that is clearly worse fails here. Known shortfalls are strict xfails: they start
failing (XPASS) the day a model fixes them, so the card and these tests get updated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from model.evaluation.calibration import anchor_units
from model.evaluation.evaluate import VolumeScores, score_items
from model.evaluation.manifest import EvalItem, read_manifest
from model.evaluation.metrics import (
    CLASS_NAMES,
    LandmarkReference,
    score_classes,
    truth_classes,
    volume_lmse,
)
from model.paths import DEFAULT_WEIGHTS
from model.scoring.inference import BodyPartRegressor

#: Whole-body-section validation volumes must rank their slices at least this well.
MIN_SPEARMAN = 0.98
#: Pelvic-Ref-002 reaches 0.983 (its predecessors 0.972 and 0.963).
MIN_SPEARMAN_PELVIS = 0.95
#: Mean landmark MSE over validation volumes with landmarks (card: 2.58, its predecessors
#: 2.16, 3.64 and 3.50; SE 0.7).
MAX_VAL_LMSE = 3.0
#: Validation slice accuracy of the pelvis and abdomen classes (card: 77.9 % and 100 %;
#: the model without anatomical anchors reached 20.6 % and 14.3 %).
MIN_PELVIS_ACCURACY = 0.70
MIN_ABDOMEN_ACCURACY = 0.75
#: How far the train-reference pelvic landmarks may lie from bpreg's published scores: issue
#: 12's ±5 score units. The reference rests on two training volumes (card: femoral head top
#: 16.3, sd 0.5; its predecessor 16.6, sd 3.5), so a tighter bound would judge those two
#: volumes rather than the model.
PELVIS_SCALE_TOLERANCE = 5.0
#: How far the train-reference lung ends may lie from bpreg's lung_start and lung_end in the
#: anchors' units (card: 43.0 and 75.4 from 16 and 121 training volumes).
LUNG_SCALE_TOLERANCE = 1.5


def _is_limb_crop(name: str) -> bool:
    """IBSI sarcoma crops: 13–30 cm field of view around a limb or girdle tumour."""
    return name.startswith("ibsi_sts_")


@pytest.fixture(scope="module")
def val_scores(shared_data: Path, regressor: BodyPartRegressor) -> list[VolumeScores]:
    items: list[EvalItem] = [i for i in read_manifest(shared_data / "manifest.csv")
                             if i.split == "val"]
    return score_items(regressor, items)


def _rho(v: VolumeScores) -> float:
    return float(spearmanr(v.raw[v.occupied], v.z_mm[v.occupied])[0])


def test_shipped_model_is_small_and_calibrated(regressor: BodyPartRegressor) -> None:
    assert DEFAULT_WEIGHTS.stat().st_size < 20e6
    meta = regressor.meta
    # the scale its anchors were trained in, and the lungs land on bpreg's scores in it
    assert anchor_units(meta.training) == (meta.score_scale, meta.score_offset)
    ref = meta.reference_table
    assert ref["lung_bottom"] == pytest.approx(44.1, abs=LUNG_SCALE_TOLERANCE)
    assert ref["lung_top"] == pytest.approx(75.4, abs=LUNG_SCALE_TOLERANCE)
    assert "empty_slice_score" in meta.statistics


def test_validation_scores_rise_with_z(val_scores: list[VolumeScores]) -> None:
    checked = [v for v in val_scores if not _is_limb_crop(v.name)]
    assert len(checked) == 15
    for v in checked:
        floor = MIN_SPEARMAN_PELVIS if v.name.startswith("pelvicref") else MIN_SPEARMAN
        assert _rho(v) > floor, f"{v.name}: Spearman ρ {_rho(v):.3f} ≤ {floor}"


def test_validation_landmark_error(regressor: BodyPartRegressor,
                                   val_scores: list[VolumeScores]) -> None:
    reference = {k: LandmarkReference(n=1, mean=v, sd=None)
                 for k, v in regressor.meta.reference_table.items()}
    scale, offset = regressor.meta.score_scale, regressor.meta.score_offset
    lmses = [lmse for v in val_scores
             if (lmse := volume_lmse(v.landmark_scores(scale, offset), reference)) is not None]
    assert len(lmses) == 15
    assert float(np.mean(lmses)) < MAX_VAL_LMSE


def test_pelvis_lies_on_bpregs_scale(regressor: BodyPartRegressor) -> None:
    ref = regressor.meta.reference_table
    assert ref["femoral_head_top"] == pytest.approx(13.6, abs=PELVIS_SCALE_TOLERANCE)  # femur_end
    assert ref["iliac_crest_top"] == pytest.approx(28.8, abs=PELVIS_SCALE_TOLERANCE)  # pelvis_end


def test_validation_pelvis_and_abdomen_slices_are_classed_right(
        regressor: BodyPartRegressor, val_scores: list[VolumeScores]) -> None:
    hits = {"pelvis": [0, 0], "abdomen": [0, 0]}
    for v in val_scores:
        keep = v.occupied
        pred = score_classes(regressor.to_reference_scale(v.raw)[keep])
        truth = truth_classes(v.z_mm[keep], v.landmarks)
        for cls, (n, _) in hits.items():
            mask = truth == CLASS_NAMES.index(cls)
            hits[cls] = [n + int(mask.sum()),
                         hits[cls][1] + int((pred[mask] == CLASS_NAMES.index(cls)).sum())]
    assert hits["pelvis"][0] >= 60 and hits["abdomen"][0] >= 20
    assert hits["pelvis"][1] / hits["pelvis"][0] >= MIN_PELVIS_ACCURACY
    assert hits["abdomen"][1] / hits["abdomen"][0] >= MIN_ABDOMEN_ACCURACY


@pytest.mark.xfail(strict=True, reason="known limitation: limb crops are not ordered (card)")
def test_limb_crops_rise_with_z(val_scores: list[VolumeScores]) -> None:
    assert all(_rho(v) > MIN_SPEARMAN for v in val_scores if _is_limb_crop(v.name))


@pytest.mark.xfail(strict=True, reason="known limitation: limb crops score like the neck (card)")
def test_limb_crops_score_below_the_chest(regressor: BodyPartRegressor,
                                          val_scores: list[VolumeScores]) -> None:
    lung_bottom = regressor.meta.reference_table["lung_bottom"]
    for v in val_scores:
        if _is_limb_crop(v.name):
            assert np.median(regressor.to_reference_scale(v.raw)) < lung_bottom, v.name
