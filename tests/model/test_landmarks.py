"""Landmark rules: synthetic label maps and phantoms, then real volumes of ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.evaluation.landmarks import (
    LANDMARK_NAMES,
    LANDMARK_RULES,
    MIN_STRUCTURE_VOXELS,
    landmarks_for_volume,
    landmarks_from_labels,
    read_label_map,
    volume_landmarks,
)
from model.evaluation.lung_landmarks import lung_landmarks_from_ct, lung_profile
from model.reading.nifti import read_nifti
from model.reading.volume import CTVolume

# --- label maps ---------------------------------------------------------------------------


def _labels(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, 8, 8), np.uint8), 100.0 + 2.5 * np.arange(n)


def test_rule_table_covers_every_landmark() -> None:
    assert set(LANDMARK_RULES) == set(LANDMARK_NAMES)
    assert all(isinstance(t, str) and len(t) > 20 for t in LANDMARK_RULES.values())


def test_top_bottom_and_centre_use_slice_positions() -> None:
    labels, z = _labels()
    labels[5:9, 2:6, 2:6] = 1  # brainstem in slices 5..8
    labels[10:13, 1:4, 1:4] = 2  # prostate: 9 voxels per slice
    labels[11, 1:4, 1:7] = 2  # ... 18 in slice 11
    got = landmarks_from_labels(labels, {1: "brainstem", 2: "prostate"}, z)
    assert got["brainstem_bottom"] == z[5]
    assert got["brainstem_top"] == z[8]
    assert got["prostate_centre"] == pytest.approx((9 * z[10] + 18 * z[11] + 9 * z[12]) / 36)


def test_structure_touching_the_scan_end_is_cut() -> None:
    labels, z = _labels()
    labels[12:, 2:6, 2:6] = 1  # reaches the last slice: top unknown, bottom fine
    labels[:4, 2:6, 2:6] = 2  # reaches the first slice
    got = landmarks_from_labels(labels, {1: "brainstem", 2: "prostate"}, z)
    assert got == {"brainstem_bottom": z[12]}


def test_empty_slices_count_as_outside_the_scan() -> None:
    labels, z = _labels()
    labels[3:10, 2:6, 2:6] = 1
    valid = np.zeros(z.size, bool)
    valid[3:] = True  # slices 0-2 hold no image, as in padded OpenKBP volumes
    got = landmarks_from_labels(labels, {1: "brainstem"}, z, valid_slices=valid)
    assert got == {"brainstem_top": z[9]}


def test_tiny_structures_and_unknown_names_are_ignored() -> None:
    labels, z = _labels()
    labels[6:8, 0:3, 0:3] = 1  # 18 voxels, spread over two slices
    assert (labels == 1).sum() < MIN_STRUCTURE_VOXELS
    labels[6:10, 4:8, 4:8] = 3
    got = landmarks_from_labels(labels, {1: "larynx", 3: "kidney"}, z)
    assert got == {}


def test_paired_structures_use_the_union() -> None:
    labels, z = _labels()
    labels[4:9, 0:3, 0:3] = 3  # parotid_right up to slice 8
    labels[6:12, 5:8, 5:8] = 4  # parotid_left up to slice 11
    labels[2:15, 3:5, 0:2] = 5  # femur_right
    labels[3:16, 3:5, 6:8] = 6  # femur_left reaches higher
    got = landmarks_from_labels(
        labels, {3: "parotid_right", 4: "parotid_left", 5: "femur_right", 6: "femur_left"}, z
    )
    assert got == {"parotid_top": z[11], "femoral_head_top": z[15]}


def test_label_map_must_match_the_slices() -> None:
    labels, z = _labels()
    with pytest.raises(ValueError, match="does not match"):
        landmarks_from_labels(labels, {1: "brainstem"}, z[:-1])


# --- image-derived lungs on a synthetic phantom -----------------------------------------


def _phantom(lungs: bool = True) -> CTVolume:
    """Elliptic body with two tapered lungs, a midline trachea and a gas-filled bowel loop."""
    n, size = 60, 96
    rng = np.random.default_rng(0)
    hu = np.full((n, size, size), -1024.0, np.float32)
    r, c = np.mgrid[:size, :size]
    body = ((r - 48) / 30) ** 2 + ((c - 48) / 42) ** 2 <= 1
    hu[:, body] = 40.0
    for k in range(n):
        if lungs and 15 <= k <= 45:
            # radius grows from the base (k=15) to mid-chest and shrinks to the apex (k=45)
            rad = 3 + 12 * np.sin(np.pi * (k - 15) / 30)
            for cc in (28, 68):
                lung = ((r - 48) ** 2 + (c - cc) ** 2) <= rad**2
                hu[k, lung] = -850 + 40 * rng.standard_normal(lung.sum())
        if lungs and k > 40:
            hu[k, ((r - 35) ** 2 + (c - 48) ** 2) <= 9] = -1000.0  # trachea, 2.8 cm²
        if 2 <= k <= 12:
            hu[k, ((r - 50) ** 2 + (c - 48) ** 2) <= 100] = -1000.0  # bowel gas, 9 cm²
    z = np.arange(n, dtype=np.float64) * 5.0
    return CTVolume(hu=hu, z_mm=z, pixel_spacing_mm=(3.0, 3.0), source="phantom")


def test_phantom_lungs_ignore_trachea_and_bowel_gas() -> None:
    volume = _phantom()
    profile = lung_profile(volume)
    lm = lung_landmarks_from_ct(volume)
    assert lm["lung_bottom"] == pytest.approx(volume.z_mm[15], abs=5.0)
    assert lm["lung_top"] == pytest.approx(volume.z_mm[45], abs=5.0)
    assert profile.area_cm2[:12].max() == 0  # bowel gas is not parenchyma
    assert profile.area_cm2[47:].max() == 0  # trachea above the apex is dropped
    assert profile.occupied.all()


def test_phantom_without_lungs_has_no_lung_landmarks() -> None:
    assert lung_landmarks_from_ct(_phantom(lungs=False)) == {}


def test_lungs_cut_by_the_scan_are_not_reported() -> None:
    volume = _phantom()
    top_cut = CTVolume(hu=volume.hu[:35], z_mm=volume.z_mm[:35], pixel_spacing_mm=(3.0, 3.0),
                       source="cut")
    assert set(lung_landmarks_from_ct(top_cut)) == {"lung_bottom"}


# --- real volumes ---------------------------------------------------------------------------


def _ct(data: Path, name: str) -> Path:
    return data / "ct" / f"{name}.nii.gz"


def _label(data: Path, name: str) -> Path:
    return data / "labels" / f"{name}.nii.gz"


def test_onkodicom_image_lungs_agree_with_label_lungs(shared_data: Path) -> None:
    volume = read_nifti(_ct(shared_data, "onkodicom_rt_thorax"))
    labels, names = read_label_map(_label(shared_data, "onkodicom_rt_thorax"))
    from_labels = landmarks_from_labels(labels, names, volume.z_mm)
    from_image = lung_landmarks_from_ct(volume)
    spacing = float(np.median(np.diff(volume.z_mm)))
    for name in ("lung_bottom", "lung_top"):
        assert abs(from_image[name] - from_labels[name]) <= 2 * spacing, name


def test_label_map_is_aligned_with_the_ct(shared_data: Path) -> None:
    volume = read_nifti(_ct(shared_data, "onkodicom_rt_thorax"))
    labels, names = read_label_map(_label(shared_data, "onkodicom_rt_thorax"))
    value = {v: k for k, v in names.items()}
    lung = np.isin(labels, [value["lung_left"], value["lung_right"]])
    assert labels.shape == volume.hu.shape
    assert np.mean(volume.hu[lung] < -400) > 0.9
    assert np.median(volume.hu[labels == value["liver"]]) > 0


def test_onkodicom_thorax_order(shared_data: Path) -> None:
    lm = volume_landmarks(_ct(shared_data, "onkodicom_rt_thorax"),
                          _label(shared_data, "onkodicom_rt_thorax"))
    assert lm["liver_bottom"] < lm["lung_bottom"] < lm["liver_top"] < lm["lung_top"]
    assert lm["heart_bottom"] < lm["heart_top"] < lm["lung_top"]
    assert list(lm) == [n for n in LANDMARK_NAMES if n in lm]


@pytest.mark.parametrize("name", ["openkbp_pt_13", "openkbp_pt_60", "openkbp_pt_100"])
def test_head_neck_order(shared_data: Path, name: str) -> None:
    lm = volume_landmarks(_ct(shared_data, name), _label(shared_data, name))
    assert lm["lung_top"] < lm["larynx_top"] < lm["brainstem_top"]
    assert lm["larynx_bottom"] < lm["larynx_top"]
    assert lm["mandible_bottom"] < lm["parotid_top"]
    assert lm["mandible_bottom"] < lm["brainstem_top"]
    assert lm["lung_top"] < lm["brainstem_bottom"] < lm["brainstem_top"]
    # the lung apex lies 10-16 cm below the foramen magnum in these patients
    assert 80 < lm["brainstem_bottom"] - lm["lung_top"] < 180
    assert "lung_bottom" not in lm  # head-neck scans stop above the diaphragm


def test_padded_openkbp_slices_are_not_scan_extent(shared_data: Path) -> None:
    volume = read_nifti(_ct(shared_data, "openkbp_pt_2"))
    profile = lung_profile(volume)
    assert not profile.occupied[:17].any() and profile.occupied[17:].all()
    # the lungs reach the lowest slice with image content: no lung_bottom
    assert set(lung_landmarks_from_ct(volume)) == {"lung_top"}


def test_pelvis_order_and_no_lungs(shared_data: Path) -> None:
    lm = volume_landmarks(_ct(shared_data, "pelvicref_002"), _label(shared_data, "pelvicref_002"))
    # the bladder dome rises above the femoral heads; the prostate sits below the dome
    assert lm["femoral_head_top"] < lm["bladder_top"]
    assert lm["prostate_centre"] < lm["bladder_top"]
    assert "lung_bottom" not in lm and "lung_top" not in lm


@pytest.mark.parametrize("name", ["ibsi_sts_013", "ibsi_sts_001", "ibsi_sts_007"])
def test_limb_and_pelvis_crops_have_no_lungs(shared_data: Path, name: str) -> None:
    assert volume_landmarks(_ct(shared_data, name)) == {}


def test_chest_ct_has_both_lung_ends(shared_data: Path) -> None:
    lm = volume_landmarks(_ct(shared_data, "lidc_0003"))
    assert set(lm) == {"lung_bottom", "lung_top"}
    assert 200 < lm["lung_top"] - lm["lung_bottom"] < 350


def test_label_lungs_take_precedence(shared_data: Path) -> None:
    volume = read_nifti(_ct(shared_data, "onkodicom_rt_thorax"))
    labels, names = read_label_map(_label(shared_data, "onkodicom_rt_thorax"))
    value = {v: k for k, v in names.items()}
    labels = labels.copy()
    # pretend the contoured lungs end 3 slices lower than the image shows
    top = int(np.flatnonzero(np.isin(labels, [value["lung_left"], value["lung_right"]])
                             .any(axis=(1, 2)))[-1])
    labels[top - 2 : top + 1][np.isin(labels[top - 2 : top + 1],
                                      [value["lung_left"], value["lung_right"]])] = 0
    lm = landmarks_for_volume(volume, labels, names)
    assert lm["lung_top"] == volume.z_mm[top - 3]
