"""Torso cross-validation: folds, figures of held-out volumes and their summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from model.evaluation.cross_validation import (
    FoldFigures,
    across_folds,
    assign_folds,
    expected_pelvic_score,
    fold_figures,
    held_out_volume,
    torso_items,
)
from model.evaluation.manifest import read_manifest, region_group


def test_folds_deal_every_torso_volume_once_and_balance_groups(shared_data: Path) -> None:
    items = read_manifest(shared_data / "manifest.csv")
    folds = assign_folds(items, 5)
    torso = torso_items(items)
    assert set(folds) == {i.name for i in torso}
    assert not any(name.startswith(("ibsi_", "openkbp_")) for name in folds)
    assert {"pelvicref_002", "lidc_0003", "onkodicom_rt_thorax"} <= folds.keys()
    sizes = np.bincount(list(folds.values()), minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for group in ("chest", "abdomen-pelvis"):
        per_fold = np.bincount([folds[i.name] for i in torso
                                if region_group(i.body_regions) == group], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, group
    assert assign_folds(list(reversed(items)), 5) == folds
    with pytest.raises(ValueError):
        assign_folds(items, 1)


def test_expected_pelvic_score_follows_the_volumes_own_bones() -> None:
    bones = {"pelvis_bottom": 100.0, "femoral_head_top": 150.0, "iliac_crest_top": 250.0}
    assert expected_pelvic_score(150.0, bones) == pytest.approx(13.6)
    assert expected_pelvic_score(200.0, bones) == pytest.approx((13.6 + 28.8) / 2)
    # beyond the crest: the upper segment's slope continues
    assert expected_pelvic_score(300.0, bones) == pytest.approx(28.8 + 50 * 15.2 / 100)
    assert expected_pelvic_score(120.0, {"femoral_head_top": 150.0}) is None


def test_a_well_placed_abdomen_pelvis_volume() -> None:
    z = np.arange(0.0, 400.0, 5.0)
    lm = {"pelvis_bottom": 50.0, "femoral_head_top": 100.0, "iliac_crest_top": 200.0,
          "lung_bottom": 350.0, "bladder_top": 150.0}
    # the bpreg scale through the bones, then 0.1 per mm above the crest
    scores = np.where(z < 200.0,
                      np.interp(z, [50, 100, 200], [0.0, 13.6, 28.8],
                                left=-13.6, right=28.8),
                      28.8 + 0.1 * (z - 200.0))
    scores[z < 50] = (z[z < 50] - 50) * 13.6 / 50
    v = held_out_volume("x", "abdomen-pelvis", 2, z, scores, lm)
    assert v.spearman == pytest.approx(1.0)
    assert v.class_counts["pelvis"] == (30, 30) and v.class_counts["abdomen"][0] == 30
    assert v.pelvic["femoral_head_top"] == pytest.approx((13.6, 13.6))
    assert v.pelvic["bladder_top"][0] == pytest.approx(v.pelvic["bladder_top"][1])
    assert v.slope_below_lungs is not None and v.slope_above_lungs is None  # 50 mm < 80


def test_fold_figures_pool_volumes_and_folds_average() -> None:
    z = np.arange(0.0, 300.0, 5.0)
    lm = {"lung_bottom": 100.0, "lung_top": 280.0}
    good = held_out_volume("a", "chest", 0, z, 20.0 + 0.12 * z, lm)
    flat_below = held_out_volume("b", "chest", 0, z, np.where(z < 100, 32.0 + 0.0 * z,
                                                              20.0 + 0.12 * z), lm)
    f = fold_figures([good, flat_below])
    assert f.n_volumes == 2 and f.monotone_fraction == 0.5
    assert f.slope_ratio == pytest.approx((0.12 + 0.0) / 2 / 0.12, abs=1e-6)
    summary = across_folds([f, fold_figures([good])])
    mean, se = summary["monotone_fraction"] or (math.nan, math.nan)
    assert mean == pytest.approx(0.75) and se == pytest.approx(0.25)
    assert summary["error_femoral_head_top"] is None
    # a figure only one fold has: no standard error, and strict JSON (no NaN)
    single = across_folds([fold_figures([good]), FoldFigures(n_volumes=0, monotone_fraction=None)])
    assert single["monotone_fraction"] == (1.0, None)
    json.dumps(single, allow_nan=False)
