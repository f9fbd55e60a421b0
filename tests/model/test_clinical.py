"""BodyPartExamined by clinical regions: coverage along z decides, regions are runs."""

from __future__ import annotations

import numpy as np

from model.interpretation.bodypart import landmark_table
from model.interpretation.clinical import clinical_regions, clinical_score_ranges

TABLE = landmark_table({"lung_bottom": 44.1, "lung_top": 75.4, "brainstem_bottom": 90.6})


def _term(lo: float, hi: float, spacing: float = 2.5, slope: float = 0.115) -> str | None:
    z = np.arange(0.0, (hi - lo) / slope, spacing)
    result = clinical_regions(z, lo + slope * z, TABLE)
    return None if result.choice is None else result.choice.term.term


def test_boundaries_follow_the_model_landmarks_and_the_published_pelvis() -> None:
    ranges = clinical_score_ranges(TABLE)
    assert ranges["neck"] == (75.4, 90.6)
    assert ranges["head"][0] == 90.6 and ranges["chest"] == (44.1, 75.4)
    assert ranges["abdomen"][0] == 28.8  # published pelvis_end: the iliac crests


def test_neck_from_mandible_to_thoracic_inlet_is_neck_not_head() -> None:
    assert _term(74.0, 87.0) == "NECK"


def test_head_neck_chest_terms() -> None:
    assert _term(91.0, 108.0) == "HEAD"
    assert _term(80.0, 105.0) == "HEADNECK"
    assert _term(60.0, 88.0) == "NECKCHEST"
    assert _term(30.0, 70.0) == "CHESTABDOMEN"
    assert _term(5.0, 40.0) == "ABDOMENPELVIS"
    assert _term(-30.0, 20.0) == "PELVISLOWEXTREMT"  # 260 mm of legs below the pelvis
    assert _term(-1.0, 28.0) == "PELVIS"  # 9 mm below the pelvis start: overshoot


def test_a_chest_ct_reaching_a_little_into_neck_and_abdomen_is_chest() -> None:
    # 35 mm above the apices and 45 mm below the bases: routine chest coverage
    assert _term(44.1 - 45 * 0.115, 75.4 + 35 * 0.115) == "CHEST"


def test_regions_are_contiguous_runs_split_by_removed_slices() -> None:
    z = np.arange(100) * 3.0
    s = 44.5 + 0.1 * z
    s[40:45] = np.nan
    s[-3:] = 70.0  # odd top slices falling back into the chest range stay chest
    result = clinical_regions(z, s, TABLE)
    chest = result.regions["chest"]
    assert [(r.first, r.last) for r in chest.runs] == [(0, 39), (45, 99)]
    assert chest.counted and result.choice is not None
    assert result.choice.term.term == "CHEST"
    for run in chest.runs:
        assert run.n_slices == run.last - run.first + 1
