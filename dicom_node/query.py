"""Query/Retrieve SCP: the C-FIND, C-MOVE and C-GET handlers over the index and the file store.

:class:`QueryRetrieveService` holds one handler per DIMSE service, in the generator style that
pynetdicom expects (see ``pynetdicom._handlers.doc_handle_find``/``doc_handle_move``/
``doc_handle_get``). Register them with :meth:`QueryRetrieveService.handlers` on an AE from
:func:`dicom_node.application_entity.build_ae`, which accepts the Query/Retrieve contexts and,
because C-GET sends instances back over the requestor's own association, the storage contexts
with ``scp_role=True``. C-MOVE opens a new association to the destination, proposing the SOP
classes and transfer syntaxes of the matched instances (:func:`dicom_node.contexts.move_contexts`).

Information models: Patient Root (levels PATIENT, STUDY, SERIES, IMAGE) and Study Root (STUDY,
SERIES, IMAGE; the patient attributes are then study attributes). Identifiers are parsed by
:mod:`dicom_node.query_identifier` and answered by the SELECTs of :mod:`dicom_node.query_sql`,
matching as :mod:`dicom_node.matching` says. Queries are hierarchical without relational
extensions in the sense of PS3.4 C.4.1.2.1: the keys of the query level and of every level
above it filter and are returned (so the unique keys of higher levels narrow the search), keys
of lower levels are ignored, and keys the index does not hold are returned empty. A response
holds the requested keys only, plus the Query/Retrieve Level, the unique key of the level and
Specific Character Set (always ``ISO_IR 192``: the index holds Unicode text; ASCII responses
are byte-identical).

Retrieval (C-MOVE, C-GET) uses the unique keys only: the key of the retrieve level must be a
single value or a list of UIDs; the unique keys of higher levels narrow the match when given.

Statuses (:mod:`dicom_node.statuses`): unknown peers or peers without the permission get
``NOT_AUTHORIZED`` — unless ``security.require_known_peers`` is off, when unknown peers may do
everything; a missing, unknown or disallowed Query/Retrieve Level and key values that cannot
be matched get ``IDENTIFIER_DOES_NOT_MATCH``; an identifier that cannot be decoded gets
``UNABLE_TO_PROCESS`` of the service + ``UNDECODABLE_IDENTIFIER`` (0xC310, 0xC410, 0xC510 for
FIND, GET, MOVE) and a database failure ``UNABLE_TO_PROCESS`` + ``DATABASE_ERROR`` (0xC320,
0xC420, 0xC520); a C-MOVE destination that is not a configured peer with host and port gets
``MOVE_DESTINATION_UNKNOWN`` (from pynetdicom). Nothing is logged from an identifier's values:
logs say which service, level, peer AE title and how many matches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, Final

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.config import NodeConfig, Permission
from dicom_node.contexts import move_contexts, verification_contexts
from dicom_node.headers import ae_title, short_uid
from dicom_node.index import Index
from dicom_node.matching import MatchError
from dicom_node.query_identifier import Level, QueryError, QueryRequest, parse_identifier
from dicom_node.query_sql import (
    StoredInstance,
    find_statement,
    retrieve_statement,
    study_modalities,
)
from dicom_node.security import allowed
from dicom_node.statuses import (
    CANCEL,
    DATABASE_ERROR,
    IDENTIFIER_DOES_NOT_MATCH,
    NOT_AUTHORIZED,
    PENDING,
    SOP_CLASS_NOT_SUPPORTED,
    UNABLE_TO_PROCESS,
    UNDECODABLE_IDENTIFIER,
)
from dicom_node.storage import FileStore
from model.api import READ_ERRORS

log = logging.getLogger(__name__)

#: The top level of each supported information model, by its SOP classes.
MODELS: Final[dict[str, Level]] = {
    PatientRootQueryRetrieveInformationModelFind: Level.PATIENT,
    PatientRootQueryRetrieveInformationModelMove: Level.PATIENT,
    PatientRootQueryRetrieveInformationModelGet: Level.PATIENT,
    StudyRootQueryRetrieveInformationModelFind: Level.STUDY,
    StudyRootQueryRetrieveInformationModelMove: Level.STUDY,
    StudyRootQueryRetrieveInformationModelGet: Level.STUDY,
}
#: Yielded instead of a dataset whose file cannot be read: pynetdicom counts a pending yield
#: that is not a Dataset as a failed sub-operation and goes on with the next one.
_UNREADABLE: Final = "unreadable stored instance"
#: Specific Character Set of every C-FIND response (the index holds Unicode text).
_RESPONSE_CHARSET: Final = "ISO_IR 192"


class QueryRetrieveService:
    """The C-FIND, C-MOVE and C-GET handlers of the node.

    Parameters
    ----------
    index : Index
        What the node holds.
    store : FileStore
        Where the instance files are.
    config : NodeConfig
        Peers (permissions, move destinations), our AE title, ``security.require_known_peers``.

    Examples
    --------
    >>> service = QueryRetrieveService(index, store, config)  # doctest: +SKIP
    >>> ae = build_ae(config)  # doctest: +SKIP
    >>> ae.start_server((host, port), evt_handlers=service.handlers())  # doctest: +SKIP
    """

    def __init__(self, index: Index, store: FileStore, config: NodeConfig) -> None:
        self.index = index
        self.store = store
        self.config = config

    def handlers(self) -> list[EventHandlerType]:
        """``evt_handlers`` entries binding the three handlers (for ``AE.start_server``)."""
        return [(evt.EVT_C_FIND, self.handle_find), (evt.EVT_C_MOVE, self.handle_move),
                (evt.EVT_C_GET, self.handle_get)]

    def handle_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """``evt.EVT_C_FIND`` handler: yields ``(status, identifier)`` pairs.

        ``PENDING`` with one response identifier per match, ``CANCEL`` on cancel, or a
        single failure status (a Dataset with Status and ErrorComment); pynetdicom sends the
        final success.
        """
        refusal = self._refuse(event, "find")
        if refusal is not None:
            yield refusal, None
            return
        try:
            request = self._request(event, "find")
            rows, modalities = self._find(request)
        except QueryError as exc:
            log.warning("C-FIND from %s refused: %s", _calling_ae(event), exc)
            yield _status(exc.status, str(exc)), None
            return
        log.info("C-FIND from %s at %s level: %d matches", _calling_ae(event),
                 request.level.name, len(rows))
        for row in rows:
            if event.is_cancelled:
                log.info("C-FIND from %s cancelled", _calling_ae(event))
                yield CANCEL, None
                return
            yield PENDING, self._response(request, row, modalities)

    def handle_move(self, event: Any) -> Iterator[Any]:
        """``evt.EVT_C_MOVE`` handler: destination, sub-operation count, then datasets.

        Yields ``(host, port, {"contexts": ...})`` of the destination — or ``(None, None)``
        when it is not a configured peer with host and port (pynetdicom answers
        ``MOVE_DESTINATION_UNKNOWN``) — then the number of instances, then
        ``(PENDING, dataset)`` per instance.

        pynetdicom reads a failure status only after the destination and the count, and
        connects to the destination before reading it; so a refused or invalid request to
        a known destination opens (and releases) an association with it, proposing only
        Verification, and is then answered with the failure status.
        """
        destination = self._destination(event)
        if destination is None:
            log.warning("C-MOVE from %s: unknown move destination", _calling_ae(event))
            yield None, None
            return
        failure = self._refuse(event, "move")
        instances: list[StoredInstance] = []
        if failure is None:
            failure, instances = self._plan_retrieve(event, "move")
        if failure is not None:
            yield (*destination, {"contexts": verification_contexts()})
            yield 1
            yield failure, None
            return
        yield (*destination, {"contexts": move_contexts(instances)})
        yield len(instances)
        yield from self._send(event, instances)

    def handle_get(self, event: Any) -> Iterator[Any]:
        """``evt.EVT_C_GET`` handler: sub-operation count, then ``(PENDING, dataset)`` pairs.

        A failure is yielded after a count of 1, because pynetdicom reads the count first;
        its final response then reports that one sub-operation as failed.
        """
        failure = self._refuse(event, "get")
        instances: list[StoredInstance] = []
        if failure is None:
            failure, instances = self._plan_retrieve(event, "get")
        if failure is not None:
            yield 1
            yield failure, None
            return
        yield len(instances)
        yield from self._send(event, instances)

    # -- the steps ---------------------------------------------------------------------------

    def _refuse(self, event: Any, permission: Permission) -> Dataset | None:
        title = _calling_ae(event)
        if allowed(self.config, title, permission):
            return None
        log.warning("C-%s from %s refused: not authorized", permission.upper(), title)
        return _status(NOT_AUTHORIZED, f"{permission} is not permitted for this AE title")

    def _request(self, event: Any, service: str) -> QueryRequest:
        root = MODELS.get(str(event.request.AffectedSOPClassUID))
        if root is None:
            raise QueryError("information model not supported", SOP_CLASS_NOT_SUPPORTED)
        try:
            return parse_identifier(event.identifier, root)
        except QueryError:
            raise
        except MatchError as exc:
            raise QueryError(str(exc)) from exc
        except READ_ERRORS as exc:
            raise QueryError(f"cannot decode the identifier ({type(exc).__name__})",
                             UNABLE_TO_PROCESS[service] + UNDECODABLE_IDENTIFIER) from exc

    def _find(self, request: QueryRequest) -> tuple[list[Any], dict[int, list[str]]]:
        try:
            stmt = find_statement(request)
        except MatchError as exc:
            raise QueryError(str(exc)) from exc
        try:
            with self.index.session() as session:
                rows = list(session.execute(stmt).all())
                modalities: dict[int, list[str]] = {}
                if any(item.keyword == "ModalitiesInStudy" for item in request.returned):
                    modalities = study_modalities(session, [row._study_pk for row in rows])
        except SQLAlchemyError as exc:
            # The exception text holds the bound parameters, i.e. the key values: not logged.
            log.error("C-FIND query failed: %s", type(exc).__name__)
            raise QueryError("database error",
                             UNABLE_TO_PROCESS["find"] + DATABASE_ERROR) from None
        return rows, modalities

    def _plan_retrieve(self, event: Any,
                       service: str) -> tuple[Dataset | None, list[StoredInstance]]:
        try:
            request = self._request(event, service)
            stmt = retrieve_statement(request)
        except (QueryError, MatchError) as exc:
            log.warning("C-%s from %s refused: %s", service.upper(), _calling_ae(event), exc)
            return _status(getattr(exc, "status", IDENTIFIER_DOES_NOT_MATCH), str(exc)), []
        try:
            with self.index.session() as session:
                instances = [StoredInstance(*row) for row in session.execute(stmt).all()]
        except SQLAlchemyError as exc:
            log.error("C-%s query failed: %s", service.upper(), type(exc).__name__)
            return _status(UNABLE_TO_PROCESS[service] + DATABASE_ERROR, "database error"), []
        log.info("C-%s from %s at %s level: %d instances", service.upper(), _calling_ae(event),
                 request.level.name, len(instances))
        return None, instances

    def _destination(self, event: Any) -> tuple[str, int] | None:
        peer = self.config.peer(ae_title(event.move_destination))
        if peer is None or not peer.host or not 0 < peer.port < 65536:
            return None
        return peer.host, peer.port

    def _send(self, event: Any,
              instances: Sequence[StoredInstance]) -> Iterator[tuple[int, Dataset | str | None]]:
        for item in instances:
            if event.is_cancelled:
                log.info("retrieve from %s cancelled", _calling_ae(event))
                yield CANCEL, None
                return
            try:
                dataset = dcmread(self.store.absolute(item.path))
            except READ_ERRORS as exc:
                log.error("cannot read stored instance %s: %s", short_uid(item.sop_instance_uid),
                          type(exc).__name__)
                yield PENDING, _UNREADABLE
                continue
            yield PENDING, dataset

    def _response(self, request: QueryRequest, row: Any,
                  modalities: dict[int, list[str]]) -> Dataset:
        ds = Dataset()
        ds.SpecificCharacterSet = _RESPONSE_CHARSET
        ds.QueryRetrieveLevel = request.level.name
        mapping = row._mapping
        for item in request.returned:
            value: Any
            if item.keyword == "ModalitiesInStudy":
                value = modalities.get(mapping["_study_pk"], [])
            elif item.keyword == "RetrieveAETitle":
                value = self.config.network.ae_title
            elif item.keyword == "InstanceAvailability":
                value = "ONLINE"
            elif item.keyword in mapping:
                value = mapping[item.keyword]
            else:
                value = None  # a key the index does not hold: returned empty
            if value == "":
                value = None
            # No value validation: its warnings quote the value, and a stored value that a
            # strict reading of the VR would reject is still the best answer we have.
            ds.add(DataElement(item.tag, item.vr, value, validation_mode=pydicom_config.IGNORE))
        return ds



def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def _calling_ae(event: Any) -> str:
    return ae_title(event.assoc.requestor.ae_title)
