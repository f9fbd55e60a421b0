"""Regions, thesis tag and DICOM BodyPartExamined term (thesis §4.3.1, table 4.6, fig. 4.9)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from model.interpretation.bodypart import (
    CS_PATTERN,
    REGIONS,
    body_part_examined_dict,
    body_part_examined_tag,
    dicom_term_for_regions,
    dicom_terms,
    landmark_table,
    region_score_ranges,
    region_terms,
)

TABLE = landmark_table()
#: Codes from the field notes (PS3.16 CID 4031) that the node may write.
FIELD_NOTES_CODES = {
    "HEAD": "69536005", "NECK": "45048000", "HEADNECK": "774007", "CHEST": "816094009",
    "ABDOMEN": "818981001", "PELVIS": "816092008", "ABDOMENPELVIS": "818982008",
    "CHESTABDOMEN": "416550000", "CHESTABDPELVIS": "416775004", "NECKCHEST": "417437006",
    "NECKCHESTABDOMEN": "416152001", "NECKCHESTABDPELV": "416319003",
    "WHOLEBODY": "38266002", "LOWERLIMB": "61685007", "PELVISLOWEXTREMT": "1231522001",
}


def _ramp(lo: float, hi: float, length_mm: float, spacing: float = 2.5
          ) -> tuple[np.ndarray, np.ndarray]:
    z = np.arange(0.0, length_mm, spacing)
    return z, lo + (hi - lo) * z / z[-1]


# --- landmark table -----------------------------------------------------------------------


def test_table_merges_model_over_published_and_interpolates_levels() -> None:
    table = landmark_table({"lung_bottom": 44.1, "L5": 27.0, "mandible_bottom": 83.9})
    assert table["Th12"].score == 45.0 and table["Th12"].source == "published"
    assert table["L5"].score == 27.0 and table["L5"].source == "model"
    assert table["mandible_bottom"].source == "model"
    # L4 halfway between the model's L5 (27.0) and the published L3 (33.8)
    assert table["L4"].score == pytest.approx(30.4) and table["L4"].source == "interpolated"
    # Th3 is 5 of 7 levels from Th8 (56.9) to Th1 (75.8); C2 5 of 6 from C7 (77.9) to C1
    assert TABLE["Th3"].score == pytest.approx(56.9 + 5 / 7 * 18.9)
    assert TABLE["C2"].score == pytest.approx(77.9 + 5 / 6 * 11.3)
    scores = [v.score for v in table.values()]
    assert scores == sorted(scores)


def test_region_boundaries_follow_table_4_6_and_can_be_overridden() -> None:
    ranges = region_score_ranges(TABLE)
    assert ranges["legs"] == (-np.inf, 0.0)
    assert ranges["pelvis"] == (0.0, 28.8)
    assert ranges["abdomen"] == (25.5, 56.9)
    assert ranges["chest"] == (45.0, 75.8)
    assert ranges["neck"][0] == pytest.approx(TABLE["Th3"].score)
    assert ranges["head"][0] == pytest.approx(TABLE["C5"].score)
    assert ranges["head"][1] == np.inf
    custom = region_score_ranges(TABLE, {"chest": ("lung_start", "lung_end")})
    assert custom["chest"] == (44.1, 75.4) and custom["pelvis"] == ranges["pelvis"]
    with pytest.raises(KeyError, match="unknown landmark"):
        region_score_ranges(TABLE, {"chest": ("T7", "Th1")})
    with pytest.raises(KeyError, match="unknown region"):
        region_score_ranges(TABLE, {"arm": ("Th1", "C7")})


def test_body_part_examined_dict_has_indices_and_mm() -> None:
    z, s = _ramp(-20.0, 120.0, 1400.0, spacing=10.0)
    s[3] = np.nan
    d = body_part_examined_dict(z + 100.0, s, TABLE)
    assert set(d) == set(REGIONS)
    legs = d["legs"]
    assert legs is not None and 3 not in legs.indices
    assert np.all(s[list(legs.indices)] < 0) and legs.first_slice == 0
    head = d["head"]
    assert head is not None and head.last_slice == len(z) - 1
    assert head.z_max_mm == z[-1] + 100.0
    only_chest = body_part_examined_dict(*_ramp(50.0, 60.0, 100.0), TABLE)
    assert only_chest["head"] is None and only_chest["chest"] is not None
    assert only_chest["chest"].to_dict()["score_range"] == [45.0, 75.8]


# --- thesis tag ---------------------------------------------------------------------------


@pytest.mark.parametrize(("lo", "hi", "length", "tag"), [
    (40.0, 80.0, 300.0, "CHEST"),
    (-5.0, 80.0, 700.0, "CHEST-ABDOMEN-PELVIS"),
    (-5.0, 60.0, 500.0, "ABDOMEN-PELVIS"),
    (65.0, 105.0, 350.0, "HEAD-NECK"),
    (40.0, 87.0, 400.0, "NECK-CHEST"),  # C3 inside, C2 and C1 not: no HEAD
    (-10.0, 108.0, 1700.0, "HEAD-NECK-CHEST-ABDOMEN-PELVIS"),
    (55.0, 62.0, 80.0, "CHEST"),  # under 10 cm: per-slice majority
    (90.0, 96.0, 60.0, "HEAD"),
    (-40.0, -5.0, 300.0, "NONE"),  # legs only: no tag region
])
def test_tag_decision_tree(lo: float, hi: float, length: float, tag: str) -> None:
    _z, s = _ramp(lo, hi, length)
    assert body_part_examined_tag(s, length, TABLE).tag == tag


def test_tag_none_for_invalid_spacing_or_no_scores() -> None:
    _z, s = _ramp(40.0, 80.0, 300.0)
    result = body_part_examined_tag(s, 300.0, TABLE, valid_z_spacing=False)
    assert (result.tag, result.method) == ("NONE", "invalid_z_spacing")
    assert body_part_examined_tag(np.full(5, np.nan), 300.0, TABLE).method == "no_scores"


def test_short_volume_rule_uses_slice_majority() -> None:
    _z, s = _ramp(50.0, 56.0, 90.0)  # mostly abdomen (< Th9 53.9) in a 9 cm volume
    result = body_part_examined_tag(s, 90.0, TABLE)
    assert (result.tag, result.method) == ("ABDOMEN", "slice_majority")


# --- DICOM term ---------------------------------------------------------------------------


def test_every_term_in_the_table_is_a_valid_cs_value_with_a_snomed_code() -> None:
    for term, entry in dicom_terms().items():
        assert re.fullmatch(CS_PATTERN, term), term
        assert entry.snomed_code.isdigit() and entry.scheme == "SCT"
    for term, code in FIELD_NOTES_CODES.items():
        assert dicom_terms()[term].snomed_code == code


def test_every_contiguous_region_run_maps_to_a_table_term() -> None:
    runs = [REGIONS[i:j] for i in range(len(REGIONS)) for j in range(i + 1, len(REGIONS) + 1)]
    assert set(region_terms()) == set(runs)
    for run in runs:
        choice = dicom_term_for_regions(run)
        assert re.fullmatch(CS_PATTERN, choice.term.term)
        assert choice.term.term in dicom_terms()


@pytest.mark.parametrize(("regions", "term"), [
    (("legs",), "LOWERLIMB"),
    (("legs", "pelvis"), "PELVISLOWEXTREMT"),
    (("pelvis", "abdomen"), "ABDOMENPELVIS"),
    (("legs", "pelvis", "abdomen"), "ABDOMENPELVIS"),
    (("pelvis", "abdomen", "chest"), "CHESTABDPELVIS"),
    (("chest",), "CHEST"),
    (("neck", "chest"), "NECKCHEST"),
    (("head", "neck"), "HEADNECK"),
    (("head", "neck", "chest"), "HEADNECK"),
    (("head", "neck", "chest", "abdomen"), "NECKCHESTABDOMEN"),
    (("neck", "chest", "abdomen", "pelvis"), "NECKCHESTABDPELV"),
    (("head", "neck", "chest", "abdomen", "pelvis"), "WHOLEBODY"),
    (REGIONS, "WHOLEBODY"),
])
def test_term_mapping(regions: tuple[str, ...], term: str) -> None:
    assert dicom_term_for_regions(regions).term.term == term


def test_term_never_names_an_absent_region() -> None:
    for run, (term, note) in region_terms().items():
        named = dicom_terms()[term].regions
        assert named and set(named) <= set(run), (run, term)
        # names all of the run, or explains what it leaves out
        assert set(named) == set(run) or note, (run, term)


def test_gaps_are_filled_and_unknown_regions_refused() -> None:
    choice = dicom_term_for_regions(["head", "chest"])
    assert choice.term.term == "HEADNECK" and "gap filled" in choice.note
    with pytest.raises(ValueError, match="need regions"):
        dicom_term_for_regions(["arm"])
    with pytest.raises(ValueError, match="need regions"):
        dicom_term_for_regions([])


