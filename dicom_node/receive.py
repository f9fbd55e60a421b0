"""C-ECHO and C-STORE: receive instances and acknowledge only what is durably stored.

The handler takes the dataset as the peer encoded it (no decode/re-encode round trip), decodes
its header once to validate and index it, and answers success only after
:func:`dicom_node.ingest.ingest` has fsynced the file and committed the index row. Every
failure maps to a status (:mod:`dicom_node.statuses`) that tells the sender to keep its copy:

- ``OUT_OF_RESOURCES`` (0xA700) — storage full or below ``storage.min_free_bytes``, file or
  database write failed;
- ``DATA_SET_DOES_NOT_MATCH_SOP_CLASS`` (0xA900) — the dataset does not match the SOP class of
  the file meta;
- ``CANNOT_UNDERSTAND`` (0xC000) — the dataset cannot be decoded or lacks valid identifying
  UIDs (:func:`dicom_node.headers.read_header`, :func:`dicom_node.headers.identifying_uids`);
- ``NOT_AUTHORIZED`` (0x0124) — the calling AE lacks the ``store`` permission.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pynetdicom import evt
from pynetdicom.events import Event, EventHandlerType
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.config import NodeConfig
from dicom_node.headers import BadInstanceError, ae_title, read_header, short_uid
from dicom_node.index import Index
from dicom_node.ingest import IngestResult, ingest
from dicom_node.metrics import NodeMetrics
from dicom_node.security import allowed
from dicom_node.statuses import NOT_AUTHORIZED, OUT_OF_RESOURCES, SUCCESS
from dicom_node.storage import FileStore, OutOfSpaceError

log = logging.getLogger(__name__)


class StoreService:
    """The C-ECHO and C-STORE handlers.

    Parameters
    ----------
    index, store, config
        Where instances go and the node's configuration.
    on_stored : callable, optional
        Called with each new (non-duplicate) :class:`IngestResult` after it is durable; the
        series tracker uses it to (re)schedule series completion.
    metrics : NodeMetrics, optional
        Counts every answer (stored, duplicate, refused by status).
    """

    def __init__(self, index: Index, store: FileStore, config: NodeConfig,
                 on_stored: Callable[[IngestResult], None] | None = None,
                 metrics: NodeMetrics | None = None) -> None:
        self.index = index
        self.store = store
        self.config = config
        self.on_stored = on_stored
        self.metrics = metrics

    def handlers(self) -> list[EventHandlerType]:
        """``evt_handlers`` entries binding C-ECHO and C-STORE (for ``AE.make_server``)."""
        return [(evt.EVT_C_ECHO, self.handle_echo), (evt.EVT_C_STORE, self.handle_store)]

    def handle_echo(self, event: Event) -> int:
        """Verification always succeeds for an accepted association."""
        return SUCCESS

    def handle_store(self, event: Event) -> int:
        """Store one instance; the returned status is the C-STORE response status."""
        status, duplicate = self._store(event)
        if self.metrics is not None:
            self.metrics.store_answered(status, duplicate)
        return status

    def _store(self, event: Event) -> tuple[int, bool]:
        # in a C-GET this node requested (bpr backfill) the sender is the association's
        # acceptor, and storing is what we asked for
        asked = event.assoc.is_requestor
        calling_ae = ae_title((event.assoc.acceptor if asked else event.assoc.requestor).ae_title)
        if not asked and not allowed(self.config, calling_ae, "store"):
            log.warning("C-STORE refused: %s lacks the store permission", calling_ae)
            return NOT_AUTHORIZED, False
        try:
            data = event.encoded_dataset(include_meta=True)
            header = read_header(data)
            result = ingest(self.index, self.store, data, header, source_ae=calling_ae,
                            analyzed_modalities=self.config.series.analyzed_modalities)
        except BadInstanceError as exc:
            log.warning("C-STORE from %s rejected (0x%04X): %s", calling_ae, exc.status, exc)
            return exc.status, False
        except OutOfSpaceError as exc:
            log.error("C-STORE from %s refused, storage full: %s", calling_ae, exc.strerror)
            return OUT_OF_RESOURCES, False
        except (OSError, SQLAlchemyError) as exc:
            log.error("C-STORE from %s failed to persist: %s", calling_ae, type(exc).__name__)
            return OUT_OF_RESOURCES, False
        if not result.duplicate:
            log.debug("stored %s from %s", short_uid(header.SOPInstanceUID), calling_ae)
            if self.on_stored is not None:
                self.on_stored(result)
        return SUCCESS, result.duplicate
