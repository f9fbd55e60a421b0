"""Security of the running node: association checks, permissions, limits, timeouts, TLS, PHI.

Each test runs a real :class:`dicom_node.server.Node` in this process on a free local port and
talks to it with pynetdicom SCUs (and DCMTK where noted). ``series.quiet_seconds`` is an hour,
so no analysis ever starts and no model is loaded. The TLS material (a throwaway CA, a server
certificate, client certificates from that CA and from a foreign one) is made per test session
with the ``openssl`` command line tool.
"""

from __future__ import annotations

import io
import logging
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
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

from dicom_node.config import config_from_dict
from dicom_node.headers import read_header
from dicom_node.index import Instance
from dicom_node.ingest import ingest
from dicom_node.server import Node
from tests.node_harness import free_port, wait_for

NODE_AE = "BPR_NODE"
SUCCESS = 0x0000
PENDING = 0xFF00
NOT_AUTHORIZED = 0x0124
MOVE_DESTINATION_UNKNOWN = 0xA801
#: A-ASSOCIATE-RJ (result, source, reason) triples of PS3.8 9.3.4.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)

#: Values that must never reach a log record; distinctive so a hit cannot be a coincidence.
PHI_NAME = "Quixotic^Zebulon"
PHI_ID = "PHI-7731-XQ"

PEERS: list[dict[str, Any]] = [
    {"ae_title": "STORE_ONLY", "permissions": ["store"]},
    {"ae_title": "FIND_ONLY", "permissions": ["find"]},
    {"ae_title": "QR_ALL", "permissions": ["find", "move", "get"]},
    {"ae_title": "FULL"},
]


# -- instances and the node ------------------------------------------------------------------


def ct_instance(*, patient_name: str = "Test^Patient", patient_id: str = "PID-1",
                study_uid: str | None = None) -> Dataset:
    """A tiny (4x4) CT image with file meta, ready for C-STORE or writing as Part 10."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate = "20240101"
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(32)
    return ds


def part10(ds: Dataset) -> bytes:
    """``ds`` encoded as a Part 10 file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def node_config(base: Path, *, peers: list[dict[str, Any]] | None = None,
                **sections: dict[str, Any]) -> dict[str, Any]:
    """A configuration mapping: short timeouts, an index and storage inside ``base``."""
    raw: dict[str, Any] = {
        "network": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": free_port(),
                    "acse_timeout_s": 10, "dimse_timeout_s": 10, "network_timeout_s": 10},
        "storage": {"root": "storage", "min_free_bytes": 0},
        "database": {"url": "sqlite:///index.sqlite"},
        # An hour of quiet time: no series completes, so no analysis (and no model) runs.
        "series": {"quiet_seconds": 3600, "torch_threads": 1},
        "peers": PEERS if peers is None else peers,
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


@contextmanager
def running(base: Path, raw: dict[str, Any]) -> Iterator[Node]:
    """A started node for the duration of the block."""
    base.mkdir(parents=True, exist_ok=True)
    node = Node(config_from_dict(raw, base))
    node.start()
    try:
        yield node
    finally:
        node.stop()


def stored_count(node: Node) -> int:
    """Instances in the node's index."""
    with node.index.session() as session:
        return int(session.scalar(select(func.count(Instance.id))) or 0)


def stored_files(node: Node) -> list[Path]:
    """Instance files (complete or partial) under the node's storage root."""
    return [p for p in node.store.root.rglob("*") if p.is_file()]


# -- SCU helpers -----------------------------------------------------------------------------


def scu(title: str, *contexts: Any, timeout: float | None = 10) -> AE:
    """A requesting AE proposing ``contexts`` (Verification when none)."""
    ae = AE(title)
    ae.acse_timeout = ae.dimse_timeout = ae.connection_timeout = 10
    ae.network_timeout = timeout
    for context in contexts or (Verification,):
        ae.add_requested_context(context)
    return ae


def associate(port: int, calling: str, *contexts: Any, called: str = NODE_AE,
              tls: ssl.SSLContext | None = None, timeout: float | None = 10) -> Association:
    """An association (established or not: callers check) from ``calling`` to the node."""
    ae = scu(calling, *contexts, timeout=timeout)
    tls_args = (tls, "localhost") if tls is not None else None
    return ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)


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


def echo(port: int, calling: str = "FULL", **kwargs: Any) -> int:
    """C-ECHO status, or -1 when no association was established."""
    assoc = associate(port, calling, **kwargs)
    if not assoc.is_established:
        return -1
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else -1
    finally:
        assoc.release()


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
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


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


@dataclass
class Served:
    """The module's node, the study it holds and what its move destination received."""

    node: Node
    study_uid: str
    received: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        """The node's port."""
        return self.node.port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("security")
    received: list[str] = []
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        with lock:
            received.append(str(event.dataset.SOPInstanceUID))
        return SUCCESS

    destination = AE("MOVE_DEST")
    destination.add_supported_context(CTImageStorage)
    destination.add_supported_context(Verification)
    dest_server = destination.start_server(("127.0.0.1", 0), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert dest_server is not None
    peers = [*PEERS, {"ae_title": "MOVE_DEST", "host": "127.0.0.1",
                      "port": dest_server.server_address[1], "permissions": ["store"]}]
    raw = node_config(base, peers=peers)
    held = ct_instance()
    try:
        with running(base, raw) as node:
            data = part10(held)
            ingest(node.index, node.store, data, read_header(data), source_ae="FULL",
                   analyzed_modalities=("CT",))
            yield Served(node, str(held.StudyInstanceUID), received)
    finally:
        dest_server.shutdown()


# -- association-level checks ----------------------------------------------------------------


def test_unknown_calling_ae_is_rejected_at_association(served: Served) -> None:
    assoc = associate(served.port, "STRANGER")
    assert not assoc.is_established
    assert rejection(assoc) == REJECT_CALLING_AE


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
        assert rejection(associate(node.port, "STRANGER")) == REJECT_CALLING_AE


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


# -- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """Throwaway certificates: a CA, the server's, a client's, and a client's from another CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    foreign_cert: Path
    foreign_key: Path


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)


def _new_key_args(key: Path) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key)]


def _make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl(folder, "req", "-x509", *_new_key_args(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _issue(folder: Path, name: str, ca: tuple[Path, Path], usage: str,
           alt_names: str = "") -> tuple[Path, Path]:
    cert, key, csr = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
    _openssl(folder, "req", "-new", *_new_key_args(key), "-out", str(csr), "-subj", f"/CN={name}")
    extensions = folder / f"{name}.ext"
    lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
             f"extendedKeyUsage={usage}", "subjectKeyIdentifier=hash",
             "authorityKeyIdentifier=keyid"]
    if alt_names:
        lines.append(f"subjectAltName={alt_names}")
    extensions.write_text("\n".join(lines) + "\n", encoding="ascii")
    _openssl(folder, "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(extensions))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line tool is not installed")
    folder = tmp_path_factory.mktemp("pki")
    ca = _make_ca(folder, "test-ca")
    server = _issue(folder, "server", ca, "serverAuth", "DNS:localhost,IP:127.0.0.1")
    client = _issue(folder, "client", ca, "clientAuth")
    foreign = _issue(folder, "foreign", _make_ca(folder, "foreign-ca"), "clientAuth")
    return Pki(ca[0], *server, *client, *foreign)


def client_context(pki: Pki, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A client TLS context that trusts the test CA, presenting ``cert`` when given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(certfile=str(cert[0]), keyfile=str(cert[1]))
    return context


def tls_config(base: Path, pki: Pki, *, require_client_certificate: bool) -> dict[str, Any]:
    """A node configuration with TLS on."""
    return node_config(base, security={"tls": {
        "enabled": True, "certificate": str(pki.server_cert), "private_key": str(pki.server_key),
        "ca_certificates": str(pki.ca), "require_client_certificate": require_client_certificate,
    }})


def test_tls_echo_and_plain_client_refused(tmp_path: Path, pki: Pki) -> None:
    with running(tmp_path, tls_config(tmp_path, pki, require_client_certificate=False)) as node:
        assert echo(node.port, tls=client_context(pki)) == SUCCESS
        assert echo(node.port) == -1, "a plain client was served on the TLS port"
        # The client certificate is optional here, but one that is offered is accepted.
        client = (pki.client_cert, pki.client_key)
        assert echo(node.port, tls=client_context(pki, client)) == SUCCESS
        assert echo(node.port, tls=client_context(pki)) == SUCCESS


def test_tls_with_required_client_certificate(tmp_path: Path, pki: Pki) -> None:
    with running(tmp_path, tls_config(tmp_path, pki, require_client_certificate=True)) as node:
        client = (pki.client_cert, pki.client_key)
        assert echo(node.port, tls=client_context(pki, client)) == SUCCESS
        assert echo(node.port, tls=client_context(pki)) == -1, "served without a certificate"
        foreign = (pki.foreign_cert, pki.foreign_key)
        assert echo(node.port, tls=client_context(pki, foreign)) == -1, \
            "served a certificate from another CA"
        assert echo(node.port) == -1, "a plain client was served on the TLS port"
        assert echo(node.port, tls=client_context(pki, client)) == SUCCESS


def test_tls_stalled_handshake_does_not_block_others(tmp_path: Path, pki: Pki) -> None:
    raw = tls_config(tmp_path, pki, require_client_certificate=False)
    raw["network"].update(acse_timeout_s=1.5, network_timeout_s=1.5)
    with running(tmp_path, raw) as node, \
            socket.create_connection(("127.0.0.1", node.port)) as _silent:
        # A peer that connects and never starts its TLS handshake must not stop the node
        # from serving everybody else.
        done: list[int] = []
        worker = threading.Thread(
            target=lambda: done.append(echo(node.port, tls=client_context(pki))), daemon=True)
        worker.start()
        worker.join(8)
        assert done == [SUCCESS], "the node stopped accepting while one TLS handshake stalled"


@pytest.mark.skipif(shutil.which("echoscu") is None, reason="DCMTK not installed")
def test_tls_dcmtk_echoscu(tmp_path: Path, pki: Pki) -> None:
    with running(tmp_path, tls_config(tmp_path, pki, require_client_certificate=True)) as node:
        def echoscu(*tls: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["echoscu", "-aet", "FULL", "-aec", NODE_AE, "-to", "10", "-ta", "10",
                 "-td", "10", *tls, "127.0.0.1", str(node.port)],
                capture_output=True, text=True, timeout=60, check=False)

        ok = echoscu("+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca))
        assert ok.returncode == 0, ok.stderr
        assert echoscu().returncode != 0
        anonymous = echoscu("+tla", "+cf", str(pki.ca))
        assert anonymous.returncode != 0


# -- no PHI in logs --------------------------------------------------------------------------


def _phi_records(records: list[logging.LogRecord]) -> list[str]:
    leaks = []
    for record in records:
        text = record.getMessage() + (record.exc_text or "")
        if any(value in text for value in (PHI_NAME, PHI_ID, "Quixotic", "Zebulon")):
            leaks.append(f"{record.name}:{record.levelname}: {text[:120]}")
    return leaks


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
    assert _phi_records(caplog.records) == []
    # The node's own records shorten UIDs (dicom_node.config.LoggingConfig).
    own = [r.getMessage() for r in caplog.records if r.name.startswith("dicom_node")]
    assert not [m for m in own if str(ds.SOPInstanceUID) in m]


@pytest.mark.skipif(shutil.which("findscu") is None, reason="DCMTK not installed")
def test_query_logs_no_phi(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    # DCMTK as the SCU, in its own process: every record captured here is the node's.
    caplog.set_level(logging.DEBUG)
    result = subprocess.run(
        ["findscu", "-aet", "FIND_ONLY", "-aec", NODE_AE, "-S", "-k", "QueryRetrieveLevel=STUDY",
         "-k", f"PatientName={PHI_NAME}", "-k", f"PatientID={PHI_ID}", "-k", "StudyInstanceUID",
         "127.0.0.1", str(served.port)],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert len(caplog.records) > 0
    assert _phi_records(caplog.records) == []


def test_patient_root_query_needs_find_permission(served: Served) -> None:
    model = PatientRootQueryRetrieveInformationModelFind
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = ""
    for title, expected in (("STORE_ONLY", NOT_AUTHORIZED), ("FIND_ONLY", SUCCESS)):
        with established(served.port, title, model) as assoc:
            assert final_status(assoc.send_c_find(identifier, model))[1] == expected, title
