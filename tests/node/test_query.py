"""Query/Retrieve SCP (dicom_node.query) against pynetdicom peers: C-FIND, C-GET, C-MOVE.

The node (:mod:`tests.node.qr_node`) serves small synthetic instances; a pynetdicom storage
SCP is the C-MOVE destination. DCMTK peers are in ``tests/integration/test_dcmtk_query.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from dicom_node.config import config_from_dict
from dicom_node.contexts import move_contexts
from dicom_node.query import QueryRetrieveService
from dicom_node.query_sql import StoredInstance
from dicom_node.statuses import CANCEL, PENDING
from tests.node.qr_node import (
    NODE_AE,
    SPECS,
    Node,
    find,
    get,
    identifier,
    move,
    serving,
    stub_event,
    values,
)
from tests.synthetic_index import series_uid, sop_uid, study_uid


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with serving(tmp_path_factory.mktemp("qr")) as made:
        yield made


# -- C-FIND: matching ------------------------------------------------------------------------


def test_find_person_name_ignores_case(node: Node) -> None:
    matches, status = find(node, identifier("STUDY", PatientName="doe*"))
    assert status == 0x0000
    assert values(matches, "StudyInstanceUID") == {study_uid(s) for s in ("S1", "S2", "S6")}


def test_find_person_name_underscore_is_literal(node: Node) -> None:
    matches, _ = find(node, identifier("STUDY", PatientName="Smith_Jones*"))
    assert values(matches, "StudyInstanceUID") == {study_uid("S3")}


def test_find_person_name_question_mark_is_one_character(node: Node) -> None:
    matches, _ = find(node, identifier("STUDY", PatientName="Smith?Jones*"))
    assert values(matches, "StudyInstanceUID") == {study_uid("S3"), study_uid("S4")}


def test_find_person_name_percent_is_literal(node: Node) -> None:
    matches, _ = find(node, identifier("STUDY", PatientName="*%*"))
    assert values(matches, "StudyInstanceUID") == {study_uid("S5")}


def test_find_description_is_case_sensitive(node: Node) -> None:
    matches, _ = find(node, identifier("STUDY", StudyDescription="CT*"))
    assert values(matches, "StudyInstanceUID") == {study_uid("S1")}


def test_find_single_value_underscore_is_literal(node: Node) -> None:
    matches, _ = find(node, identifier("STUDY", AccessionNumber="ACC_1"))
    assert values(matches, "StudyInstanceUID") == {study_uid("S1")}


def test_find_wildcard_question_mark(node: Node) -> None:
    matches, _ = find(node, identifier("STUDY", AccessionNumber="ACC?1"))
    assert values(matches, "AccessionNumber") == {"ACC_1", "ACCX1", "ACCY1"}


def test_find_date_range(node: Node) -> None:
    matches, _ = find(node, identifier("STUDY", StudyDate="20200101-20201231"))
    assert values(matches, "StudyDate") == {"20200101", "20201231"}


def test_find_open_date_ranges(node: Node) -> None:
    before, _ = find(node, identifier("STUDY", StudyDate="-19991231"))
    after, _ = find(node, identifier("STUDY", StudyDate="20230101-"))
    assert values(before, "StudyInstanceUID") == {study_uid("S3")}
    assert values(after, "StudyInstanceUID") == {study_uid(s) for s in ("S6", "S7", "S8")}


def test_find_time_range(node: Node) -> None:
    matches, _ = find(node, identifier("STUDY", StudyTime="1000-1100"))
    assert values(matches, "StudyInstanceUID") == {study_uid("S1")}


def test_find_uid_list(node: Node) -> None:
    query = identifier("STUDY", StudyInstanceUID=[study_uid("S1"), study_uid("S3")])
    matches, _ = find(node, query)
    assert values(matches, "StudyInstanceUID") == {study_uid("S1"), study_uid("S3")}


def test_find_modalities_in_study_matches_any_value(node: Node) -> None:
    only_mr, _ = find(node, identifier("STUDY", ModalitiesInStudy="MR"))
    either, _ = find(node, identifier("STUDY", ModalitiesInStudy=["MR", "CT"]))
    assert values(only_mr, "StudyInstanceUID") == {study_uid("S1")}
    assert len(either) == len(SPECS)


def test_find_non_ascii_name_ignores_case(node: Node) -> None:
    query = identifier("STUDY", SpecificCharacterSet="ISO_IR 192", PatientName="jörg*")
    (found,), _ = find(node, query)
    assert str(found.PatientName) == "Jörg^Müller"
    assert found.SpecificCharacterSet == "ISO_IR 192"


# -- C-FIND: levels, models and returned keys ------------------------------------------------


def test_find_returns_only_requested_keys(node: Node) -> None:
    matches, _ = find(node, identifier("STUDY", PatientName="Doe^John", StudyDate=""))
    assert len(matches) == 2
    for ds in matches:
        assert {e.keyword for e in ds} == {"SpecificCharacterSet", "QueryRetrieveLevel",
                                           "PatientName", "StudyDate", "StudyInstanceUID"}
        assert ds.QueryRetrieveLevel == "STUDY"


def test_find_study_counts_and_modalities(node: Node) -> None:
    query = identifier("STUDY", StudyInstanceUID=study_uid("S1"), ModalitiesInStudy="",
                       NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="")
    (found,), _ = find(node, query)
    assert list(found.ModalitiesInStudy) == ["CT", "MR"]
    assert found.NumberOfStudyRelatedSeries == 2
    assert found.NumberOfStudyRelatedInstances == 4


def test_find_unsupported_key_is_returned_empty(node: Node) -> None:
    (found,), _ = find(node, identifier("STUDY", StudyInstanceUID=study_uid("S1"),
                                        InstitutionName=""))
    assert "InstitutionName" in found
    assert found.InstitutionName in ("", None)


def test_find_series_level_with_higher_unique_key(node: Node) -> None:
    query = identifier("SERIES", StudyInstanceUID=study_uid("S1"), SeriesInstanceUID="",
                       Modality="", SeriesNumber="", NumberOfSeriesRelatedInstances="",
                       BodyPartExamined="")
    matches, _ = find(node, query)
    by_number = {int(m.SeriesNumber): m for m in matches}
    assert set(by_number) == {1, 2}
    assert by_number[1].Modality == "CT"
    assert by_number[1].NumberOfSeriesRelatedInstances == 3
    assert by_number[1].BodyPartExamined == "CHEST"
    assert by_number[2].BodyPartExamined in ("", None)


def test_find_returns_corrected_body_part(node: Node) -> None:
    query = identifier("SERIES", StudyInstanceUID=study_uid("S2"), BodyPartExamined="")
    (found,), _ = find(node, query)
    assert found.BodyPartExamined == "ABDOMEN"


def test_find_matches_corrected_body_part(node: Node) -> None:
    abdomen, _ = find(node, identifier("SERIES", BodyPartExamined="ABDOMEN"))
    chest, _ = find(node, identifier("SERIES", BodyPartExamined="CHEST"))
    assert values(abdomen, "SeriesInstanceUID") == {series_uid("S2", 1)}
    assert series_uid("S2", 1) not in values(chest, "SeriesInstanceUID")


def test_find_image_level(node: Node) -> None:
    query = identifier("IMAGE", StudyInstanceUID=study_uid("S1"),
                       SeriesInstanceUID=series_uid("S1", 1), SOPInstanceUID="",
                       InstanceNumber="", SOPClassUID="")
    matches, _ = find(node, query)
    assert [int(m.InstanceNumber) for m in matches] == [1, 2, 3]
    assert {m.SOPClassUID for m in matches} == {CTImageStorage}


def test_find_image_level_integer_match(node: Node) -> None:
    query = identifier("IMAGE", SeriesInstanceUID=series_uid("S1", 1), InstanceNumber="2")
    matches, _ = find(node, query)
    assert values(matches, "SOPInstanceUID") == {sop_uid("S1", 1, 2)}


def test_find_lower_level_keys_are_ignored(node: Node) -> None:
    matches, _ = find(node, identifier("STUDY", StudyInstanceUID=study_uid("S1"),
                                       Modality="XX"))
    assert len(matches) == 1
    assert "Modality" not in matches[0]


def test_find_patient_root_patient_level(node: Node) -> None:
    query = identifier("PATIENT", PatientID="PID001", PatientName="",
                       NumberOfPatientRelatedStudies="")
    (found,), status = find(node, query, PatientRootQueryRetrieveInformationModelFind)
    assert status == 0x0000
    assert found.PatientName == "Doe^John"
    assert found.NumberOfPatientRelatedStudies == 2


def test_find_patient_root_all_patients(node: Node) -> None:
    matches, _ = find(node, identifier("PATIENT", PatientID="*"),
                      PatientRootQueryRetrieveInformationModelFind)
    assert values(matches, "PatientID") == {spec.patient_id for spec in SPECS}
    assert len(matches) == len({spec.patient_id for spec in SPECS})


def test_find_patient_root_study_level_with_patient_id(node: Node) -> None:
    matches, _ = find(node, identifier("STUDY", PatientID="PID001", StudyInstanceUID=""),
                      PatientRootQueryRetrieveInformationModelFind)
    assert values(matches, "StudyInstanceUID") == {study_uid("S1"), study_uid("S2")}


def test_find_retrieve_ae_title(node: Node) -> None:
    (found,), _ = find(node, identifier("STUDY", StudyInstanceUID=study_uid("S3"),
                                        RetrieveAETitle=""))
    assert found.RetrieveAETitle == NODE_AE


# -- C-FIND: failures ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize(("level", "keys"), [
    ("", {"PatientName": "*"}),
    ("FOO", {"PatientName": "*"}),
    ("PATIENT", {"PatientID": "*"}),  # no PATIENT level in Study Root
    ("STUDY", {"StudyDate": "2020-"}),
    ("STUDY", {"PatientName": ["A", "B"]}),
], ids=["no level", "unknown level", "level not in model", "bad range", "name list"])
def test_find_bad_identifier_is_a900(node: Node, level: str, keys: dict[str, Any]) -> None:
    matches, status = find(node, identifier(level, **keys))
    assert matches == []
    assert status == 0xA900


def test_find_unknown_peer_is_refused(node: Node) -> None:
    matches, status = find(node, identifier("STUDY", PatientName="*"), ae_title="STRANGER")
    assert (matches, status) == ([], 0x0124)


def test_find_peer_without_permission_is_refused(node: Node) -> None:
    _, status = find(node, identifier("STUDY"), ae_title="STORE_DEST")
    assert status == 0x0124


def test_find_logs_no_key_values(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="dicom_node"):
        find(node, identifier("STUDY", PatientName="Doe^John", PatientID="PID001"))
        find(node, identifier("STUDY", PatientName="Doe^John"), ae_title="STRANGER")
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("dicom_node"))
    assert "C-FIND" in text
    assert "Doe" not in text and "PID001" not in text


# -- C-GET -----------------------------------------------------------------------------------


def test_get_series(node: Node) -> None:
    received, final = get(node, identifier("SERIES", StudyInstanceUID=study_uid("S1"),
                                           SeriesInstanceUID=series_uid("S1", 1)))
    assert sorted(received) == [sop_uid("S1", 1, i) for i in (1, 2, 3)]
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 3


def test_get_study_with_two_sop_classes(node: Node) -> None:
    received, final = get(node, identifier("STUDY", StudyInstanceUID=study_uid("S1")))
    assert len(received) == 4
    assert final.Status == 0x0000


def test_get_image_uid_list(node: Node) -> None:
    wanted = [sop_uid("S1", 1, 1), sop_uid("S3", 1, 1)]
    received, final = get(node, identifier("IMAGE", SOPInstanceUID=wanted))
    assert sorted(received) == sorted(wanted)
    assert final.Status == 0x0000


def test_get_patient_root_patient_level(node: Node) -> None:
    received, final = get(node, identifier("PATIENT", PatientID="PID_2"),
                          model=PatientRootQueryRetrieveInformationModelGet)
    assert received == [sop_uid("S3", 1, 1)]
    assert final.Status == 0x0000


def test_get_without_unique_key_is_a900(node: Node) -> None:
    received, final = get(node, identifier("STUDY", PatientName="Doe^John"))
    assert (received, final.Status) == ([], 0xA900)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_get_wildcard_unique_key_is_a900(node: Node) -> None:
    received, final = get(node, identifier("STUDY", StudyInstanceUID="1.2.*"))
    assert (received, final.Status) == ([], 0xA900)


def test_get_patient_wildcard_is_a900(node: Node) -> None:
    received, final = get(node, identifier("PATIENT", PatientID="PID*"),
                          model=PatientRootQueryRetrieveInformationModelGet)
    assert (received, final.Status) == ([], 0xA900)


def test_get_no_match_is_success(node: Node) -> None:
    received, final = get(node, identifier("STUDY", StudyInstanceUID="1.2.3.4.5.6"))
    assert (received, final.Status) == ([], 0x0000)


def test_get_refused_without_permission(node: Node) -> None:
    received, final = get(node, identifier("STUDY", StudyInstanceUID=study_uid("S3")),
                          ae_title="FIND_ONLY")
    assert (received, final.Status) == ([], 0x0124)


def test_get_unreadable_file_counts_as_failed(node: Node) -> None:
    received, final = get(node, identifier("STUDY", StudyInstanceUID=study_uid("S7")))
    assert received == []
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == 1


# -- C-MOVE ----------------------------------------------------------------------------------


def test_move_study_to_storage_scp(node: Node) -> None:
    node.received.clear()
    final = move(node, identifier("STUDY", StudyInstanceUID=study_uid("S1")), "STORE_DEST")
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 4
    assert sorted(node.received) == sorted(
        [sop_uid("S1", 1, i) for i in (1, 2, 3)] + [sop_uid("S1", 2, 1)])


def test_move_unknown_destination_is_a801(node: Node) -> None:
    final = move(node, identifier("STUDY", StudyInstanceUID=study_uid("S1")), "NOWHERE")
    assert final.Status == 0xA801


def test_move_destination_without_port_is_a801(node: Node) -> None:
    final = move(node, identifier("STUDY", StudyInstanceUID=study_uid("S1")), "NO_PORT")
    assert final.Status == 0xA801


def test_move_refused_without_permission(node: Node) -> None:
    node.received.clear()
    final = move(node, identifier("STUDY", StudyInstanceUID=study_uid("S1")), "STORE_DEST",
                 ae_title="FIND_ONLY")
    assert final.Status == 0x0124
    assert node.received == []


def test_move_bad_identifier_is_a900(node: Node) -> None:
    final = move(node, identifier("SERIES", StudyInstanceUID=study_uid("S1")), "STORE_DEST")
    assert final.Status == 0xA900


def test_move_contexts_offer_stored_and_uncompressed_syntaxes() -> None:
    jpeg = "1.2.840.10008.1.2.4.50"
    contexts = move_contexts([
        StoredInstance("a", "1", CTImageStorage, jpeg),
        StoredInstance("b", "2", CTImageStorage, ExplicitVRLittleEndian),
        StoredInstance("c", "3", MRImageStorage, ExplicitVRLittleEndian),
    ])
    offered = {c.abstract_syntax: c.transfer_syntax for c in contexts}
    assert offered == {
        CTImageStorage: [jpeg, ExplicitVRLittleEndian, ImplicitVRLittleEndian],
        MRImageStorage: [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
    }


# -- handlers called directly ----------------------------------------------------------------


def test_find_cancelled_yields_cancel(node: Node) -> None:
    event = stub_event(identifier("STUDY", PatientName="*"),
                       StudyRootQueryRetrieveInformationModelFind, cancelled=True)
    assert list(node.service.handle_find(event)) == [(CANCEL, None)]


def test_get_cancelled_yields_count_then_cancel(node: Node) -> None:
    event = stub_event(identifier("STUDY", StudyInstanceUID=study_uid("S1")),
                       StudyRootQueryRetrieveInformationModelGet, cancelled=True)
    assert list(node.service.handle_get(event)) == [4, (CANCEL, None)]


def test_unknown_peers_allowed_when_known_peers_not_required(node: Node,
                                                             tmp_path: Path) -> None:
    config = config_from_dict({"security": {"require_known_peers": False}}, tmp_path)
    service = QueryRetrieveService(node.index, node.store, config)
    event = stub_event(identifier("STUDY", StudyInstanceUID=study_uid("S3")),
                       StudyRootQueryRetrieveInformationModelFind, ae_title="STRANGER")
    (status, found), = list(service.handle_find(event))
    assert status == PENDING
    assert found is not None and found.StudyInstanceUID == study_uid("S3")


def test_unsupported_model_is_0122(node: Node) -> None:
    event = stub_event(identifier("STUDY"), "1.2.840.10008.5.1.4.1.2.3.1")
    (status, _), = list(node.service.handle_find(event))
    assert isinstance(status, Dataset)
    assert status.Status == 0x0122

