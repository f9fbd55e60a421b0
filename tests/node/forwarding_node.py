"""The forwarder over an index and a file store, with SRs to forward (no network of its own).

Shared by the forwarding tests against scripted pynetdicom peers and against DCMTK
``storescp``; :func:`peer` is the configuration entry of a destination on a local port.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from dicom_node.config import NodeConfig, config_from_dict
from dicom_node.forwarding import Forwarder, enqueue_forwards
from dicom_node.headers import read_header
from dicom_node.index import ForwardJob, ForwardState, Index, Instance
from dicom_node.ingest import ingest
from dicom_node.storage import FileStore
from tests.dicom_factory import basic_text_sr

T0 = 1_700_000_000.0
PACS = "PACS"


class Node:
    """An index, a file store, a configuration and the forwarder over them."""

    def __init__(self, tmp_path: Path, peers: list[dict[str, Any]], **forwarding: Any) -> None:
        self.config: NodeConfig = config_from_dict({
            "network": {"ae_title": "BPR_NODE", "acse_timeout_s": 5, "dimse_timeout_s": 5,
                        "network_timeout_s": 5},
            "forwarding": {"initial_delay_s": 10, "max_delay_s": 600, "max_attempts": 5,
                           **forwarding},
            "peers": peers,
        }, tmp_path)
        self.index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}")
        self.store = FileStore(tmp_path / "storage")
        self.forwarder = Forwarder(self.index, self.store, self.config)

    def add_sr(self, now: float = T0) -> int:
        """Ingest a fresh SR and queue it; returns its instance primary key."""
        data = basic_text_sr()
        result = ingest(self.index, self.store, data, read_header(data), source_ae="",
                        analyzed_modalities=("CT",), now=now)
        with self.index.session() as session:
            enqueue_forwards(session, result.instance_pk, self.config, now)
        return result.instance_pk

    def job(self, instance_pk: int, destination: str = PACS) -> ForwardJob:
        with self.index.session() as session:
            return session.scalars(select(ForwardJob).where(
                ForwardJob.instance_pk == instance_pk,
                ForwardJob.destination == destination)).one()

    def status_counts(self) -> dict[ForwardState, int]:
        """Jobs per state (every state listed, zero included)."""
        counts = dict.fromkeys(ForwardState, 0)
        with self.index.session() as session:
            rows = session.execute(
                select(ForwardJob.state, func.count()).group_by(ForwardJob.state))
            for state, count in rows:
                counts[ForwardState(state)] = int(count)
        return counts

    def sop_uid(self, instance_pk: int) -> str:
        with self.index.session() as session:
            instance = session.get(Instance, instance_pk)
            assert instance is not None
            return instance.sop_instance_uid

    def path(self, instance_pk: int) -> Path:
        with self.index.session() as session:
            instance = session.get(Instance, instance_pk)
            assert instance is not None
            return self.store.absolute(instance.path)


def peer(port: int, title: str = PACS, forward_sr: bool = True) -> dict[str, Any]:
    return {"ae_title": title, "host": "127.0.0.1", "port": port, "forward_sr": forward_sr}
