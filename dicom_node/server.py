"""The node: one Application Entity wired to storage, index, tracking, analysis and forwarding.

:class:`Node` owns the long-lived parts and their start/stop order. At start-up it first makes
the storage consistent (crash leftovers removed, complete files that never got their index row
stored again), then recomputes from the index which series are due, then listens.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from datetime import UTC
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    QueryRetrievePresentationContexts,
    VerificationPresentationContexts,
    evt,
)
from pynetdicom import _config as pynetdicom_config
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select

from dicom_node.analysis_worker import AnalysisWorker
from dicom_node.config import NodeConfig
from dicom_node.forwarding import Forwarder
from dicom_node.index import Index, Instance, Series, SeriesState
from dicom_node.ingest import BadInstanceError, ingest, read_header
from dicom_node.query import QueryRetrieveService
from dicom_node.receive import StoreService
from dicom_node.security import server_ssl_context
from dicom_node.series_tracking import SeriesTracker
from dicom_node.storage import FileStore

log = logging.getLogger(__name__)

# pynetdicom logs whole C-FIND/C-MOVE identifiers (patient names, IDs) by default: no PHI in logs.
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with two guards against peers that stall.

    pynetdicom does the TLS handshake on the single accept thread and leaves accepted sockets
    without a timeout, so one silent TCP connection blocks every TLS client, and a peer that
    stops in the middle of a PDU holds an association slot forever. Here every accepted socket
    gets ``socket_timeout_s`` and the handshake runs in the connection's own thread.
    """

    def __init__(self, ae: AE, address: tuple[str, int], ae_title: str, contexts: Any,
                 ssl_context: ssl.SSLContext | None = None, *, socket_timeout_s: float,
                 **kwargs: Any) -> None:
        self._tls_context = ssl_context
        self._socket_timeout_s = socket_timeout_s
        super().__init__(ae, address, ae_title, contexts, None, **kwargs)

    def shutdown(self) -> None:
        """Stop serving and close the socket (built by make_server, the AE does not list it)."""
        socketserver.TCPServer.shutdown(self)
        self.server_close()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept without the handshake (that would block the accept loop)."""
        assert self.socket is not None
        client, address = self.socket.accept()
        client.settimeout(self._socket_timeout_s)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """TLS handshake (bounded by the socket timeout), then pynetdicom's handling."""
        if self._tls_context is not None:
            try:
                request = self._tls_context.wrap_socket(request, server_side=True)
            except OSError:  # ssl.SSLError and timeouts: a failed or stalled handshake
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


class Node:
    """The running DICOM node.

    Parameters
    ----------
    config : NodeConfig
        Validated configuration (:func:`dicom_node.config.load_config`).
    """

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.index = Index(config.database.url)
        self.store = FileStore(config.storage.root, config.storage.min_free_bytes)
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.worker = AnalysisWorker(self.index, self.store, config,
                                     on_finished=self._analysis_finished)
        self.tracker = SeriesTracker(self.index, self.scheduler, config.series.quiet_seconds,
                                     self.worker.submit)
        self.forwarder = Forwarder(self.index, self.store, config)
        self.store_service = StoreService(self.index, self.store, config,
                                          on_stored=self.tracker.on_stored)
        self.query_service = QueryRetrieveService(self.index, self.store, config)
        self.ae = self._application_entity()
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0 in tests)."""
        assert self._server is not None, "node not started"
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Recover, then listen (returns at once; the server runs in threads)."""
        self.recover_storage()
        self.scheduler.start()
        self.forwarder.start(self.scheduler)
        counts = self.tracker.recover()
        log.info("recovered series: %s", counts)
        net = self.config.network
        self._server = self.ae.make_server(
            (net.host, net.port), ssl_context=server_ssl_context(self.config),
            server_class=GuardedAssociationServer, socket_timeout_s=net.network_timeout_s,
            evt_handlers=[
                (evt.EVT_C_ECHO, self.store_service.handle_echo),
                (evt.EVT_C_STORE, self.store_service.handle_store),
                (evt.EVT_C_FIND, self.query_service.handle_find),
                (evt.EVT_C_MOVE, self.query_service.handle_move),
                (evt.EVT_C_GET, self.query_service.handle_get),
            ])
        threading.Thread(target=self._server.serve_forever, name="bpr-acceptor",
                         daemon=True).start()
        log.info("listening as %s on %s:%d", net.ae_title, net.host, self.port)

    def stop(self) -> None:
        """Stop listening, finish running analyses, stop timers, close the index."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.worker.shutdown(wait=True)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.index.close()

    def recover_storage(self) -> dict[str, int]:
        """Remove crash leftovers and index complete files that lost their index row.

        A complete file without an index row was never acknowledged (the row is written
        before the success status), but it is valid data, so it is kept rather than lost.
        Only day folders changed since the last complete scan are visited
        (:meth:`FileStore.changed_day_folders`): a crash can leave nothing elsewhere.
        """
        started = time.time()
        counts = {"folders_scanned": 0, "partials_removed": 0, "orphans_indexed": 0,
                  "orphans_unreadable": 0, "orphans_kept": 0}
        for folder in self.store.changed_day_folders(self.store.read_watermark()):
            removed, files = self.store.scan_folder(folder)
            counts["folders_scanned"] += 1
            counts["partials_removed"] += removed
            known = self._indexed_paths(folder)
            for relative in files:
                if relative not in known:
                    counts[self._index_orphan(relative)] += 1
        if counts["orphans_kept"] == 0:  # else retry them at the next start
            self.store.write_watermark(started)
        if any(v for k, v in counts.items() if k != "folders_scanned"):
            log.warning("storage recovery: %s", counts)
        return counts

    def _indexed_paths(self, folder: Path) -> set[str]:
        prefix = folder.relative_to(self.store.root).as_posix() + "/"
        # a range on the unique path index ("0" follows "/"), fast on SQLite and PostgreSQL
        with self.index.session() as session:
            return set(session.scalars(select(Instance.path).where(
                Instance.path >= prefix, Instance.path < prefix[:-1] + "0")))

    def _index_orphan(self, relative: str) -> str:
        path = self.store.absolute(relative)
        try:
            data = path.read_bytes()
            # Indexed where it lies: no second copy, so this works on a full disk too.
            result = ingest(self.index, self.store, data, read_header(data), source_ae="",
                            analyzed_modalities=self.config.series.analyzed_modalities,
                            stored_at=relative)
        except BadInstanceError:
            return "orphans_unreadable"
        except OSError:  # e.g. EIO reading it: keep it for the next start
            return "orphans_kept"
        if result.duplicate:  # the instance is indexed under another file
            path.unlink()
        return "orphans_indexed"

    def _application_entity(self) -> AE:
        net = self.config.network
        ae = AE(ae_title=net.ae_title)
        ae.maximum_associations = net.max_associations
        net.apply_to(ae)
        ae.require_called_aet = self.config.security.check_called_ae
        if self.config.security.require_known_peers:
            ae.require_calling_aet = [p.ae_title for p in self.config.peers]
        for verification in _abstract_syntaxes(VerificationPresentationContexts):
            ae.add_supported_context(verification)
        for storage_class in _abstract_syntaxes(AllStoragePresentationContexts):
            # scp_role: a C-GET requestor acts as Storage SCP for what it retrieves.
            ae.add_supported_context(storage_class, ALL_TRANSFER_SYNTAXES,
                                     scu_role=False, scp_role=True)
        for query_class in _abstract_syntaxes(QueryRetrievePresentationContexts):
            ae.add_supported_context(query_class)
        return ae

    def _analysis_finished(self, series_pk: int, state: SeriesState, sr_pk: int | None) -> None:
        if state is SeriesState.RECEIVING:
            with self.index.session() as session:
                series = session.get_one(Series, series_pk)
                last = series.last_received_at
            self.tracker.schedule(series_pk, last)
        if sr_pk is not None:
            self.forwarder.trigger()


def _abstract_syntaxes(contexts: list[PresentationContext]) -> list[str]:
    return [str(c.abstract_syntax) for c in contexts if c.abstract_syntax]
