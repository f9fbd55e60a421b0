"""A running :class:`dicom_node.server.Node` with security peers, and pynetdicom SCUs for it.

Shared by the node's security and TLS tests and the DCMTK checks of the same rules: the node
runs in this process on a free local port with short timeouts, and ``series.quiet_seconds`` is
an hour, so no analysis ever starts and no model is loaded. TLS material (a throwaway CA, a
server certificate, client certificates from that CA and from a foreign one) is made with the
``openssl`` command line tool.
"""

from __future__ import annotations

import logging
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    Verification,
)

from dicom_node.config import config_from_dict
from dicom_node.headers import read_header
from dicom_node.ingest import ingest
from dicom_node.server import Node
from tests.dicom_factory import ct_instance, part10_bytes
from tests.needs import require_tool
from tests.node_harness import free_port

NODE_AE = "BPR_NODE"
SUCCESS = 0x0000

#: Values that must never reach a log record; distinctive so a hit cannot be a coincidence.
PHI_NAME = "Quixotic^Zebulon"
PHI_ID = "PHI-7731-XQ"

PEERS: list[dict[str, Any]] = [
    {"ae_title": "STORE_ONLY", "permissions": ["store"]},
    {"ae_title": "FIND_ONLY", "permissions": ["find"]},
    {"ae_title": "QR_ALL", "permissions": ["find", "move", "get"]},
    {"ae_title": "FULL"},
]


# -- the node --------------------------------------------------------------------------------


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
        "web": {"port": 0},
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


# -- a node holding one study, with a move destination ---------------------------------------


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


@contextmanager
def serving(base: Path) -> Iterator[Served]:
    """A node holding one study; MOVE_DEST, a storage SCP, records what it is sent."""
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
            data = part10_bytes(held)
            ingest(node.index, node.store, data, read_header(data), source_ae="FULL",
                   analyzed_modalities=("CT",))
            yield Served(node, str(held.StudyInstanceUID), received)
    finally:
        dest_server.shutdown()


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


def make_pki(folder: Path) -> Pki:
    """A CA, the server's certificate and two client certificates (one from another CA)."""
    require_tool("openssl")
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

# -- no PHI in logs --------------------------------------------------------------------------


def phi_records(records: list[logging.LogRecord]) -> list[str]:
    """The records that mention the test's patient name or ID (none may)."""
    leaks = []
    for record in records:
        text = record.getMessage() + (record.exc_text or "")
        if any(value in text for value in (PHI_NAME, PHI_ID, "Quixotic", "Zebulon")):
            leaks.append(f"{record.name}:{record.levelname}: {text[:120]}")
    return leaks
