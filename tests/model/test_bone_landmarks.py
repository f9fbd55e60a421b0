"""Bone landmark rules on real pelvic CTs of ../shared/data, checked against femur labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.evaluation.bone_landmarks import (
    BONE_LANDMARK_RULES,
    BoneProfile,
    abdomen_floor,
    bone_landmarks,
    bone_landmarks_from_profile,
    bone_profile,
    pelvic_run,
    pelvis_reaches_bottom,
)
from model.evaluation.landmarks import volume_landmarks
from model.reading.nifti import read_nifti
from tests.figures import Report

#: Largest accepted difference between the bone and the label femoral head top, in mm:
#: the rule's round bone merges with the acetabular roof a slice or three above the head.
FEMORAL_HEAD_TOLERANCE_MM = 15.0


def test_every_bone_landmark_has_a_rule() -> None:
    assert set(BONE_LANDMARK_RULES) == {"iliac_crest_top", "femoral_head_top", "pelvis_bottom"}


@pytest.mark.parametrize("name", ["pelvicref_002", "pelvicref_003"])
def test_pelvic_landmarks_agree_with_the_femur_label(shared_data: Path, name: str,
                                                     report: Report) -> None:
    ct = shared_data / "ct" / f"{name}.nii.gz"
    label = volume_landmarks(ct, shared_data / "labels" / f"{name}.nii.gz")
    bone = bone_landmarks(read_nifti(ct))
    error = bone["femoral_head_top"] - label["femoral_head_top"]
    report("bone landmarks", f"{name}: femoral head top, bone − label = {error:+.1f} mm")
    assert abs(error) <= FEMORAL_HEAD_TOLERANCE_MM
    # pubis bottom 60–130 mm below the femoral heads, iliac crest 80–180 mm above them
    assert 60.0 <= label["femoral_head_top"] - bone["pelvis_bottom"] <= 130.0
    assert 80.0 <= bone["iliac_crest_top"] - label["femoral_head_top"] <= 180.0


def test_kidney_contrast_and_ribs_are_no_pelvis(shared_data: Path) -> None:
    # liver CT ending 120 mm below the lungs, with both-sided lateral bone or contrast low
    volume = read_nifti(shared_data / "ct" / "crlm_ct_1006.nii.gz")
    profile = bone_profile(volume)
    assert bone_landmarks(volume) == {}
    assert not pelvis_reaches_bottom(profile)
    floor = abdomen_floor(profile, volume.z_mm)
    assert floor is not None and floor > volume.z_mm[0]


def test_scan_ending_in_the_pelvis_has_no_pelvis_bottom(shared_data: Path) -> None:
    volume = read_nifti(shared_data / "ct" / "acrin_flt_breast_001_lower.nii.gz")
    found = bone_landmarks(volume)
    assert "pelvis_bottom" not in found and "iliac_crest_top" in found
    assert pelvis_reaches_bottom(bone_profile(volume))


def test_chest_ct_has_no_bone_landmarks(shared_data: Path) -> None:
    assert bone_landmarks(read_nifti(shared_data / "ct" / "lidc_0003.nii.gz")) == {}


def test_the_pelvis_is_the_highest_run_not_the_widest() -> None:
    # 10 mm slices from the feet: knees (slices 5-9, wider than the pelvis, round condyles),
    # thin femoral shafts, then femoral heads (42-44) and iliac wings up to 48; lungs from 55
    n = 60
    lateral = np.zeros(n)
    lateral[5:10], lateral[41:49] = 12.0, 9.0
    radius = np.zeros(n)
    radius[6:9], radius[42:45] = 25.0, 22.0
    medial = np.zeros(n)
    medial[5:10], medial[41] = 3.0, 2.0  # touching knees; the pubis
    lung = np.arange(n) >= 55
    profile = BoneProfile(lateral, lateral, medial, radius, lung, np.ones(n, bool))
    z = np.arange(n) * 10.0
    assert pelvic_run(profile) == (41, 48)  # shafts below the bone threshold: two runs
    assert bone_landmarks_from_profile(profile, z) == {
        "femoral_head_top": 440.0, "iliac_crest_top": 480.0}  # no femur-only slices below
    lateral[10:41] = 3.0  # shafts above it join the knees to the pelvis
    assert pelvic_run(profile) == (5, 48)
    assert bone_landmarks_from_profile(profile, z) == {
        "pelvis_bottom": 410.0, "femoral_head_top": 440.0, "iliac_crest_top": 480.0}
