"""The node's Structured Report, built from an analysis of DICOM written from real CT."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_node.config import SRConfig
from dicom_node.sr import REGION_FOUND, build_sr
from model.api import FlagRecord, FlagState, SeriesAnalysis, analyze_series
from model.reading.volume import CTVolume
from tests.dicom_factory import air_slices, write_ct_series, write_enhanced_ct
from tests.needs import require_tool

SETTINGS = SRConfig(series_number=9901, series_description="Body part regression",
                    manufacturer="bpr-node", institution_name="Test Hospital")


@dataclasses.dataclass(frozen=True)
class Source:
    """A written series and the analysis of its files."""

    paths: list[Path]
    analysis: SeriesAnalysis

    @property
    def headers(self) -> list[pydicom.Dataset]:
        return list(self.analysis.headers)


def analyzed(paths: Sequence[Path]) -> Source:
    return Source(list(paths), analyze_series(paths))


def with_headers(analysis: SeriesAnalysis, headers: Sequence[pydicom.Dataset]
                 ) -> SeriesAnalysis:
    return dataclasses.replace(analysis, headers=tuple(headers))


@pytest.fixture(scope="module")
def source(chest_abdomen_ct: CTVolume, tmp_path_factory: pytest.TempPathFactory) -> Source:
    return analyzed(write_ct_series(chest_abdomen_ct, tmp_path_factory.mktemp("ct")))


@pytest.fixture(scope="module")
def empty_source(chest_abdomen_ct: CTVolume, tmp_path_factory: pytest.TempPathFactory
                 ) -> Source:
    """Ten slices of air: the model finds no body and no region."""
    air = air_slices(chest_abdomen_ct, 10)
    return analyzed(write_ct_series(air, tmp_path_factory.mktemp("air")))


def written(sr: pydicom.Dataset, path: Path) -> hd.sr.Comprehensive3DSR:
    """Save ``sr`` as a DICOM file, check it with dciodvfy and read it back."""
    pydicom.dcmwrite(path, sr, enforce_file_format=True)
    dciodvfy = require_tool("dciodvfy")
    run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    for line in dict.fromkeys(x for x in lines if x.startswith("Warning")):
        print(f"dciodvfy: {line}")
    errors = [x for x in lines if x.startswith("Error")]
    assert not errors, "\n".join(errors)
    read = hd.sr.srread(path)
    assert isinstance(read, hd.sr.Comprehensive3DSR)
    return read


def measurement_groups(sr: pydicom.Dataset) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    assert isinstance(report, hd.sr.MeasurementReport)
    return report.get_image_measurement_groups()


def groups(sr: pydicom.Dataset) -> dict[str, hd.sr.MeasurementsAndQualitativeEvaluations]:
    """Measurement groups by tracking identifier."""
    found = measurement_groups(sr)
    by_label = {str(g.tracking_identifier): g for g in found}
    assert len(by_label) == len(found)
    return by_label


def evaluations(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> dict[str, str]:
    """Qualitative evaluations as concept code value → coded value's code value."""
    return {e.name.value: e[0].ConceptCodeSequence[0].CodeValue
            for e in group.get_qualitative_evaluations()}


def referenced(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> list[str]:
    return [str(img.referenced_sop_instance_uid) for img in group.source_images]


# --- real series -------------------------------------------------------------------------


def test_sr_of_chest_abdomen_series(source: Source, tmp_path: Path) -> None:
    sr = written(build_sr(source.analysis, SETTINGS), tmp_path / "sr.dcm")
    ct = pydicom.dcmread(source.paths[0], stop_before_pixels=True)
    assert sr.StudyInstanceUID == ct.StudyInstanceUID
    assert sr.SeriesInstanceUID != ct.SeriesInstanceUID
    assert (sr.PatientID, sr.PatientName, sr.StudyID) == (ct.PatientID, ct.PatientName,
                                                          ct.StudyID)
    assert sr.Modality == "SR"
    assert sr.SeriesNumber == SETTINGS.series_number
    assert sr.SeriesDescription == SETTINGS.series_description
    assert (sr.Manufacturer, sr.InstitutionName) == ("bpr-node", "Test Hospital")
    assert sr.content[0].ContentTemplateSequence[0].TemplateIdentifier == "1500"

    volume = source.analysis.volumes[0]
    slice_uids = volume.slice_sop_instance_uids
    regions = {r.name: r for r in volume.regions}
    assert {"abdomen", "chest"} <= set(regions)  # what this volume shows
    by_label = groups(sr)
    assert set(by_label) == {*regions, "whole series"}
    all_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                for p in source.paths}
    for name, region in regions.items():
        group = by_label[name]
        assert [(s.value.value, s.value.scheme_designator) for s in group.finding_sites] == [
            (region.code.value, region.code.scheme)]
        uids = referenced(group)
        assert uids == list(dict.fromkeys(slice_uids[i] for i in region.slice_indices))
        assert set(uids) <= all_uids
        values = {m.name.value: float(m.value) for m in group.get_measurements()}
        assert values["BPR0001"] == pytest.approx(region.z_min_mm)
        assert values["BPR0002"] == pytest.approx(region.z_max_mm)
        assert values["BPR0005"] == len(region.slice_indices)
        assert region.min_score is not None and region.max_score is not None
        assert values["BPR0003"] == pytest.approx(region.min_score)
        assert values["BPR0004"] == pytest.approx(region.max_score)

    series = by_label["whole series"]
    assert set(referenced(series)) == all_uids
    flags = evaluations(series)
    assert volume.body_part_code is not None
    assert flags[codes.DCM.TargetRegion.value] == volume.body_part_code.value
    assert flags[REGION_FOUND.value] == codes.SCT.Yes.value
    for flag in volume.flags:
        expected = codes.SCT.Yes if flag.name in volume.anomalies else codes.SCT.No
        assert flags[flag.concept.value] == expected.value, flag.name

    evidence = {uid for _, _, uid, _ in sr.get_evidence()}
    assert evidence == all_uids


def test_uids_are_deterministic(source: Source) -> None:
    first = build_sr(source.analysis, SETTINGS)
    again = build_sr(with_headers(source.analysis, reversed(source.headers)), SETTINGS)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (
        first.SeriesInstanceUID, first.SOPInstanceUID)
    assert again.ContentSequence == first.ContentSequence

    # A new instance arrived: a new SR instance in the same SR series.
    extra = copy.deepcopy(source.headers[0])
    extra.SOPInstanceUID = generate_uid()
    grown = build_sr(with_headers(source.analysis, [*source.headers, extra]), SETTINGS)
    assert grown.SeriesInstanceUID == first.SeriesInstanceUID
    assert grown.SOPInstanceUID != first.SOPInstanceUID
    assert grown.InstanceNumber == first.InstanceNumber + 1

    # Another model version: likewise; regions keep their tracking UIDs.
    volume = dataclasses.replace(source.analysis.volumes[0], model_version="other")
    other = build_sr(dataclasses.replace(source.analysis, volumes=(volume,)), SETTINGS)
    assert other.SeriesInstanceUID == first.SeriesInstanceUID
    assert other.SOPInstanceUID != first.SOPInstanceUID
    tracking = {g.tracking_identifier: g.tracking_uid for g in measurement_groups(first)}
    assert tracking == {g.tracking_identifier: g.tracking_uid
                        for g in measurement_groups(other)}


def test_flags_of_anomalies_and_undecided_checks(source: Source, tmp_path: Path) -> None:
    volume = source.analysis.volumes[0]
    states: dict[str, FlagState] = {"discontinuity": "yes", "invalid_z_spacing": "yes",
                                    "reversed_z_ordering": "undetermined"}
    flags_in = tuple(FlagRecord(f.name, f.concept, states.get(f.name, "no"))
                     for f in volume.flags)
    withheld = dataclasses.replace(volume, flags=flags_in, body_part_examined=None,
                                   body_part_code=None)
    analysis = dataclasses.replace(source.analysis, volumes=(withheld,))
    sr = written(build_sr(analysis, SETTINGS), tmp_path / "sr.dcm")
    flags = evaluations(groups(sr)["whole series"])
    assert codes.DCM.TargetRegion.value not in flags  # the term was withheld
    yes, no, undetermined = codes.SCT.Yes.value, codes.SCT.No.value, codes.SCT.Undetermined.value
    assert {f.name: flags[f.concept.value] for f in volume.flags} == {
        "no_body": no, "not_ct_like": no, "out_of_scope": no,
        "reversed_z_ordering": undetermined, "invalid_z_spacing": yes,
        "discontinuity": yes, "too_few_slices": no}


def test_no_region_found(empty_source: Source, tmp_path: Path) -> None:
    volume = empty_source.analysis.volumes[0]
    assert volume.regions == ()
    sr = written(build_sr(empty_source.analysis, SETTINGS), tmp_path / "sr.dcm")
    by_label = groups(sr)
    assert list(by_label) == ["whole series"]
    flags = evaluations(by_label["whole series"])
    assert codes.DCM.TargetRegion.value not in flags
    assert flags[REGION_FOUND.value] == codes.SCT.No.value
    concepts = {f.name: f.concept.value for f in volume.flags}
    assert flags[concepts["no_body"]] == codes.SCT.Yes.value
    assert flags[concepts["reversed_z_ordering"]] == codes.SCT.Undetermined.value
    assert len(referenced(by_label["whole series"])) == len(empty_source.headers)


def test_enhanced_ct_is_referenced_once(chest_abdomen_ct: CTVolume, tmp_path: Path) -> None:
    enhanced = analyzed([write_enhanced_ct(chest_abdomen_ct, tmp_path / "enhanced.dcm")])
    sr = written(build_sr(enhanced.analysis, SETTINGS), tmp_path / "sr.dcm")
    uid = str(enhanced.headers[0].SOPInstanceUID)
    for group in groups(sr).values():
        assert referenced(group) == [uid]


def test_rejects_headers_of_other_series(source: Source) -> None:
    stranger = copy.deepcopy(source.headers[0])
    stranger.SeriesInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="one series"):
        build_sr(with_headers(source.analysis, [*source.headers, stranger]), SETTINGS)
    with pytest.raises(ValueError, match="not among the headers"):
        build_sr(with_headers(source.analysis, source.headers[1:]), SETTINGS)


def test_headers_without_type_2_attributes(source: Source, tmp_path: Path) -> None:
    headers = [copy.deepcopy(h) for h in source.headers]
    for h in headers:
        del h.AccessionNumber, h.PatientBirthDate, h.StudyID
    before = copy.deepcopy(headers)
    sr = written(build_sr(with_headers(source.analysis, headers), SETTINGS), tmp_path / "sr.dcm")
    assert (sr.AccessionNumber, sr.StudyID) == ("", "")
    assert headers == before  # the caller's headers are left as they were
