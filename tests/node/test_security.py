"""Security of the running node: association checks, permissions, limits, timeouts, PHI.

Each test runs a real :class:`dicom_node.server.Node` in this process on a free local port and
talks to it with pynetdicom SCUs (:mod:`tests.node.secure_node`); TLS is in ``test_tls.py`` and
the same rules checked with DCMTK in ``tests/integration/test_dcmtk_security.py``.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import func, select

from dicom_node.index import Instance
from dicom_node.server import Node
from tests.dicom_factory import ct_instance
from tests.node.qr_node import identifier
from tests.node.secure_node import (
    NODE_AE,
    PHI_ID,
    PHI_NAME,
    SUCCESS,
    Served,
    associate,
    echo,
    node_config,
    phi_records,
    running,
    serving,
)
from tests.node_harness import wait_for

PENDING = 0xFF00
NOT_AUTHORIZED = 0x0124
MOVE_DESTINATION_UNKNOWN = 0xA801
#: A-ASSOCIATE-RJ (result, source, reason) triples of PS3.8 9.3.4.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)


# -- instances and the node ------------------------------------------------------------------


def stored_count(node: Node) -> int:
    """Instances in the node's index."""
    with node.index.session() as session:
        return int(session.scalar(select(func.count(Instance.id))) or 0)


def stored_files(node: Node) -> list[Path]:
    """Instance files (complete or partial) under the node's storage root."""
    return [p for p in node.store.root.rglob("*") if p.is_file()]
# -- SCU helpers (the node's own pynetdicom SCUs are in tests.node.secure_node) ---------------


@contextmanager
def established(port: int, calling: str, *contexts: Any) -> Iterator[Association]:
    """An association that must be established, released on leaving the block."""
    assoc = associate(port, calling, *contexts)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


def rejection(assoc: Association) -> tuple[int, int, int]:
    """(result, source, reason) of the A-ASSOCIATE-RJ the association got."""
    assert assoc.is_rejected, "association was not rejected"
    primitive = assoc.acceptor.primitive
    assert primitive is not None
    result, source, reason = primitive.result, primitive.result_source, primitive.diagnostic
    assert result is not None and source is not None and reason is not None
    return int(result), int(source), int(reason)


def store(port: int, calling: str, ds: Dataset) -> int:
    """C-STORE status of one instance."""
    with established(port, calling, CTImageStorage) as assoc:
        return int(assoc.send_c_store(ds).Status)


def final_status(responses: Iterator[tuple[Dataset, Dataset | None]]) -> tuple[int, int]:
    """(number of pending responses, final status) of a C-FIND/MOVE/GET response stream."""
    pending, final = 0, -1
    for status, _identifier in responses:
        if "Status" not in status:
            continue  # no response at all (association gone): final stays -1
        if int(status.Status) == PENDING:
            pending += 1
        else:
            final = int(status.Status)
    return pending, final


def query(study_uid: str) -> Dataset:
    """A STUDY-level identifier for one study."""
    return identifier("STUDY", StudyInstanceUID=study_uid)


def find(port: int, calling: str, identifier: Dataset) -> tuple[int, int]:
    """(matches, final status) of a Study Root C-FIND."""
    model = StudyRootQueryRetrieveInformationModelFind
    with established(port, calling, model) as assoc:
        return final_status(assoc.send_c_find(identifier, model))


def move(port: int, calling: str, identifier: Dataset, destination: str) -> tuple[int, int]:
    """(pending responses, final status) of a Study Root C-MOVE."""
    model = StudyRootQueryRetrieveInformationModelMove
    with established(port, calling, model) as assoc:
        return final_status(assoc.send_c_move(identifier, destination, model))


def get(port: int, calling: str, identifier: Dataset) -> tuple[int, int]:
    """(pending responses, final status) of a Study Root C-GET (no storage role offered)."""
    model = StudyRootQueryRetrieveInformationModelGet
    with established(port, calling, model) as assoc:
        return final_status(assoc.send_c_get(identifier, model))
# -- the shared node: permissions and move destinations --------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("security")) as made:
        yield made


# -- association-level checks ----------------------------------------------------------------


def test_unknown_calling_ae_is_rejected_at_association(served: Served) -> None:
    for contexts in ((CTImageStorage,), (Verification, CTImageStorage)):
        assoc = associate(served.port, "STRANGER", *contexts)
        assert not assoc.is_established
        assert rejection(assoc) == REJECT_CALLING_AE


def test_anyone_may_verify_the_connection(served: Served) -> None:
    # security.always_allow_echo (default): a verification carries no data
    assert echo(served.port, "STRANGER") == SUCCESS


def test_echo_from_unknown_peers_can_be_refused_too(tmp_path: Path) -> None:
    raw = node_config(tmp_path, security={"always_allow_echo": False})
    with running(tmp_path, raw) as node:
        assert rejection(associate(node.port, "STRANGER")) == REJECT_CALLING_AE
        assert echo(node.port, "FULL") == SUCCESS


def test_wrong_called_ae_is_rejected_when_checked(served: Served) -> None:
    assoc = associate(served.port, "FULL", called="SOMEONE_ELSE")
    assert not assoc.is_established
    assert rejection(assoc) == REJECT_CALLED_AE


def test_known_peer_with_right_called_ae_is_accepted(served: Served) -> None:
    assert echo(served.port, "STORE_ONLY") == SUCCESS


def test_wrong_called_ae_is_accepted_when_not_checked(tmp_path: Path) -> None:
    raw = node_config(tmp_path, security={"check_called_ae": False})
    with running(tmp_path, raw) as node:
        assert echo(node.port, "FULL", called="SOMEONE_ELSE") == SUCCESS
        # The calling AE allow-list still applies.
        assert rejection(associate(node.port, "STRANGER", CTImageStorage)) == REJECT_CALLING_AE


# -- per-service permissions -----------------------------------------------------------------


def test_store_only_peer_cannot_find_move_or_get(served: Served) -> None:
    identifier = query(served.study_uid)
    assert find(served.port, "STORE_ONLY", identifier) == (0, NOT_AUTHORIZED)
    assert get(served.port, "STORE_ONLY", identifier)[1] == NOT_AUTHORIZED
    before = len(served.received)
    assert move(served.port, "STORE_ONLY", identifier, "MOVE_DEST")[1] == NOT_AUTHORIZED
    assert len(served.received) == before, "a refused C-MOVE sent instances"


def test_find_peer_can_find_but_not_move(served: Served) -> None:
    identifier = query(served.study_uid)
    assert find(served.port, "FIND_ONLY", identifier) == (1, SUCCESS)
    before = len(served.received)
    assert move(served.port, "FIND_ONLY", identifier, "MOVE_DEST")[1] == NOT_AUTHORIZED
    assert get(served.port, "FIND_ONLY", identifier)[1] == NOT_AUTHORIZED
    assert len(served.received) == before


def test_move_goes_only_to_configured_destinations(served: Served) -> None:
    identifier = query(served.study_uid)
    # Not a peer at all; a peer without host and port; and a peer that is not the caller's
    # to name (the node's own title).
    for destination in ("NOWHERE", "FIND_ONLY", NODE_AE):
        assert move(served.port, "QR_ALL", identifier, destination)[1] == \
            MOVE_DESTINATION_UNKNOWN, destination
    before = len(served.received)
    assert move(served.port, "QR_ALL", identifier, "MOVE_DEST")[1] == SUCCESS
    wait_for(lambda: len(served.received) == before + 1, 10, "the moved instance")


def test_store_from_peer_without_store_permission_is_refused(served: Served) -> None:
    files, count = stored_files(served.node), stored_count(served.node)
    for title in ("FIND_ONLY", "QR_ALL"):
        assert store(served.port, title, ct_instance()) == NOT_AUTHORIZED
    assert stored_count(served.node) == count
    assert stored_files(served.node) == files
    assert store(served.port, "STORE_ONLY", ct_instance()) == SUCCESS
    assert stored_count(served.node) == count + 1


# -- limits and timeouts ---------------------------------------------------------------------


def test_association_limit_rejects_the_second_concurrent_association(tmp_path: Path) -> None:
    raw = node_config(tmp_path, network={"max_associations": 1})
    with running(tmp_path, raw) as node:
        first = associate(node.port, "FULL")
        assert first.is_established
        try:
            second = associate(node.port, "FULL")
            assert not second.is_established
            assert rejection(second) == REJECT_LOCAL_LIMIT
            assert int(first.send_c_echo().Status) == SUCCESS
        finally:
            first.release()
        # The slot is free again once the first association is gone.
        wait_for(lambda: echo(node.port) == SUCCESS, 10, "a new association after release")


@pytest.fixture
def impatient_node(tmp_path: Path) -> Iterator[Node]:
    """A node that aborts peers silent for 1.5 s."""
    raw = node_config(tmp_path, network={"acse_timeout_s": 1.5, "dimse_timeout_s": 1.5,
                                         "network_timeout_s": 1.5})
    with running(tmp_path, raw) as node:
        yield node


def test_peer_stalling_after_association_is_aborted(impatient_node: Node) -> None:
    start = time.monotonic()  # before connecting: the node's idle timer starts after this
    # The SCU itself never times out: only the node can end this association.
    stalled = associate(impatient_node.port, "FULL", timeout=None)
    assert stalled.is_established
    wait_for(lambda: stalled.is_aborted or not stalled.is_alive(), 15, "the node's abort")
    assert 1.4 <= time.monotonic() - start < 10
    assert stalled.is_aborted
    assert echo(impatient_node.port) == SUCCESS


def answered_within(sock: socket.socket, seconds: float) -> bool:
    """True when the node closes (or aborts, or resets) the connection within ``seconds``."""
    sock.settimeout(seconds)
    try:
        sock.recv(1024)  # b"" when closed; an A-ABORT or A-ASSOCIATE-RJ PDU counts too
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def stall_inside_pdu(port: int) -> socket.socket:
    """A slowloris peer: the header of an A-ASSOCIATE-RQ announcing 1000 bytes, then silence."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(struct.pack(">BBL", 0x01, 0x00, 1000) + b"\x00\x01")
    return sock


def test_connection_without_association_request_is_closed(impatient_node: Node) -> None:
    with socket.create_connection(("127.0.0.1", impatient_node.port)) as silent:
        assert answered_within(silent, 6)
    assert echo(impatient_node.port) == SUCCESS


def test_peer_stalling_inside_a_pdu_is_dropped(impatient_node: Node) -> None:
    with stall_inside_pdu(impatient_node.port) as stalled:
        assert answered_within(stalled, 6), "the node never dropped a peer stalled mid-PDU"
    assert echo(impatient_node.port) == SUCCESS


def test_peer_stalling_inside_a_pdu_after_association_is_aborted(impatient_node: Node) -> None:
    stalled = associate(impatient_node.port, "FULL", timeout=None)
    assert stalled.is_established
    try:
        assert stalled.dul.socket is not None
        # The first bytes of a P-DATA-TF announcing 1000 bytes, then silence.
        stalled.dul.socket.send(struct.pack(">BBL", 0x04, 0x00, 1000) + b"\x00\x00")
        deadline = time.monotonic() + 6
        while stalled.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not stalled.is_established, "the node never dropped a peer stalled mid-PDU"
    finally:
        if stalled.is_established:
            stalled.abort()
    assert echo(impatient_node.port) == SUCCESS


def test_stalled_peers_cannot_exhaust_the_association_limit(tmp_path: Path) -> None:
    raw = node_config(tmp_path, network={"max_associations": 1, "acse_timeout_s": 1.5,
                                         "dimse_timeout_s": 1.5, "network_timeout_s": 1.5})
    with running(tmp_path, raw) as node, stall_inside_pdu(node.port):
        # Within a few network timeouts the stalled peer must have lost its slot.
        deadline = time.monotonic() + 6
        while echo(node.port) != SUCCESS:
            assert time.monotonic() < deadline, "one stalled peer locked everybody out"
            time.sleep(0.2)


def test_silent_connections_do_not_block_others(impatient_node: Node) -> None:
    silent = [socket.create_connection(("127.0.0.1", impatient_node.port)) for _ in range(3)]
    try:
        assert echo(impatient_node.port) == SUCCESS
    finally:
        for sock in silent:
            sock.close()

# -- no PHI in logs --------------------------------------------------------------------------


# pydicom warns about the deliberately broken values as the node decodes them.
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_store_logs_no_phi(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ds = ct_instance(patient_name=PHI_NAME, patient_id=PHI_ID)
    count = stored_count(served.node)
    assert store(served.port, "STORE_ONLY", ds) == SUCCESS
    assert stored_count(served.node) == count + 1
    # Also the refusal and rejection paths, which log the most.
    assert store(served.port, "FIND_ONLY", ct_instance(patient_name=PHI_NAME,
                                                       patient_id=PHI_ID)) == NOT_AUTHORIZED
    broken = ct_instance(patient_name=PHI_NAME, patient_id=PHI_ID)
    broken.add(DataElement(0x00080018, "UI", "not-a-uid", validation_mode=pydicom_config.IGNORE))
    broken.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3")
    assert store(served.port, "STORE_ONLY", broken) != SUCCESS
    # Values that break their VR make pydicom warn (and log) while the node decodes them.
    odd = ct_instance()
    for tag, vr, value in ((0x00100010, "PN", f"{PHI_NAME * 5}=a=b=c"),
                           (0x00100020, "LO", f"{PHI_ID}\\{'X' * 70}"),
                           (0x00100030, "DA", "1961-07-31"), (0x00100040, "CS", "m\x01")):
        odd.add(DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE))
    assert store(served.port, "STORE_ONLY", odd) == SUCCESS
    assert len(caplog.records) > 0, "nothing was logged at DEBUG: the check proves nothing"
    assert phi_records(caplog.records) == []
    # The node's own records shorten UIDs (dicom_node.config.LoggingConfig).
    own = [r.getMessage() for r in caplog.records if r.name.startswith("dicom_node")]
    assert not [m for m in own if str(ds.SOPInstanceUID) in m]


def test_patient_root_query_needs_find_permission(served: Served) -> None:
    model = PatientRootQueryRetrieveInformationModelFind
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = ""
    for title, expected in (("STORE_ONLY", NOT_AUTHORIZED), ("FIND_ONLY", SUCCESS)):
        with established(served.port, title, model) as assoc:
            assert final_status(assoc.send_c_find(identifier, model))[1] == expected, title
