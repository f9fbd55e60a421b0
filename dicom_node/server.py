"""The node: one Application Entity wired to storage, index, tracking, analysis and forwarding.

:class:`Node` owns the long-lived parts and their start/stop order. At start-up it first makes
the storage consistent and resumes the series the previous process left
(:mod:`dicom_node.recovery`), then listens with the AE of
:func:`dicom_node.application_entity.build_ae`.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC
from pathlib import Path
from typing import Literal

from apscheduler.schedulers.background import BackgroundScheduler
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.adaptation import AdaptationSchedule
from dicom_node.analysis_worker import AnalysisWorker
from dicom_node.application_entity import build_ae, listen
from dicom_node.cluster import Membership, Sweeper
from dicom_node.config import ConfigError, NodeConfig
from dicom_node.forwarding import Forwarder
from dicom_node.index import Index, Series, SeriesState
from dicom_node.metrics import NodeMetrics
from dicom_node.query import QueryRetrieveService
from dicom_node.receive import StoreService
from dicom_node.recovery import recover_series, recover_storage
from dicom_node.series_tracking import SeriesTracker
from dicom_node.storage import FileStore
from dicom_node.web import build_app
from dicom_node.web_server import WebServer

log = logging.getLogger(__name__)

#: What one node process does (``bpr serve --role``).
Role = Literal["all", "receiver", "worker"]
ROLES: tuple[Role, ...] = ("all", "receiver", "worker")


def _leave_to_workers(series_pk: int) -> None:
    """A receiver's completed series stay QUEUED for the workers' sweep."""


class Node:
    """The running DICOM node.

    Parameters
    ----------
    config : NodeConfig
        Validated configuration (:func:`dicom_node.config.load_config`).
    config_path : Path, optional
        The file it came from; scheduled adaptation runs read it (``adaptation.enabled``
        needs it).
    role : {"all", "receiver", "worker"}
        ``all`` receives, analyzes and forwards; ``receiver`` listens and queues completed
        series, which the ``worker`` processes sharing its index analyze (a worker does not
        listen). Every role forwards SRs; scheduled adaptation runs only in ``all``.
    """

    def __init__(self, config: NodeConfig, config_path: Path | None = None,
                 role: Role = "all") -> None:
        if config.adaptation.enabled and config_path is None and role == "all":
            raise ConfigError("adaptation.enabled needs the configuration file's path")
        self.config = config
        self.role = role
        self.index = Index(config.database.url)
        self.store = FileStore(config.storage.root, config.storage.min_free_bytes)
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.membership = Membership(self.index, role)
        self.metrics = NodeMetrics(self.index, self.store)
        self.worker = AnalysisWorker(self.index, self.store, config,
                                     on_finished=self._analysis_finished,
                                     owner=self.membership.id, metrics=self.metrics)
        analyzes = role != "receiver"
        self.tracker = SeriesTracker(self.index, self.scheduler, config.series.quiet_seconds,
                                     self.worker.submit if analyzes else _leave_to_workers)
        self.sweeper = (Sweeper(self.index, config.series.quiet_seconds,
                                config.series.sweep_seconds, self.worker.submit,
                                me=self.membership.id, busy=self.worker.busy)
                        if analyzes else None)
        self.forwarder = Forwarder(self.index, self.store, config)
        self.store_service = StoreService(self.index, self.store, config,
                                          on_stored=self.tracker.on_stored,
                                          metrics=self.metrics)
        self.query_service = QueryRetrieveService(self.index, self.store, config)
        self.adaptation = (AdaptationSchedule(self.index, self.store, config, config_path)
                           if config_path is not None and role == "all" else None)
        self.ae = build_ae(config)
        self._server: ThreadedAssociationServer | None = None
        self._acceptor: threading.Thread | None = None
        self.web = (WebServer(build_app(self.index, self.store, config, self.metrics,
                                        self._listening), config)
                    if config.web.enabled else None)

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0 in tests)."""
        assert self._server is not None, "node not started"
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Recover, then listen (returns at once; the server runs in threads)."""
        self.membership.join()
        if self.role != "worker":
            recover_storage(self.index, self.store, self.config)
        self.scheduler.start()
        self.forwarder.start(self.scheduler)
        if self.adaptation is not None:
            self.adaptation.start(self.scheduler)
        counts = recover_series(self.index, self.tracker)
        log.info("recovered series: %s", counts)
        if self.sweeper is not None:
            self.scheduler.add_job(self.sweeper.sweep, "interval",
                                   seconds=self.config.series.sweep_seconds, id="bpr-sweep",
                                   max_instances=1, coalesce=True)
        if self.web is not None:
            self.web.start()
            log.info("web view on %s://%s:%d", "https" if self.web.https else "http",
                     self.config.web.host, self.web.port)
        if self.role == "worker":
            log.info("analysis worker %s started", self.membership.id)
            return
        self._server = listen(self.ae, self.config, [*self.store_service.handlers(),
                                                     *self.query_service.handlers()])
        self._acceptor = threading.Thread(target=self._server.serve_forever,
                                          name="bpr-acceptor", daemon=True)
        self._acceptor.start()
        net = self.config.network
        log.info("listening as %s on %s:%d", net.ae_title, net.host, self.port)

    def _listening(self) -> bool | None:
        """Whether the DICOM acceptor runs (None: a worker does not listen)."""
        if self.role == "worker":
            return None
        return self._acceptor is not None and self._acceptor.is_alive()

    def stop(self) -> None:
        """Stop listening, finish running analyses, stop timers, close the index."""
        if self.web is not None:
            self.web.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self.adaptation is not None:
            self.adaptation.stop()
        self.worker.shutdown(wait=True)
        self.forwarder.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.membership.leave()
        self.index.close()

    def _analysis_finished(self, series_pk: int, state: SeriesState, sr_pk: int | None) -> None:
        if state is SeriesState.RECEIVING:
            with self.index.session() as session:
                series = session.get_one(Series, series_pk)
                last = series.last_received_at
            self.tracker.schedule(series_pk, last)
        if sr_pk is not None:
            self.forwarder.trigger()
