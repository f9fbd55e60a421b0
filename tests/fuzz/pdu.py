"""Hostile DICOM Upper Layer input for the PDU fuzz tests, and the node they are sent to.

PDUs are built from their parts (PS3.8 §9.3: :func:`pdu`, :func:`item`,
:func:`associate_rq`, :func:`p_data`, DIMSE command sets) so that every length and field can
lie; :data:`HANDWRITTEN` holds the named hostile streams (garbage, unknown PDU types, absurd
lengths, truncated requests, P-DATA-TF before any association, a 4 GiB length and then
nothing, runs of zero bytes, a valid association followed by garbage...) and ``pdu_inputs``
the hypothesis strategy drawing streams from the same parts. :func:`exchange` sends them on a
real socket to a :class:`RunningNode` (a :class:`dicom_node.server.Node` in this process);
:class:`StoreClient` sends damaged datasets (:mod:`tests.fuzz.generators`) as real C-STOREs,
byte for byte.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from sqlalchemy import func, select

from dicom_node.config import config_from_dict
from dicom_node.index import Instance
from dicom_node.server import Node
from dicom_node.storage import WATERMARK_NAME
from tests.fuzz.damage import Layout, Recipe
from tests.fuzz.strategies import recipes
from tests.node_harness import free_port

NODE_AE, ECHO_AE, FUZZ_AE = "BPR_NODE", "ECHOSCU", "FUZZSCU"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
#: Short timeouts: idle or stalled connections are dropped quickly, so tests stay fast.
NODE_TIMEOUT_S = 1.0
MAX_ASSOCIATIONS = 16
#: Reply PDU types a node may answer hostile input with (AC, RJ, P-DATA, RP, A-ABORT).
REPLY_TYPES = {0x02, 0x03, 0x04, 0x06, 0x07}


@dataclass
class RunningNode:
    """A started :class:`Node` and where it keeps its files."""

    node: Node
    port: int
    folder: Path
    storage: Path

    def stored_files(self) -> list[Path]:
        """Files in the storage besides the recovery watermark written at start-up."""
        return sorted(p for p in self.storage.rglob("*")
                      if not p.is_dir() and p != self.storage / WATERMARK_NAME)

    def stray_files(self) -> list[Path]:
        """Anything in the node's folder besides its storage and its index database."""
        return [p for p in self.folder.iterdir()
                if p != self.storage and not p.name.startswith("index.sqlite")]

    def instances(self) -> int:
        with self.node.index.session() as session:
            return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def start_node(folder: Path) -> RunningNode:
    """A node on a free port, peers ECHOSCU and FUZZSCU allowed to store, no analysis due."""
    port = free_port()
    config = config_from_dict({
        "network": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": port,
                    "acse_timeout_s": NODE_TIMEOUT_S, "dimse_timeout_s": NODE_TIMEOUT_S,
                    "network_timeout_s": NODE_TIMEOUT_S,
                    "max_associations": MAX_ASSOCIATIONS},
        "storage": {"root": "storage", "min_free_bytes": 0},
        "database": {"url": "sqlite:///index.sqlite"},
        # Nothing here is meant to be analyzed: keep the worker idle during the test.
        "series": {"quiet_seconds": 3600, "torch_threads": 1},
        "peers": [{"ae_title": ECHO_AE, "permissions": ["store"]},
                  {"ae_title": FUZZ_AE, "permissions": ["store"]}],
    }, folder)
    node = Node(config)
    node.start()
    return RunningNode(node, port, folder, config.storage.root)


# --- PDU building (PS3.8 §9.3) ------------------------------------------------------------


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    """A PDU: type, reserved byte, 4-byte big-endian length (``length`` may lie)."""
    return struct.pack(">BBI", pdu_type, 0, len(body) if length is None else length) + body


def item(item_type: int, body: bytes, length: int | None = None) -> bytes:
    """A variable item or sub-item: type, reserved, 2-byte length (may lie)."""
    return struct.pack(">BBH", item_type, 0,
                       len(body) if length is None else length & 0xFFFF) + body


def presentation_context(context_id: int, abstract: str, syntaxes: Sequence[str]) -> bytes:
    sub = bytes([context_id, 0, 0, 0]) + item(0x30, abstract.encode())
    return item(0x20, sub + b"".join(item(0x40, ts.encode()) for ts in syntaxes))


def associate_rq(*, calling: bytes = FUZZ_AE.encode(), called: bytes = NODE_AE.encode(),
                 version: int = 1, contexts: bytes | None = None, max_pdu: int = 16384,
                 extra: bytes = b"", length: int | None = None) -> bytes:
    """An A-ASSOCIATE-RQ, valid unless told otherwise."""
    if contexts is None:
        contexts = (presentation_context(1, VERIFICATION, [IMPLICIT])
                    + presentation_context(3, CT_IMAGE, [EXPLICIT])
                    + presentation_context(5, CT_IMAGE, [IMPLICIT]))
    user = item(0x51, struct.pack(">I", max_pdu & 0xFFFFFFFF)) + item(0x52, b"1.2.3.4")
    body = (struct.pack(">HH", version & 0xFFFF, 0) + called[:16].ljust(16)
            + calling[:16].ljust(16) + bytes(32) + item(0x10, APPLICATION_CONTEXT.encode())
            + contexts + item(0x50, user) + extra)
    return pdu(0x01, body, length)


def _implicit(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def command_set(field: int, sop_class: str, *, has_dataset: bool, message_id: int = 1) -> bytes:
    """A DIMSE command set (implicit VR little endian) for C-ECHO-RQ or C-STORE-RQ."""
    uid = sop_class.encode()
    elements = _implicit(0x00000002, uid + b"\x00" * (len(uid) % 2))
    elements += _implicit(0x00000100, struct.pack("<H", field))
    elements += _implicit(0x00000110, struct.pack("<H", message_id))
    if field == 0x0001:
        elements += _implicit(0x00000700, struct.pack("<H", 0))
    elements += _implicit(0x00000800, struct.pack("<H", 0x0000 if has_dataset else 0x0101))
    if field == 0x0001:
        elements += _implicit(0x00001000, b"1.2.3.4.5.6\x00")
    return _implicit(0x00000000, struct.pack("<I", len(elements))) + elements


def p_data(pdvs: Sequence[tuple[int, int, bytes]], *, pdv_length: int | None = None) -> bytes:
    """A P-DATA-TF of (context id, message control header, data) values."""
    body = b"".join(struct.pack(">IBB", len(data) + 2 if pdv_length is None else pdv_length,
                                context, control) + data
                    for context, control, data in pdvs)
    return pdu(0x04, body)


ECHO_COMMAND = command_set(0x0030, VERIFICATION, has_dataset=False)
STORE_COMMAND = command_set(0x0001, CT_IMAGE, has_dataset=True)


# --- talking to the node -------------------------------------------------------------------


def read_pdu_types(data: bytes) -> list[int]:
    """The types of the PDUs in a reply stream (a cut-off last PDU counts)."""
    types, at = [], 0
    while at + 6 <= len(data):
        pdu_type, _, length = struct.unpack(">BBI", data[at:at + 6])
        types.append(pdu_type)
        at += 6 + length
    return types


def _ended(data: bytes) -> bool:
    """True once ``data`` holds a complete A-ASSOCIATE-RJ or A-ABORT (the node is done)."""
    at = 0
    while at + 6 <= len(data):
        pdu_type, _, length = struct.unpack(">BBI", data[at:at + 6])
        if pdu_type in (0x03, 0x07) and at + 6 + length <= len(data):
            return True
        at += 6 + length
    return False


def _read_until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What the node sends until it closes or ends the exchange (True), or time is up (False).

    After an A-ABORT or A-ASSOCIATE-RJ the node waits for the peer to close, as PS3.8
    prescribes, so those count as ended without waiting out its ARTIM timer.
    """
    data = b""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except OSError:  # reset by the node: closed as well
            return data, True
        if not chunk:
            return data, True
        data += chunk
        if _ended(data):
            return data, True


def read_one_pdu(sock: socket.socket, seconds: float = 5.0) -> bytes:
    sock.settimeout(seconds)
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return head
        head += chunk
    _, _, length = struct.unpack(">BBI", head)
    body = b""
    while len(body) < length:
        chunk = sock.recv(min(65536, length - len(body)))
        if not chunk:
            break
        body += chunk
    return head + body


def exchange(port: int, chunks: Sequence[bytes], *, establish: bool = False,
             close_within: float = NODE_TIMEOUT_S + 3.0) -> list[int]:
    """Send ``chunks`` on one connection, half-close, and return the reply PDU types.

    ``establish`` first negotiates a real association (and checks it was accepted). The
    node must close the connection by itself within ``close_within`` seconds.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        types: list[int] = []
        if establish:
            sock.sendall(associate_rq())
            accepted = read_one_pdu(sock)
            assert accepted[:1] == b"\x02", f"association not accepted: {accepted[:16]!r}"
            types.append(0x02)
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:  # the node already closed on us: that is allowed
                break
        with contextlib.suppress(OSError):  # already closed by the node
            sock.shutdown(socket.SHUT_WR)
        data, closed = _read_until_closed(sock, close_within)
    assert closed, "the node kept a half-closed connection open"
    types += read_pdu_types(data)
    unexpected = set(types) - REPLY_TYPES
    assert not unexpected, f"unexpected reply PDU types {sorted(unexpected)}"
    return types


def echo_status(port: int) -> int | None:
    """C-ECHO status from a configured peer, None when no association or no response."""
    ae = AE(ae_title=ECHO_AE)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status and "Status" in status else None
    finally:
        assoc.release()


def wait_drained(running: RunningNode, at_most: int = 0,
                 within: float = NODE_TIMEOUT_S + 5.0) -> None:
    """Wait until the node serves at most ``at_most`` associations (fails after ``within``)."""
    deadline = time.monotonic() + within
    while len(running.node.ae.active_associations) > at_most and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(running.node.ae.active_associations) <= at_most, "associations left hanging"


def assert_healthy(running: RunningNode) -> None:
    """Connections drained, storage empty, and a C-ECHO answered with success."""
    wait_drained(running)
    assert echo_status(running.port) == 0x0000, "the node no longer answers C-ECHO"
    assert running.stored_files() == [], "malformed PDUs left files in the storage"
    assert running.stray_files() == [], "files written outside the storage"


# --- hand-written inputs -------------------------------------------------------------------


def _truncations(data: bytes, step: int) -> list[bytes]:
    return [data[:n] for n in range(1, len(data), step)]


#: name → (chunks sent on one connection, whether a real association comes first).
HANDWRITTEN: dict[str, tuple[list[bytes], bool]] = {
    "garbage": ([b"\x13\x37" * 300], False),
    "http request": ([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], False),
    "tls client hello": ([bytes.fromhex("16030100a5010000a10303") + bytes(160)], False),
    "pdu type 0xff": ([pdu(0xFF, b"x" * 20)], False),
    "pdu type 0x00": ([pdu(0x00, b"")], False),
    "pdu type 0x08": ([pdu(0x08, b"\x00" * 10)], False),
    "one byte": ([b"\x01"], False),
    "header only": ([b"\x01\x00\x00\x00"], False),
    "zero-length rq": ([pdu(0x01, b"")], False),
    "4 GiB length then close": ([pdu(0x01, b"", 0xFFFFFFFF)], False),
    "huge length with some body": ([pdu(0x04, b"\x00" * 100, 0x7FFFFFFF)], False),
    "many zero bytes": ([bytes(1 << 20)], False),
    "rq with absurd pdu length": ([associate_rq(length=0xFFFFFFF0)], False),
    "rq with short pdu length": ([associate_rq(length=10)], False),
    "rq with absurd item length": ([associate_rq(contexts=item(0x20, b"\x01\x00\x00\x00",
                                                               0xFFFF))], False),
    "rq with sub-item overrunning": ([associate_rq(
        contexts=item(0x20, b"\x01\x00\x00\x00" + item(0x30, b"1.2", 0xFFF0)))], False),
    "rq with no contexts": ([associate_rq(contexts=b"")], False),
    "rq with even context id": ([associate_rq(
        contexts=presentation_context(2, VERIFICATION, [IMPLICIT]))], False),
    "rq with 300 contexts": ([associate_rq(contexts=b"".join(
        presentation_context(1 + 2 * (i % 128), VERIFICATION, [IMPLICIT])
        for i in range(300)))], False),
    "rq with 64 KiB uid": ([associate_rq(contexts=presentation_context(
        1, "1." * 30000, [IMPLICIT]))], False),
    "rq with max pdu 0": ([associate_rq(max_pdu=0)], False),
    "rq with max pdu 1": ([associate_rq(max_pdu=1)], False),
    "rq protocol version 0": ([associate_rq(version=0)], False),
    "rq from unknown ae": ([associate_rq(calling=b"INTRUDER")], False),
    "rq to wrong ae": ([associate_rq(called=b"SOMEONE_ELSE")], False),
    "rq with NUL ae titles": ([associate_rq(calling=b"\x00" * 16, called=b"\x00" * 16)],
                              False),
    "rq with unknown items": ([associate_rq(extra=item(0x99, b"x" * 40)
                                            + item(0x00, b""))], False),
    "ac sent to the node": ([pdu(0x02, bytes(68))], False),
    "rj sent to the node": ([pdu(0x03, b"\x00\x01\x01\x01")], False),
    "p-data before association": ([p_data([(1, 0x03, ECHO_COMMAND)])], False),
    "release before association": ([pdu(0x05, bytes(4))], False),
    "abort before association": ([pdu(0x07, bytes(4))], False),
    "two rqs": ([associate_rq(), associate_rq()], False),
    "rq then garbage": ([associate_rq(), b"\xde\xad\xbe\xef" * 64], False),
    "association then garbage": ([b"\xde\xad\xbe\xef" * 64], True),
    "association then rq again": ([associate_rq()], True),
    "association then p-data of garbage": ([p_data([(1, 0x03, b"\xff" * 50)])], True),
    "p-data on unknown context": ([p_data([(99, 0x03, ECHO_COMMAND)])], True),
    "p-data with zero-length pdv": ([p_data([(1, 0x03, b"")], pdv_length=0)], True),
    "p-data with pdv overrunning": ([p_data([(1, 0x03, ECHO_COMMAND)], pdv_length=1 << 20)],
                                    True),
    "p-data with bad control header": ([p_data([(1, 0xFC, ECHO_COMMAND)])], True),
    "dataset before command": ([p_data([(3, 0x02, b"\x08\x00\x18\x00")])], True),
    "store command, garbage dataset": ([p_data([(3, 0x03, STORE_COMMAND)]),
                                        p_data([(3, 0x02, b"\x08\x00\x18\x00UI\x04\x00..\x00")])],
                                       True),
    "store command, no dataset": ([p_data([(3, 0x03, STORE_COMMAND)]), pdu(0x05, bytes(4))],
                                  True),
    "echo then 4 GiB pdu": ([p_data([(1, 0x03, ECHO_COMMAND)]), pdu(0x04, b"", 0xFFFFFFFF)],
                            True),
    "release rp unasked": ([pdu(0x06, bytes(4))], True),
    "abort with garbage reason": ([pdu(0x07, b"\xff\xff\xff\xff")], True),
}
#: Every prefix of a valid request, each on its own connection.
TRUNCATED_RQ = _truncations(associate_rq(), 7)


# --- randomized PDU streams ----------------------------------------------------------------

lengths = st.none() | st.sampled_from((0, 1, 5, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)) \
    | st.integers(0, 0xFFFFFFFF)
ae_titles = st.sampled_from((FUZZ_AE.encode(), ECHO_AE.encode(), NODE_AE.encode(), b"",
                             b"\x00" * 16, b"\xff" * 16, b"A" * 40)) | st.binary(max_size=20)
uids = st.sampled_from((VERIFICATION, CT_IMAGE, IMPLICIT, EXPLICIT, "", "1." * 40, "\x00",
                        "../../x")) | st.text(max_size=70)
contexts = st.lists(st.builds(
    presentation_context, st.integers(0, 255), uids, st.lists(uids, max_size=3)),
    max_size=4).map(b"".join) | st.binary(max_size=200) | st.builds(
    item, st.integers(0, 255), st.binary(max_size=100), lengths)
associate_requests = st.builds(
    lambda calling, called, version, ctx, max_pdu, extra, length: associate_rq(
        calling=calling, called=called, version=version, contexts=ctx, max_pdu=max_pdu,
        extra=extra, length=length),
    ae_titles, ae_titles, st.sampled_from((1, 0, 2, 0xFFFF)), st.none() | contexts,
    st.sampled_from((0, 1, 16384, 0xFFFFFFFF)) | st.integers(0, 2**32 - 1),
    st.just(b"") | st.builds(item, st.integers(0, 255), st.binary(max_size=64), lengths),
    st.none() | st.none() | lengths)
pdv_payloads = st.sampled_from((ECHO_COMMAND, STORE_COMMAND, b"")) | st.binary(max_size=300)
p_datas = st.builds(
    lambda pdvs, pdv_length: p_data(pdvs, pdv_length=pdv_length),
    st.lists(st.tuples(st.sampled_from((1, 3, 5, 0, 2, 255)) | st.integers(0, 255),
                       st.sampled_from((0, 1, 2, 3)) | st.integers(0, 255), pdv_payloads),
             min_size=0, max_size=3),
    st.none() | st.none() | st.integers(0, 2**32 - 1))
other_pdus = st.builds(pdu, st.sampled_from((0x02, 0x03, 0x05, 0x06, 0x07, 0x00, 0x08, 0xFF))
                       | st.integers(0, 255), st.binary(max_size=64), lengths)
pieces = st.one_of(associate_requests, p_datas, other_pdus, st.binary(min_size=1, max_size=256))


@dataclass(frozen=True)
class PduInput:
    """One connection's worth of hostile bytes (hypothesis prints it on failure)."""

    establish: bool
    chunks: tuple[bytes, ...]
    cut: int | None
    flip: tuple[int, int] | None

    def stream(self) -> list[bytes]:
        data = b"".join(self.chunks)
        if self.flip is not None and data:
            at = self.flip[0] % len(data)
            data = data[:at] + bytes([data[at] ^ (self.flip[1] or 1)]) + data[at + 1:]
        if self.cut is not None:
            data = data[:self.cut % (len(data) + 1)]
        return [data]


pdu_inputs = st.builds(PduInput, st.booleans(), st.lists(pieces, min_size=1, max_size=4)
                       .map(tuple), st.none() | st.integers(0, 4096),
                       st.none() | st.tuples(st.integers(0, 4096), st.integers(0, 255)))


# --- hostile datasets as real C-STOREs -----------------------------------------------------

STORAGE_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1",
                   "1.2.840.10008.5.1.4.1.1.2.2", "1.2.840.10008.5.1.4.1.1.4",
                   "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.11",
                   "1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.104.1",
                   "1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.5.1.4.1.1.11.1",
                   "1.2.840.10008.5.1.4.1.1.88.59")
WIRE_SYNTAXES = (IMPLICIT, EXPLICIT, "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")
#: Failure statuses that misreport a bad instance: "retry later" and "the handler crashed".
MISLEADING = {0xA700: "out of resources", 0xC211: "handler raised an exception"}


class StoreClient:
    """One association from FUZZSCU that sends files byte for byte (reopened when lost)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ae = AE(ae_title=FUZZ_AE)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 10
        for sop_class in STORAGE_CLASSES:
            for syntax in WIRE_SYNTAXES:
                # One context per pair: a file is sent only in its own transfer syntax.
                self.ae.add_requested_context(sop_class, syntax)
        self.assoc = self.ae.associate("127.0.0.1", port, ae_title=NODE_AE)

    def send(self, path: Path) -> int | None:
        """The C-STORE status; None when the file cannot be sent as it is (checked locally)."""
        if not self.assoc.is_established:
            self.assoc = self.ae.associate("127.0.0.1", self.port, ae_title=NODE_AE)
            assert self.assoc.is_established, "the node refuses new associations"
        try:
            status = self.assoc.send_c_store(path)
        except (InvalidDicomError, ValueError, AttributeError, TypeError, KeyError, OSError,
                EOFError, NotImplementedError, IndexError, struct.error):
            # pynetdicom cannot read the file meta or finds no matching context: not sent.
            return None
        assert status and "Status" in status, "no C-STORE response (association lost)"
        return int(status.Status)

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()

# The file meta must survive for pynetdicom to send the file at all: the layout keeps it and
# byte damage stays in the dataset (``keep_meta``); edits may still contradict it.
wire_inputs = recipes().map(lambda r: Recipe(r.edits, Layout(r.layout.encoding, None, True,
                                                              True), r.damage))
