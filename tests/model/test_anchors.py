"""Anchors for training: image landmarks found on real CT, cached, turned into raw targets."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from model.evaluation.bone_landmarks import bone_landmarks
from model.evaluation.lung_landmarks import lung_landmarks_from_ct
from model.interpretation.bodypart import PUBLISHED_REFERENCE
from model.reading.nifti import read_nifti
from model.training.anchors import (
    ABDOMEN_SPAN,
    ANCHOR_LANDMARKS,
    NO_ANCHORS,
    PELVIC_SPAN,
    Anchors,
    abdomen_length_mm,
    anchor_targets,
    find_anchors,
    with_abdomen_extension,
    with_scale_anchors,
)
from model.training.dataset import entries_from_paths, load_train_volumes


def test_pelvis_scan_anchors_on_its_bones(shared_data: Path) -> None:
    volume = read_nifti(shared_data / "ct" / "pelvicref_003.nii.gz")
    anchors = find_anchors(volume)
    bones = bone_landmarks(volume)
    assert set(bones) == {"pelvis_bottom", "femoral_head_top", "iliac_crest_top"}
    # the scan reaches 150 mm below the pelvis bottom: three thigh anchors under it
    assert anchors.names == ("thigh_150mm", "thigh_100mm", "thigh_50mm", "pelvis_bottom",
                             "femoral_head_top", "iliac_crest_top")
    assert anchors.shows_torso
    for name, z, k, score in zip(anchors.names, anchors.z_mm, anchors.slice_index,
                                 anchors.score, strict=True):
        assert abs(volume.z_mm[k] - z) <= 1.5  # nearest of 3 mm slices
        if name in bones:
            assert z == bones[name] and score == PUBLISHED_REFERENCE[ANCHOR_LANDMARKS[name]]
    # thighs continue the volume's own pelvis scale (0 at the bottom, 13.6 at the heads)
    per_mm = 13.6 / (bones["femoral_head_top"] - bones["pelvis_bottom"])
    assert anchors.score[1] == pytest.approx(-100.0 * per_mm)
    assert np.all(np.diff(anchors.score) > 0)


def test_pelvic_scale_anchors_ramp_between_the_bone_landmarks(shared_data: Path) -> None:
    volume = read_nifti(shared_data / "ct" / "pelvicref_003.nii.gz")
    anchors = find_anchors(volume)
    dense = with_scale_anchors(anchors, volume.z_mm, 20.0, PELVIC_SPAN)
    bones = bone_landmarks(volume)
    bottom, crest = bones["pelvis_bottom"], bones["iliac_crest_top"]
    added = [n for n in dense.names if n not in anchors.names]
    assert dense.landmark_count == anchors.landmark_count == len(anchors.names)
    # every 20 mm from each landmark up to the next, none within 10 mm below that one
    ends = sorted(bones.values())
    assert len(added) == sum(int((z1 - z0 - 10.0) // 20.0) for z0, z1 in pairwise(ends))
    assert set(anchors.names) <= set(dense.names)
    assert np.all(np.diff(dense.z_mm) > 0) and np.all(np.diff(dense.score) > 0)
    for name, z, k, score in zip(dense.names, dense.z_mm, dense.slice_index, dense.score,
                                 strict=True):
        assert abs(volume.z_mm[k] - z) <= 1.5
        if name in added:  # linear between the two landmarks around it
            expected = np.interp(z, [bottom, bones["femoral_head_top"], crest],
                                 [0.0, PUBLISHED_REFERENCE["femur_end"],
                                  PUBLISHED_REFERENCE["pelvis_end"]])
            assert score == pytest.approx(expected)


def test_abdominal_scale_anchors_ramp_from_the_iliac_crest_to_the_lung_bottom(
        shared_data: Path) -> None:
    # the one real volume whose scan shows both ends of the abdomen
    volume = read_nifti(shared_data / "ct" / "acrin_flt_breast_001_lower.nii.gz")
    anchors = find_anchors(volume)
    crest, lungs = anchors.z_of("iliac_crest_top"), anchors.z_of("lung_bottom")
    assert crest is not None and lungs is not None and 150.0 < lungs - crest < 300.0
    dense = with_scale_anchors(anchors, volume.z_mm, 20.0, ABDOMEN_SPAN)
    added = [i for i, n in enumerate(dense.names) if n not in anchors.names]
    assert len(added) == int((lungs - crest - 10.0) // 20.0)
    assert dense.landmark_count == anchors.landmark_count
    assert all(crest < dense.z_mm[i] < lungs for i in added)
    expected = np.interp(dense.z_mm[added], [crest, lungs],
                         [PUBLISHED_REFERENCE["pelvis_end"], PUBLISHED_REFERENCE["lung_start"]])
    assert dense.score[added] == pytest.approx(expected)
    # the pelvic span of the same volume (crest and femoral heads) is ramped on its own
    both = with_scale_anchors(dense, volume.z_mm, 20.0, PELVIC_SPAN)
    assert len(both.names) > len(dense.names) and np.all(np.diff(both.score) > 0)


def test_abdomen_extension_continues_one_end_of_the_abdomen_into_it(shared_data: Path) -> None:
    both, chest, pelvis = (read_nifti(shared_data / "ct" / f"{n}.nii.gz") for n in
                           ("acrin_flt_breast_001_lower", "crlm_ct_1004", "pelvicref_003"))
    found = [find_anchors(v) for v in (both, chest, pelvis)]
    length = abdomen_length_mm(found)
    crest, lungs = found[0].z_of("iliac_crest_top"), found[0].z_of("lung_bottom")
    assert crest is not None and lungs is not None and length == lungs - crest
    per_mm = (PUBLISHED_REFERENCE["lung_start"] - PUBLISHED_REFERENCE["pelvis_end"]) / 170.0
    # a volume that shows both ends has its own scale (ABDOMEN_SPAN): left alone
    assert with_abdomen_extension(found[0], both.z_mm, 20.0, 120.0, 170.0) is found[0]
    for volume, anchors, end, sign in ((chest, found[1], "lung_bottom", -1.0),
                                       (pelvis, found[2], "iliac_crest_top", 1.0)):
        start = anchors.z_of(end)
        assert start is not None
        longer = with_abdomen_extension(anchors, volume.z_mm, 20.0, 120.0, 170.0)
        added = [i for i, n in enumerate(longer.names) if n not in anchors.names]
        assert added and longer.landmark_count == anchors.landmark_count
        distance = sign * (longer.z_mm[added] - start)
        assert set(np.round(distance)) <= {20.0, 40.0, 60.0, 80.0, 100.0, 120.0}
        assert np.all(longer.z_mm[added] >= volume.z_mm.min())
        assert np.all(longer.z_mm[added] <= volume.z_mm.max())  # inside the scan
        expected = PUBLISHED_REFERENCE[ANCHOR_LANDMARKS[end]] + sign * distance * per_mm
        assert longer.score[added] == pytest.approx(expected)
        assert np.all(np.diff(longer.score) > 0)
    with pytest.raises(ValueError, match="positive"):
        with_abdomen_extension(found[1], chest.z_mm, 20.0, 0.0, 170.0)
    assert abdomen_length_mm([found[1], found[2]]) is None


def test_pelvic_scale_leaves_a_volume_without_the_pelvis_alone(shared_data: Path) -> None:
    volume = read_nifti(shared_data / "ct" / "lidc_0003.nii.gz")
    anchors = find_anchors(volume)
    assert with_scale_anchors(anchors, volume.z_mm, 20.0, PELVIC_SPAN) is anchors


def test_pelvic_scale_needs_a_positive_step() -> None:
    with pytest.raises(ValueError, match="positive"):
        with_scale_anchors(NO_ANCHORS, np.zeros(0), 0.0, PELVIC_SPAN)


def test_chest_scan_anchors_on_its_lung_ends(shared_data: Path) -> None:
    volume = read_nifti(shared_data / "ct" / "lidc_0003.nii.gz")
    anchors = find_anchors(volume)
    assert anchors.names == ("lung_bottom", "lung_top")
    assert list(anchors.z_mm) == [lung_landmarks_from_ct(volume)[n] for n in anchors.names]


def test_head_neck_scan_anchors_only_at_the_lung_top(shared_data: Path) -> None:
    anchors = find_anchors(read_nifti(shared_data / "ct" / "openkbp_pt_2.nii.gz"))
    assert anchors.names == ("lung_top",) and not anchors.shows_torso


def test_anchors_survive_the_training_cache(shared_data: Path, tmp_path: Path) -> None:
    entries = entries_from_paths([shared_data / "ct" / "pelvicref_003.nii.gz"])
    fresh, = load_train_volumes(entries, tmp_path, progress=False)
    cached, = load_train_volumes(entries, tmp_path, progress=False)
    assert cached.anchors.names == fresh.anchors.names
    np.testing.assert_array_equal(cached.anchors.slice_index, fresh.anchors.slice_index)
    np.testing.assert_array_equal(cached.anchors.z_mm, fresh.anchors.z_mm)
    np.testing.assert_array_equal(cached.anchors.score, fresh.anchors.score)


def test_targets_are_published_scores_in_raw_units() -> None:
    anchors = Anchors(("femoral_head_top", "lung_top"), np.array([0.0, 300.0]),
                      np.array([0, 100]), np.array([13.6, 75.4]))
    t = anchor_targets(anchors, scale=12.0, offset=60.0)
    assert t.tolist() == pytest.approx([(13.6 - 60.0) / 12.0, (75.4 - 60.0) / 12.0])
    assert set(ANCHOR_LANDMARKS.values()) <= PUBLISHED_REFERENCE.keys()
