"""Evaluation metrics against hand-computed values, then a short run on real volumes."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model.evaluation.calibration import anchor_units, model_statistics
from model.evaluation.evaluate import VolumeScores, evaluate, evaluate_scores, score_item
from model.evaluation.lung_landmarks import lung_landmarks_from_ct
from model.evaluation.manifest import EvalItem, read_manifest, region_group
from model.evaluation.metrics import (
    CLASS_NAMES,
    NO_CLASS,
    CalibrationError,
    LandmarkReference,
    LmseSummary,
    accuracy_summary,
    calibrate,
    monotonicity,
    normalization_constant,
    reference_table,
    score_classes,
    summarize_lmse,
    truth_classes,
    volume_lmse,
    z_test,
)
from model.reading.volume import CTVolume
from model.scoring.inference import BodyPartRegressor, ModelMeta, SliceScores
from model.scoring.network import SliceScoreNet


def _ref(**means: float) -> dict[str, LandmarkReference]:
    return {k: LandmarkReference(n=3, mean=v, sd=1.0) for k, v in means.items()}


# --- reference table, calibration, LMSE, z-test ------------------------------------------


def test_reference_table_mean_sd_and_n() -> None:
    table = reference_table([{"lung_top": 1.0, "lung_bottom": -1.0},
                             {"lung_top": 3.0}, {"lung_top": 5.0, "brainstem_top": 9.0}])
    assert table["lung_top"] == LandmarkReference(n=3, mean=3.0, sd=2.0)
    assert table["lung_bottom"] == LandmarkReference(n=1, mean=-1.0, sd=None)
    assert list(table) == ["lung_bottom", "lung_top", "brainstem_top"]  # feet → head


def test_calibration_maps_lungs_to_published_scores() -> None:
    scale, offset = calibrate(_ref(lung_bottom=1.0, lung_top=3.0))
    assert scale == pytest.approx(31.3 / 2)
    assert offset == pytest.approx(44.1 - 31.3 / 2)
    assert scale * 1.0 + offset == pytest.approx(44.1)
    assert scale * 3.0 + offset == pytest.approx(75.4)


def test_calibration_needs_both_lung_landmarks() -> None:
    with pytest.raises(CalibrationError, match="lung_top"):
        calibrate(_ref(lung_bottom=1.0))
    with pytest.raises(CalibrationError, match="same reference score"):
        calibrate(_ref(lung_bottom=2.0, lung_top=2.0))


def test_normalization_constant_is_one_on_the_calibrated_scale() -> None:
    assert normalization_constant(_ref(lung_bottom=44.1, lung_top=75.4)) == pytest.approx(1.0)
    assert normalization_constant(_ref(lung_bottom=0.0, lung_top=62.6)) == pytest.approx(2.0)


def test_volume_lmse_by_hand() -> None:
    ref = _ref(a=10.0, b=20.0)
    scores = {"a": 12.0, "b": 17.0, "c": 5.0}  # c has no reference value: ignored
    assert volume_lmse(scores, ref) == pytest.approx((2**2 + 3**2) / 2)
    assert volume_lmse(scores, ref, d=2.0) == pytest.approx((1**2 + 1.5**2) / 2)
    assert volume_lmse({"c": 1.0}, ref) is None


def test_lmse_mean_and_standard_error() -> None:
    s = summarize_lmse([1.0, 2.0, 3.0, 4.0])
    assert s.mean == 2.5 and s.n == 4
    assert s.se == pytest.approx(math.sqrt(5 / 3) / 2)  # sd (ddof 1) / √N
    assert summarize_lmse([2.0]) == LmseSummary(2.0, None, 1)
    assert summarize_lmse([]) == LmseSummary(None, None, 0)


def test_z_test_by_hand() -> None:
    t, p = z_test((3.0, 0.3), LmseSummary(2.0, 0.4, 20))
    assert t == pytest.approx(2.0)  # 1 / √(0.09 + 0.16)
    assert p == pytest.approx(0.0455003, abs=1e-6)
    t, p = z_test((2.0, 0.3), (2.0, 0.4))
    assert (t, p) == (0.0, 1.0)
    with pytest.raises(ValueError):
        z_test(LmseSummary(2.0, None, 1), (2.0, 0.4))


# --- accuracy and monotonicity -------------------------------------------------------------


def test_predicted_classes_use_published_boundaries() -> None:
    scores = [10, 28.8, 30, 44.1, 50, 75.4, 80, 89.2, 95]
    assert score_classes(scores).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_truth_classes_between_landmarks() -> None:
    z = np.arange(0.0, 101.0)
    lm = {"lung_bottom": 20.0, "lung_top": 50.0, "brainstem_bottom": 80.0,
          "brainstem_top": 90.0}
    truth = truth_classes(z, lm)
    chest, neck, head = (CLASS_NAMES.index(c) for c in ("chest", "neck", "head"))
    assert (truth[20:50] == chest).all() and (truth[50:80] == neck).all()
    assert (truth[80:91] == head).all()
    assert (truth[:20] == NO_CLASS).all() and (truth[91:] == NO_CLASS).all()


def test_truth_pelvis_spans_pelvic_landmarks_and_conflicts_are_dropped() -> None:
    z = np.arange(0.0, 50.0)
    truth = truth_classes(z, {"prostate_centre": 10.0, "bladder_top": 20.0,
                              "femoral_head_top": 15.0})
    assert (truth[10:21] == 0).all() and (truth[21:] == NO_CLASS).all()
    # an abdomen interval overlapping the pelvis one: the shared slices get no class
    truth = truth_classes(z, {"prostate_centre": 10.0, "bladder_top": 20.0,
                              "liver_bottom": 18.0, "lung_bottom": 30.0})
    assert (truth[18:21] == NO_CLASS).all() and (truth[21:30] == 1).all()


def test_accuracy_on_a_synthetic_case() -> None:
    truth = np.array([2, 2, 2, 3, 3, NO_CLASS])
    pred = np.array([2, 2, 3, 3, 4, 0])
    acc = accuracy_summary([(pred, truth), (np.array([4]), np.array([4]))])
    assert (acc.n, acc.correct) == (6, 4)
    assert acc.accuracy == pytest.approx(4 / 6)
    assert acc.class_accuracy("chest") == pytest.approx(2 / 3)
    assert acc.class_accuracy("pelvis") is None
    assert acc.confusion[3][4] == 1


def test_monotonicity() -> None:
    z = np.arange(50.0)
    rho, r2, slope = monotonicity(z, 0.1 * z + 3)
    assert rho == pytest.approx(1.0) and r2 == pytest.approx(1.0)
    assert slope == pytest.approx(0.1)
    rho, r2, _ = monotonicity(z, -(z**3))
    assert rho == pytest.approx(-1.0) and r2 is not None and r2 < 1.0
    assert monotonicity(z, np.ones(50)) == (None, None, None)


def test_region_groups() -> None:
    assert region_group(["HEAD", "NECK", "CHEST"]) == "head-neck"
    assert region_group(["NECK", "CHEST", "ABDOMEN", "ARM"]) == "chest"
    assert region_group(["CHEST", "ABDOMEN", "PELVIS"]) == "abdomen-pelvis"
    assert region_group(["ABDOMEN", "PELVIS", "LEG"]) == "abdomen-pelvis"
    assert region_group(["PELVIS", "LEG"]) == "limbs"
    assert region_group(["PELVIS"]) == "abdomen-pelvis"
    assert region_group([]) == "other"


# --- the whole evaluation on synthetic scores ----------------------------------------------


def _volume(name: str, split: str, landmarks: dict[str, float], slope: float = 0.01,
            shift: float = 0.0) -> VolumeScores:
    z = np.arange(0.0, 400.0, 5.0)
    return VolumeScores(name=name, split=split, group="chest", z_mm=z, raw=slope * z + shift,
                        occupied=np.ones(z.size, bool), landmarks=landmarks)


def test_evaluate_scores_by_hand() -> None:
    lungs = {"lung_bottom": 100.0, "lung_top": 300.0}
    volumes = [
        _volume("t1", "train", lungs),  # raw 1.0 and 3.0 at the lungs
        _volume("t2", "train", lungs, shift=0.2),  # raw 1.2 and 3.2
        _volume("v1", "val", lungs, shift=0.1),  # exactly the reference: LMSE 0
        _volume("v2", "val", lungs, shift=0.3),  # 0.2 raw too high at both landmarks
        _volume("v3", "val", {}),  # no landmark: not in the LMSE
    ]
    report = evaluate_scores(volumes, model_version="test")
    scale = 31.3 / 2.0
    assert report.score_scale == pytest.approx(scale)
    assert report.score_scale * 1.1 + report.score_offset == pytest.approx(44.1)
    assert report.normalization_d == pytest.approx(1.0)
    assert report.lmse.n == 2
    assert report.lmse.mean == pytest.approx((0 + (0.2 * scale) ** 2) / 2)
    assert report.lmse.se == pytest.approx((0.2 * scale) ** 2 / 2)  # sd / √2 of {0, x}
    ref = {r.name: r for r in report.landmarks}
    assert ref["lung_top"].n_train == 2 and ref["lung_top"].reference_mean == pytest.approx(75.4)
    assert ref["lung_top"].val_rmse == pytest.approx(math.sqrt((0.2 * scale) ** 2 / 2))
    # v1's chest slices (z 100-295) all score 44.1..75.4: every one is right
    v1 = next(v for v in report.volumes if v.name == "v1")
    assert v1.accuracy_n == 40 and v1.accuracy == 1.0 and v1.spearman == pytest.approx(1.0)
    assert report.monotonicity.n == 3
    assert report.monotonicity.slope_per_mm_mean == pytest.approx(0.01 * scale)
    assert report.lmse_by_group["chest"].n == 2


def test_evaluate_scores_with_given_scale_is_not_recalibrated() -> None:
    lungs = {"lung_bottom": 100.0, "lung_top": 300.0}
    volumes = [_volume("t", "train", lungs), _volume("v", "val", lungs)]
    report = evaluate_scores(volumes, scale_offset=(1.0, 0.0))
    assert report.scale_source == "metadata" and report.score_scale == 1.0
    assert report.normalization_d == pytest.approx(2.0 / 31.3)
    assert report.lmse.mean == pytest.approx(0.0)


def test_evaluate_scores_without_lungs_in_train_raises() -> None:
    volumes = [_volume("t", "train", {"brainstem_top": 10.0}), _volume("v", "val", {})]
    with pytest.raises(CalibrationError, match="lung_bottom"):
        evaluate_scores(volumes)


def test_report_is_strict_json_and_markdown() -> None:
    lungs = {"lung_bottom": 100.0, "lung_top": 300.0}
    flat = _volume("v", "val", {"lung_bottom": 100.0}, slope=0.0)  # constant: ρ undefined
    report = evaluate_scores([_volume("t", "train", lungs), _volume("u", "train", lungs,
                                                                      shift=0.1), flat])
    report.score_offset = float("nan")  # as if something had gone wrong upstream
    text = json.dumps(report.to_dict(), allow_nan=False)
    data = json.loads(text)
    assert data["score_offset"] is None
    assert data["volumes"][2]["spearman"] is None
    assert data["reference_table"]["lung_top"]["n"] == 2
    md = report.to_markdown()
    assert "| landmark | n train | reference |" in md and "| **all** |" in md


# --- real volumes --------------------------------------------------------------------------


class LungApexScorer:
    """A stand-in model: 0.01 per mm above the volume's image-derived lung apex.

    World z has a different origin in every volume, so the apex anchors the score; the
    lung apex then gets raw score 0 in every volume and a reference error of 0.
    """

    def __init__(self) -> None:
        self.meta = ModelMeta(version="apex", channels=[1])

    def score_volume(self, volume: CTVolume) -> SliceScores:
        apex = lung_landmarks_from_ct(volume)["lung_top"]
        raw = (0.01 * (volume.z_mm - apex)).astype(np.float32)
        return SliceScores(z_mm=volume.z_mm, raw=raw, scores=raw.astype(np.float64))


def _items(data: Path, names: dict[str, str]) -> list[EvalItem]:
    by_name = {i.name: i for i in read_manifest(data / "manifest.csv")}
    return [EvalItem(n, split, by_name[n].ct_path, by_name[n].label_path,
                     by_name[n].body_regions) for n, split in names.items()]


def test_manifest_items_and_groups(shared_data: Path) -> None:
    items = read_manifest(shared_data / "manifest.csv")
    # 191 curated volumes, then five clinical torso CTs appended at the end (none labelled).
    assert len(items) == 196
    assert sum(i.label_path is not None for i in items) == 123
    assert [i.name for i in items[-5:]] == [
        "brt_needle_pl697807", "acrin_flt_breast_013", "tcia_9328_50_1_0109",
        "lungfcp_01_0001", "tcia_9328_50_1_0117"]
    groups = {i.name: region_group(i.body_regions) for i in items}
    assert {g for n, g in groups.items() if n.startswith("openkbp")} == {"head-neck"}
    assert groups["lidc_0003"] == "chest" and groups["pelvicref_002"] == "abdomen-pelvis"
    assert groups["ibsi_sts_013"] == "limbs"


def test_evaluate_real_volumes_with_a_stand_in_model(shared_data: Path) -> None:
    items = _items(shared_data, {"lidc_0002": "train", "lungx_ct004": "train",
                                 "openkbp_pt_13": "train", "lidc_0003": "val",
                                 "openkbp_pt_60": "val"})
    report = evaluate(LungApexScorer(), items)
    rows = {r.name: r for r in report.landmarks}
    assert rows["lung_top"].reference_mean == pytest.approx(75.4)
    assert rows["lung_top"].val_rmse == pytest.approx(0.0, abs=1e-3)
    assert rows["lung_top"].n_val == 2 and rows["lung_bottom"].n_train == 2
    assert report.monotonicity.spearman_mean == pytest.approx(1.0)
    assert report.lmse.n == 2 and report.lmse.mean is not None and report.lmse.mean < 100
    assert report.accuracy.per_class_n["chest"] > 50
    assert report.accuracy.accuracy is not None and report.accuracy.accuracy > 0.5
    json.dumps(report.to_dict(), allow_nan=False)


def test_evaluate_runs_a_real_network(shared_data: Path) -> None:
    torch.manual_seed(0)
    net = SliceScoreNet()
    model = BodyPartRegressor(net, ModelMeta(version="random", channels=[16, 32, 64, 128, 256]))
    items = _items(shared_data, {"crlm_ct_1004": "train", "pyradiomics_lung2": "train",
                                 "pyradiomics_lung1": "val"})
    report = evaluate(model, items)
    assert report.model_version == "random"
    assert report.n_volumes == {"train": 2, "val": 1}
    assert [r.name for r in report.landmarks] == ["lung_bottom", "lung_top"]
    assert report.seconds > 0


def test_truth_classes_from_bone_landmarks_are_the_published_pelvis_and_abdomen() -> None:
    z = np.arange(0.0, 100.0)
    lm = {"pelvis_bottom": 10.0, "femoral_head_top": 25.0, "iliac_crest_top": 40.0,
          "lung_bottom": 70.0}
    truth = truth_classes(z, lm)
    pelvis, abdomen = CLASS_NAMES.index("pelvis"), CLASS_NAMES.index("abdomen")
    assert (truth[10:40] == pelvis).all() and (truth[40:70] == abdomen).all()
    assert (truth[:10] == NO_CLASS).all()
    # two pelvis rules that overlap (label span and bone interval) keep their class
    lm.update({"prostate_centre": 15.0, "bladder_top": 35.0})
    assert (truth_classes(z, lm)[10:40] == pelvis).all()


class ZScorer:
    """A stand-in model whose raw score is 0.01 per mm of world z."""

    def __init__(self) -> None:
        self.meta = ModelMeta(version="z", channels=[1])

    def score_volume(self, volume: CTVolume) -> SliceScores:
        raw = (0.01 * volume.z_mm).astype(np.float32)
        return SliceScores(z_mm=volume.z_mm, raw=raw, scores=raw)


def test_scored_volumes_carry_the_limb_crop_rule_of_inference(shared_data: Path) -> None:
    items = _items(shared_data, {"ibsi_sts_001": "train", "lidc_0002": "train"})
    assert [score_item(ZScorer(), i).limb_crop for i in items] == [True, False]


def test_limb_crops_are_left_out_of_the_model_statistics(regressor: BodyPartRegressor) -> None:
    lungs = {"lung_bottom": 100.0, "lung_top": 300.0}
    trunks = [_volume(f"t{i}", "train", lungs, slope=0.01 * (1 + 0.03 * i)) for i in range(6)]
    # typical enough in slope to enter every statistic, were it not a limb crop
    crop = replace(_volume("crop", "train", {}, slope=0.017), limb_crop=True)
    report = evaluate_scores(trunks, model_version="test")
    stats = model_statistics(regressor, report, trunks)
    assert model_statistics(regressor, report, [*trunks, crop]) == stats
    counted = model_statistics(regressor, report, [*trunks, replace(crop, limb_crop=False)])
    assert counted["slope_per_mm"] != stats["slope_per_mm"]


def test_anchor_units_are_those_of_an_anchored_training() -> None:
    assert anchor_units({"anchor_weight": 1.0, "anchor_scale": 12.35,
                         "anchor_offset": 67.42}) == (12.35, 67.42)
    assert anchor_units({"anchor_weight": 0.0, "anchor_scale": 12.35,
                         "anchor_offset": 67.42}) is None
    assert anchor_units({"note": "exported by hand"}) is None
