"""C-GET and C-MOVE on the Query/Retrieve SCP (dicom_node.query) against pynetdicom peers.

The node (:mod:`tests.node.qr_node`) serves small synthetic instances; its C-MOVE destination
is a pynetdicom storage SCP.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)

from dicom_node.query import CANCEL, StoredInstance, storage_contexts
from tests.node.qr_node import Node, get, identifier, move, serving, stub_event
from tests.synthetic_index import series_uid, sop_uid, study_uid


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with serving(tmp_path_factory.mktemp("qr")) as made:
        yield made


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


def test_storage_contexts_offer_stored_and_uncompressed_syntaxes() -> None:
    jpeg = "1.2.840.10008.1.2.4.50"
    contexts = storage_contexts([
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


def test_get_cancelled_yields_count_then_cancel(node: Node) -> None:
    event = stub_event(identifier("STUDY", StudyInstanceUID=study_uid("S1")),
                       StudyRootQueryRetrieveInformationModelGet, cancelled=True)
    assert list(node.service.handle_get(event)) == [4, (CANCEL, None)]

