"""Synthetic whole-body CT from the ICRP phantoms: plausible HU, anatomy feet → head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from model.evaluation.bone_landmarks import bone_landmarks
from model.reading.nifti import read_nifti
from model.reading.volume import CTVolume
from model.training.phantom import GROUP, organ_hu_table, pelvic_landmarks, synthetic_volumes


def test_organ_hu_table_follows_density(shared_data: Path) -> None:
    table = organ_hu_table(shared_data / "phantoms" / "icrp_am_organs.csv")
    names = json.loads((shared_data / "phantoms" / "icrp_am.json").read_text())
    by_name = {v.lower(): float(table[int(k)]) for k, v in names.items()}
    lung = by_name["lung, left, tissue"]
    assert table[0] == -999  # air at 0.001 g/cm³
    assert -750 < lung < -500
    assert any(hu > 600 for n, hu in by_name.items() if "cortical" in n)
    assert any(-120 < hu < -80 for n, hu in by_name.items() if "adipose" in n)


def test_variants_differ_and_keep_anatomy_order(shared_data: Path) -> None:
    vols = synthetic_volumes(shared_data / "phantoms", variants=2, seed=3)
    assert [v.group for v in vols] == [GROUP] * 4
    a, b = vols[0], vols[1]
    assert a.slices.shape == b.slices.shape and not np.array_equal(a.slices, b.slices)
    assert a.z_mm[-1] != b.z_mm[-1]  # each variant has its own body height
    # Lungs (dark, −600 HU ≈ −0.52) appear only in the upper part of the body.
    lungish = ((a.slices > -0.7) & (a.slices < -0.35)).sum(axis=(1, 2))
    peak = int(np.argmax(lungish)) / len(lungish)
    assert 0.6 < peak < 0.9
    again = synthetic_volumes(shared_data / "phantoms", variants=2, seed=3)
    assert np.array_equal(again[0].slices, a.slices)


def test_variants_are_anchored_on_their_lungs_and_pelvic_bones(shared_data: Path) -> None:
    # seed 0's second male variant had its pelvis bottom found at the feet, the first female
    # one at mid-thigh (HU rules before the labels named the pelvic bones)
    vols = synthetic_volumes(shared_data / "phantoms", variants=2, seed=0)
    for v in vols:
        z = dict(zip(v.anchors.names, v.anchors.z_mm, strict=True))
        assert {"pelvis_bottom", "femoral_head_top", "iliac_crest_top", "lung_bottom",
                "lung_top"} <= set(z)
        # the distances tests/model/test_bone_landmarks.py accepts on real pelvic CT
        assert 60.0 <= z["femoral_head_top"] - z["pelvis_bottom"] <= 130.0, v.name
        assert 80.0 <= z["iliac_crest_top"] - z["femoral_head_top"] <= 180.0, v.name
        assert z["iliac_crest_top"] < z["lung_bottom"] < z["lung_top"]
        assert np.all(np.diff(v.anchors.z_mm) > 0)
        assert np.all(v.z_mm[v.anchors.slice_index] == np.sort(v.z_mm[v.anchors.slice_index]))


@pytest.mark.parametrize("name", ["icrp_am", "icrp_af"])
def test_bone_rules_find_the_pelvis_of_a_whole_body_scan(shared_data: Path, name: str) -> None:
    # femora run down to the feet and the knees touch: the pelvis bottom must stay pelvic
    # (the femoral head top is not checked: the male phantom's blurred iliac body is as
    # round as a femoral head, so the rule puts it 80 mm high; training takes the labels')
    ids = read_nifti(shared_data / "phantoms" / f"{name}.nii.gz")
    organs = shared_data / "phantoms" / f"{name}_organs.csv"
    organ_ids = ids.hu.astype(np.uint8)
    hu = ndimage.gaussian_filter(organ_hu_table(organs)[organ_ids], sigma=(0, 0.8, 0.8))
    labels = pelvic_landmarks(organ_ids, organs, ids.z_mm, ids.pixel_spacing_mm)
    found = bone_landmarks(CTVolume(hu, ids.z_mm, ids.pixel_spacing_mm, name))
    slice_mm = float(ids.z_mm[1] - ids.z_mm[0])
    for landmark in ("pelvis_bottom", "iliac_crest_top"):
        assert abs(found[landmark] - labels[landmark]) <= 2 * slice_mm, landmark
