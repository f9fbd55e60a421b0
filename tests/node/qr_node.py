"""A Query/Retrieve node over a synthetic index, and the pynetdicom SCUs that talk to it.

:func:`serving` ingests small synthetic instances (:mod:`tests.synthetic_index`) into a SQLite
index and a file store and serves them with a pynetdicom AE running the node's
QueryRetrieveService handlers on a free local port; a pynetdicom storage SCP is the C-MOVE
destination. Patient names cover mixed case, ``_`` and ``%``, and a hyphen that an unescaped
``_`` would match. Shared by the C-FIND and retrieve tests, the DCMTK checks and (for the
identifiers and handler events) the PostgreSQL tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import select

from dicom_node.application_entity import build_ae
from dicom_node.config import NodeConfig, config_from_dict
from dicom_node.index import Index, Instance, Series
from dicom_node.query import QueryRetrieveService
from dicom_node.statuses import PENDING
from dicom_node.storage import FileStore
from tests.node_harness import free_port
from tests.synthetic_index import Spec, populate, series_uid, sop_uid

NODE_AE = "BPR_NODE"
STORAGE_CLASSES = (CTImageStorage, MRImageStorage)


SPECS = (
    Spec("S1", "Doe^John", "PID001", "20200101", "ACC_1", "CT Chest", "101530",
         (("CT", 1, 3, "CHEST"), ("MR", 2, 1, ""))),
    Spec("S2", "Doe^John", "PID001", "20201231", "ACC%2", "ct chest"),
    Spec("S3", "Smith_Jones^Ann", "PID_2", "19991231", "ACCX1", "Head"),
    Spec("S4", "Smith-Jones^Bob", "PIDX2", "20210615", "ACCY1", "Head"),
    Spec("S5", "100%^Pure", "PID%4", "20220202"),
    Spec("S6", "DOE^JANE", "PID005", "20230303", charset="ISO_IR 192"),
    Spec("S7", "Broken^File", "PID007", "20240404"),
    Spec("S8", "Jörg^Müller", "PID008", "20250505", charset="ISO_IR 192"),
)


@dataclass
class Node:
    """The running test node and its peers."""

    index: Index
    store: FileStore
    config: NodeConfig
    service: QueryRetrieveService
    port: int
    dcmtk_port: int
    received: list[str] = field(default_factory=list)


@contextmanager
def serving(base: Path) -> Iterator[Node]:
    """The node over :data:`SPECS` in ``base``, for the duration of the block."""
    index = Index(f"sqlite:///{base / 'index.sqlite'}")
    store = FileStore(base / "storage")
    populate(index, store, SPECS)
    with index.session() as session:
        # The node analysed S2's series and found another body part than the one received.
        found = session.scalars(select(Series).where(
            Series.series_instance_uid == series_uid("S2", 1))).one()
        found.corrected_body_part = "ABDOMEN"
        broken = session.scalars(select(Instance).where(
            Instance.sop_instance_uid == sop_uid("S7", 1, 1))).one()
        store.absolute(broken.path).write_bytes(b"not a DICOM file")

    received: list[str] = []
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        with lock:
            received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    destination = AE("STORE_DEST")
    for sop_class in (*STORAGE_CLASSES, Verification):
        destination.add_supported_context(sop_class)
    dest_server = destination.start_server(("127.0.0.1", 0), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert dest_server is not None
    dcmtk_port = free_port()
    config = config_from_dict({"network": {
        "ae_title": NODE_AE, "acse_timeout_s": 10, "dimse_timeout_s": 10,
        "network_timeout_s": 10}, "peers": [
        {"ae_title": "QR_SCU", "permissions": ["find", "move", "get"]},
        {"ae_title": "FIND_ONLY", "permissions": ["find"]},
        {"ae_title": "STORE_DEST", "host": "127.0.0.1",
         "port": dest_server.server_address[1], "permissions": ["store"]},
        {"ae_title": "DCMTK_DEST", "host": "127.0.0.1", "port": dcmtk_port},
        {"ae_title": "NO_PORT", "host": "", "port": 0, "permissions": ["find"]},
    ]}, base)
    service = QueryRetrieveService(index, store, config)
    ae = build_ae(config)
    # The node's AE refuses unknown calling AE titles at association; these tests reach the
    # handlers' own permission check behind it.
    ae.require_calling_aet = []
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=service.handlers())
    assert server is not None
    try:
        yield Node(index, store, config, service, server.server_address[1], dcmtk_port,
                   received)
    finally:
        server.shutdown()
        dest_server.shutdown()
        index.close()


# -- SCU helpers -----------------------------------------------------------------------------


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    if level:
        ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def associate(node: Node, ae_title: str, contexts: tuple[Any, ...], **kwargs: Any) -> Any:
    ae = AE(ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for context in contexts:
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE, **kwargs)
    assert assoc.is_established
    return assoc


def find(node: Node, query: Dataset, model: Any = StudyRootQueryRetrieveInformationModelFind,
         ae_title: str = "QR_SCU") -> tuple[list[Dataset], int]:
    """Pending identifiers and the final status of one C-FIND."""
    assoc = associate(node, ae_title, (model,))
    try:
        matches, final = [], -1
        for status, found in assoc.send_c_find(query, model):
            if status.Status == PENDING:
                matches.append(found)
            else:
                final = int(status.Status)
        return matches, final
    finally:
        assoc.release()


def values(matches: list[Dataset], keyword: str) -> set[str]:
    return {str(ds.get(keyword, "")) for ds in matches}


def get(node: Node, query: Dataset, ae_title: str = "QR_SCU",
        model: Any = StudyRootQueryRetrieveInformationModelGet) -> tuple[list[str], Dataset]:
    """SOP Instance UIDs received by one C-GET and its final response."""
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    roles = [build_role(sop_class, scp_role=True) for sop_class in STORAGE_CLASSES]
    assoc = associate(node, ae_title, (model, *STORAGE_CLASSES), ext_neg=roles,
                      evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        responses = [status for status, _ in assoc.send_c_get(query, model)]
        return received, responses[-1]
    finally:
        assoc.release()


def move(node: Node, query: Dataset, destination: str, ae_title: str = "QR_SCU") -> Dataset:
    """The final response of one C-MOVE."""
    model = StudyRootQueryRetrieveInformationModelMove
    assoc = associate(node, ae_title, (model,))
    try:
        final: Dataset = [status for status, _ in assoc.send_c_move(query, destination,
                                                                     model)][-1]
        return final
    finally:
        assoc.release()


def stub_event(query: Dataset, sop_class: str, ae_title: str = "QR_SCU", *,
               cancelled: bool = False, destination: str | None = None) -> Any:
    """What the handlers read from a pynetdicom event, for calling them directly."""
    return SimpleNamespace(
        identifier=query, is_cancelled=cancelled, move_destination=destination,
        assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title=ae_title)),
        request=SimpleNamespace(AffectedSOPClassUID=sop_class))
