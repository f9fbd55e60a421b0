"""The node-facing records of model.api: codes from the one table, flags, headers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom
import pytest

from model.api import analyze_series, private_coding_scheme
from model.interpretation.analysis import BodyPartResult, analyze
from model.interpretation.bodypart import REGIONS, dicom_terms, region_terms
from model.interpretation.records import region_codes, volume_record
from model.interpretation.sanity import Anomaly, AnomalyCode, Severity
from model.reading.volume import CTVolume
from model.scoring.inference import BodyPartRegressor
from tests.dicom_factory import air_slices, write_ct_series


@pytest.fixture(scope="module")
def result(chest_abdomen_ct: CTVolume, regressor: BodyPartRegressor) -> BodyPartResult:
    return analyze(chest_abdomen_ct, regressor)


def uids(n: int) -> tuple[str, ...]:
    return tuple(f"1.2.3.{i}" for i in range(n))


def test_region_codes_are_the_cid_4031_terms_of_single_regions() -> None:
    codes = region_codes()
    assert list(codes) == list(REGIONS)
    for region, code in codes.items():
        term = dicom_terms()[region_terms()[(region,)][0]]
        assert (code.value, code.scheme, code.meaning) == (
            term.snomed_code, term.scheme, term.snomed_meaning)


def test_every_anomaly_code_has_one_flag_concept(result: BodyPartResult) -> None:
    record = volume_record(result, uids(result.n_slices))
    assert [f.name for f in record.flags] == [c.value for c in AnomalyCode]
    assert len({f.concept.value for f in record.flags}) == len(record.flags)
    assert {f.concept.scheme for f in record.flags} == {private_coding_scheme()}


def test_record_of_a_chest_abdomen_volume(result: BodyPartResult) -> None:
    record = volume_record(result, uids(result.n_slices))
    assert record.body_part_examined == result.body_part_examined is not None
    assert record.body_part_code is not None and result.snomed is not None
    assert record.body_part_code.value == result.snomed.snomed_code
    names = [r.name for r in record.regions]
    assert {"chest", "abdomen"} <= set(names)
    assert names == [r for r in REGIONS if r in names]  # feet → head
    assert set(names) == set(result.term_regions)  # the corrected term's regions only
    for region in record.regions:
        lo, hi = result.clinical_regions[region.name].score_range
        indices = region.slice_indices
        assert indices == tuple(range(indices[0], indices[-1] + 1))  # one contiguous run
        # no slice of the run lies outside the region
        assert all(s is not None and lo <= s < hi
                   for s in (result.cleaned_scores[i] for i in indices))
        assert region.min_score is not None and region.max_score is not None
        assert region.min_score <= region.max_score
        assert (region.z_min_mm, region.z_max_mm) == (result.patient_z_mm[indices[0]],
                                                      result.patient_z_mm[indices[-1]])
    assert record.anomalies == tuple(sorted({a.code.value for a in result.anomalies}))
    assert record.document == result.to_json_dict()
    assert {f.state for f in record.flags} == {"no"}  # a clean series: every check ran


def test_flags_say_yes_no_and_undetermined(result: BodyPartResult) -> None:
    anomalies = (Anomaly(AnomalyCode.DISCONTINUITY, Severity.WARNING, "jump", slices=(3, 4)),
                 Anomaly(AnomalyCode.INVALID_Z_SPACING, Severity.ERROR, "spacing"))
    changed = dataclasses.replace(result, anomalies=anomalies, reverse_z_ordering=None,
                                  valid_z_spacing=False)
    states = {f.name: f.state for f in volume_record(changed, uids(result.n_slices)).flags}
    assert states == {"no_body": "no", "not_ct_like": "no", "out_of_scope": "no",
                      "reversed_z_ordering": "undetermined", "invalid_z_spacing": "yes",
                      "discontinuity": "yes", "too_few_slices": "no"}
    # An undecided check that nonetheless raised its anomaly says yes.
    both = dataclasses.replace(changed, valid_z_spacing=None)
    states = {f.name: f.state for f in volume_record(both, uids(result.n_slices)).flags}
    assert states["invalid_z_spacing"] == "yes"


def test_a_uid_per_slice_is_required(result: BodyPartResult) -> None:
    with pytest.raises(ValueError, match="SOP Instance UIDs"):
        volume_record(result, uids(result.n_slices - 1))


def test_analysis_keeps_every_header_without_pixels(chest_abdomen_ct: CTVolume, tmp_path: Path,
                                                   regressor: BodyPartRegressor) -> None:
    paths = write_ct_series(air_slices(chest_abdomen_ct, 4), tmp_path / "ct")
    (tmp_path / "junk.dcm").write_bytes(b"not DICOM")
    analysis = analyze_series([*paths, tmp_path / "junk.dcm"], regressor)
    assert len(analysis.read_errors) == 1
    assert len(analysis.headers) == len(paths)
    for path, header in zip(paths, analysis.headers, strict=True):
        original = pydicom.dcmread(path, stop_before_pixels=True)
        assert "PixelData" not in header
        assert header.SOPInstanceUID == original.SOPInstanceUID
        assert header.PatientName == original.PatientName
        assert header.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert analysis.main_volume.slice_sop_instance_uids == tuple(
        h.SOPInstanceUID for h in sorted(analysis.headers, key=lambda h: float(
            h.ImagePositionPatient[2])))
