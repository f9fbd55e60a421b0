"""Query/Retrieve SCP: C-FIND, C-MOVE and C-GET over the index and the file store.

:class:`QueryRetrieveService` holds one handler per DIMSE service, in the generator style that
pynetdicom expects (see ``pynetdicom._handlers.doc_handle_find``/``doc_handle_move``/
``doc_handle_get``). Register them with :meth:`QueryRetrieveService.handlers` and let the AE
support the six contexts of :data:`QUERY_RETRIEVE_SOP_CLASSES`
(:func:`add_query_retrieve_contexts`). C-GET sends instances back over the requestor's own
association, so the AE must also accept the storage contexts with ``scp_role=True`` (the
requestor acting as Storage SCP); C-MOVE opens a new association to the destination, proposing
the SOP classes and transfer syntaxes of the matched instances.

Information models: Patient Root (levels PATIENT, STUDY, SERIES, IMAGE) and Study Root (STUDY,
SERIES, IMAGE; the patient attributes are then study attributes). Matching follows
:mod:`dicom_node.matching`. Queries are hierarchical without relational extensions in the
sense of PS3.4 C.4.1.2.1: the keys of the query level and of every level above it filter and
are returned (so the unique keys of higher levels narrow the search), keys of lower levels are
ignored, and keys the index does not hold are returned empty. A response holds the requested
keys only, plus the Query/Retrieve Level, the unique key of the level and Specific Character
Set (always ``ISO_IR 192``: the index holds Unicode text; ASCII responses are byte-identical).

Retrieval (C-MOVE, C-GET) uses the unique keys only: the key of the retrieve level must be a
single value or a list of UIDs; the unique keys of higher levels narrow the match when given.

Statuses: unknown peers or peers without the permission get ``0x0124`` (Refused: not
authorized) — unless ``security.require_known_peers`` is off, when unknown peers may do
everything; a missing, unknown or disallowed Query/Retrieve Level and key values that cannot
be matched get ``0xA900`` (Identifier does not match SOP class); an identifier that cannot be
decoded gets ``0xC310``/``0xC410``/``0xC510`` and a database failure ``0xC320``/``0xC420``/
``0xC520`` (FIND/GET/MOVE, the "unable to process" range); a C-MOVE destination that is not a
configured peer with host and port gets ``0xA801``. Nothing is logged from an identifier's
values: logs say which service, level, peer AE title and how many matches.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_has_tag, dictionary_keyword, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.events import EventHandlerType
from sqlalchemy import ColumnElement, Select, SQLColumnExpression, exists, func, select
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.config import NodeConfig, Permission
from dicom_node.index import Index, Instance, Series, Study
from dicom_node.ingest import short_uid
from dicom_node.matching import MatchError, MatchKind, classify, match, match_any
from dicom_node.security import NOT_AUTHORIZED, allowed
from dicom_node.storage import FileStore
from model.api import READ_ERRORS

log = logging.getLogger(__name__)

# Statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4; PS3.7 C.5).
PENDING: Final = 0xFF00
CANCEL: Final = 0xFE00
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
IDENTIFIER_DOES_NOT_MATCH: Final = 0xA900
MOVE_DESTINATION_UNKNOWN: Final = 0xA801
#: "Unable to process" bases per service; +0x10: undecodable identifier, +0x20: database error.
_UNABLE_TO_PROCESS: Final = {"find": 0xC300, "get": 0xC400, "move": 0xC500}
_UNDECODABLE: Final = 0x10
_DATABASE_ERROR: Final = 0x20

#: Yielded instead of a dataset whose file cannot be read: pynetdicom counts a pending yield
#: that is not a Dataset as a failed sub-operation and goes on with the next one.
_UNREADABLE: Final = "unreadable stored instance"
#: Most presentation contexts one association may propose (PS3.8: odd IDs 1-255).
_MAX_CONTEXTS: Final = 128
_CHUNK: Final = 500
_RESPONSE_CHARSET: Final = "ISO_IR 192"
_TEXT_VRS: Final = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_READ_ERRORS: Final[tuple[type[Exception], ...]] = READ_ERRORS


class Level(enum.IntEnum):
    """Query/Retrieve levels, ordered from the top of the hierarchy."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3


# pynetdicom.sop_class creates its names at import time, invisible to mypy: UIDs spelled out.
#: The top level of each supported information model, by SOP class UID.
_MODELS: Final[dict[str, Level]] = {
    "1.2.840.10008.5.1.4.1.2.1.1": Level.PATIENT,  # Patient Root Q/R - FIND
    "1.2.840.10008.5.1.4.1.2.1.2": Level.PATIENT,  # Patient Root Q/R - MOVE
    "1.2.840.10008.5.1.4.1.2.1.3": Level.PATIENT,  # Patient Root Q/R - GET
    "1.2.840.10008.5.1.4.1.2.2.1": Level.STUDY,  # Study Root Q/R - FIND
    "1.2.840.10008.5.1.4.1.2.2.2": Level.STUDY,  # Study Root Q/R - MOVE
    "1.2.840.10008.5.1.4.1.2.2.3": Level.STUDY,  # Study Root Q/R - GET
}
_VERIFICATION: Final = "1.2.840.10008.1.1"
#: The SOP classes the handlers serve; the AE must support a context for each.
QUERY_RETRIEVE_SOP_CLASSES: Final[tuple[str, ...]] = tuple(_MODELS)


@dataclass(frozen=True)
class QueryKey:
    """An attribute the index can match and return.

    Parameters
    ----------
    keyword : str
        DICOM keyword.
    level : Level
        Where it lives in the Patient Root hierarchy (patient keys are study keys in Study
        Root).
    vr : str
        Its value representation (decides how values match).
    column : SQLColumnExpression or None
        The index column or expression; None for keys computed per level (counts, the
        modalities of a study), which are returned but never filter except as coded below.
    unique : bool
        The unique key of its level.
    """

    keyword: str
    level: Level
    vr: str
    column: SQLColumnExpression[Any] | None
    unique: bool = False


#: The corrected BodyPartExamined when the node found one, else the received one.
_BODY_PART = func.coalesce(func.nullif(Series.corrected_body_part, ""),
                           Series.original_body_part)

KEYS: Final[dict[str, QueryKey]] = {key.keyword: key for key in (
    QueryKey("PatientID", Level.PATIENT, "LO", Study.patient_id, unique=True),
    QueryKey("PatientName", Level.PATIENT, "PN", Study.patient_name),
    QueryKey("PatientBirthDate", Level.PATIENT, "DA", Study.patient_birth_date),
    QueryKey("PatientSex", Level.PATIENT, "CS", Study.patient_sex),
    QueryKey("NumberOfPatientRelatedStudies", Level.PATIENT, "IS", None),
    QueryKey("StudyInstanceUID", Level.STUDY, "UI", Study.study_instance_uid, unique=True),
    QueryKey("StudyDate", Level.STUDY, "DA", Study.study_date),
    QueryKey("StudyTime", Level.STUDY, "TM", Study.study_time),
    QueryKey("AccessionNumber", Level.STUDY, "SH", Study.accession_number),
    QueryKey("StudyID", Level.STUDY, "SH", Study.study_id),
    QueryKey("StudyDescription", Level.STUDY, "LO", Study.study_description),
    QueryKey("ReferringPhysicianName", Level.STUDY, "PN", Study.referring_physician_name),
    QueryKey("ModalitiesInStudy", Level.STUDY, "CS", None),
    QueryKey("NumberOfStudyRelatedSeries", Level.STUDY, "IS", None),
    QueryKey("NumberOfStudyRelatedInstances", Level.STUDY, "IS", None),
    QueryKey("SeriesInstanceUID", Level.SERIES, "UI", Series.series_instance_uid, unique=True),
    QueryKey("Modality", Level.SERIES, "CS", Series.modality),
    QueryKey("SeriesNumber", Level.SERIES, "IS", Series.series_number),
    QueryKey("SeriesDescription", Level.SERIES, "LO", Series.series_description),
    QueryKey("SeriesDate", Level.SERIES, "DA", Series.series_date),
    QueryKey("BodyPartExamined", Level.SERIES, "CS", _BODY_PART),
    QueryKey("NumberOfSeriesRelatedInstances", Level.SERIES, "IS", None),
    QueryKey("SOPInstanceUID", Level.IMAGE, "UI", Instance.sop_instance_uid, unique=True),
    QueryKey("SOPClassUID", Level.IMAGE, "UI", Instance.sop_class_uid),
    QueryKey("InstanceNumber", Level.IMAGE, "IS", Instance.instance_number),
)}
_UNIQUE: Final[dict[Level, str]] = {key.level: key.keyword for key in KEYS.values()
                                    if key.unique}
#: Return keys that need no index column: their value comes from the node itself.
_NODE_KEYS: Final = frozenset({"RetrieveAETitle", "InstanceAvailability"})
_NOT_KEYS: Final = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})


class QueryError(ValueError):
    """The identifier cannot be answered; ``status`` says how."""

    def __init__(self, message: str, status: int = IDENTIFIER_DOES_NOT_MATCH) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ReturnKey:
    """One attribute to put into each C-FIND response."""

    tag: BaseTag
    keyword: str
    vr: str


@dataclass(frozen=True)
class QueryRequest:
    """A decoded, validated identifier.

    Parameters
    ----------
    root : Level
        Top level of the information model (PATIENT: Patient Root, STUDY: Study Root).
    level : Level
        The Query/Retrieve Level.
    values : dict of str to str
        Key values of the known keys at or above ``level`` (backslash-separated values).
    returned : tuple of ReturnKey
        What a C-FIND response holds besides the level and character set, request order.
    """

    root: Level
    level: Level
    values: dict[str, str]
    returned: tuple[ReturnKey, ...]


@dataclass(frozen=True)
class StoredInstance:
    """One instance to send in a retrieve."""

    path: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


def add_query_retrieve_contexts(ae: Any) -> None:
    """Let ``ae`` accept the Patient Root and Study Root FIND, MOVE and GET contexts."""
    for sop_class in QUERY_RETRIEVE_SOP_CLASSES:
        ae.add_supported_context(sop_class)


def key_level(key: QueryKey, root: Level) -> Level:
    """The level of ``key`` in the model with top level ``root`` (patient keys move down)."""
    return max(key.level, root)


def parse_identifier(identifier: Dataset, root: Level) -> QueryRequest:
    """Decode and validate a Query/Retrieve identifier.

    Parameters
    ----------
    identifier : Dataset
        The request identifier (elements may still be raw: values are decoded here, with the
        identifier's Specific Character Set, without pydicom's value validation warnings).
    root : Level
        Top level of the information model.

    Raises
    ------
    QueryError
        Missing or unknown level, or one above the model's top level (``0xA900``).
    MatchError
        A key value of a form its VR does not allow (the handlers answer ``0xA900``).
    """
    level_text = _ascii(identifier, Tag(0x0008, 0x0052)).strip()
    if not level_text:
        raise QueryError("Query/Retrieve Level is missing")
    try:
        level = Level[level_text]
    except KeyError:
        raise QueryError("unknown Query/Retrieve Level") from None
    if level < root:
        raise QueryError("Query/Retrieve Level not in this information model")
    encodings = _encodings(identifier)
    values: dict[str, str] = {}
    returned: list[ReturnKey] = []
    # keys(), not the Dataset itself: iterating a Dataset decodes (and validates) every value.
    for element_tag in identifier.keys():  # noqa: SIM118
        tag = Tag(element_tag)
        if tag.group in (0x0000, 0x0002) or tag.is_private or not dictionary_has_tag(tag):
            continue
        keyword = dictionary_keyword(tag)
        if keyword in _NOT_KEYS:
            continue
        key = KEYS.get(keyword)
        if key is not None:
            if key_level(key, root) > level:
                continue  # keys of lower levels have no meaning here (C.4.1.2.1)
            values[keyword] = _text(identifier, tag, key.vr, encodings)
            if key.column is not None:
                classify(values[keyword], key.vr)  # rejects a malformed value early
            returned.append(ReturnKey(tag, keyword, key.vr))
            continue
        vr = dictionary_VR(tag)
        if vr != "SQ" and len(vr) == 2:
            returned.append(ReturnKey(tag, keyword, vr))
    unique = _UNIQUE[level]
    if unique not in values:
        unique_tag = Tag(unique)
        returned.append(ReturnKey(unique_tag, unique, KEYS[unique].vr))
    return QueryRequest(root, level, values, tuple(returned))


def filters(request: QueryRequest, *, unique_only: bool = False) -> list[ColumnElement[bool]]:
    """The WHERE clauses of a request (all known keys, or only the unique keys).

    Raises
    ------
    MatchError
        A key value that cannot be matched.
    """
    clauses: list[ColumnElement[bool]] = []
    for keyword, value in request.values.items():
        key = KEYS[keyword]
        if unique_only and not (key.unique and key.level >= request.root):
            continue  # Patient ID is no unique key in Study Root
        clause: ColumnElement[bool] | None
        if keyword == "ModalitiesInStudy":
            clause = _modalities_clause(value)
        elif key.column is None:
            continue  # counts are return keys only
        else:
            clause = match(key.column, value, key.vr)
        if clause is not None:
            clauses.append(clause)
    return clauses


def find_statement(request: QueryRequest) -> Select[*tuple[Any, ...]]:
    """The SELECT that answers a C-FIND: one row per match, a column per returned key.

    Columns are labelled with the key's keyword; non-patient levels add ``_study_pk``.
    """
    wanted = {item.keyword for item in request.returned}
    where = filters(request)
    if request.level is Level.PATIENT:
        # No patient table: a patient is a distinct set of patient attributes over studies.
        patient = (Study.patient_id, Study.patient_name, Study.patient_birth_date,
                   Study.patient_sex)
        columns = [_labelled(k) for k in ("PatientID", "PatientName", "PatientBirthDate",
                                          "PatientSex")]
        return (select(*columns, func.count(Study.id).label("NumberOfPatientRelatedStudies"))
                .where(*where).group_by(*patient).order_by(*patient))
    columns = [_labelled(key.keyword) for key in KEYS.values()
               if key.column is not None and key_level(key, request.root) <= request.level]
    columns.append(Study.id.label("_study_pk"))
    for keyword, count in _COUNTS.items():
        if keyword in wanted and KEYS[keyword].level <= request.level:
            columns.append(count().label(keyword))
    stmt = select(*columns)
    if request.level is Level.STUDY:
        stmt = stmt.select_from(Study).order_by(Study.id)
    elif request.level is Level.SERIES:
        stmt = (stmt.select_from(Series).join(Study, Series.study_pk == Study.id)
                .order_by(Series.id))
    else:
        stmt = (stmt.select_from(Instance).join(Series, Instance.series_pk == Series.id)
                .join(Study, Series.study_pk == Study.id)
                .order_by(Instance.series_pk, Instance.instance_number, Instance.id))
    return stmt.where(*where)


def retrieve_statement(request: QueryRequest) -> Select[*tuple[Any, ...]]:
    """The SELECT of the instances a C-MOVE or C-GET sends.

    Raises
    ------
    QueryError
        The unique key of the retrieve level is missing or not a single value / UID list, or
        a higher unique key is not a single value.
    """
    for level, keyword in _UNIQUE.items():
        if level < request.root or level > request.level:
            continue
        kind = classify(request.values.get(keyword, ""), KEYS[keyword].vr)
        if level == request.level and kind not in (MatchKind.SINGLE, MatchKind.UID_LIST):
            raise QueryError(f"{keyword} must be given to retrieve at this level")
        if kind not in (MatchKind.UNIVERSAL, MatchKind.SINGLE, MatchKind.UID_LIST):
            raise QueryError(f"{keyword} takes a single value or a list of UIDs here")
    return (select(Instance.path, Instance.sop_instance_uid, Instance.sop_class_uid,
                   Instance.transfer_syntax_uid)
            .select_from(Instance).join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(*filters(request, unique_only=True))
            .order_by(Instance.series_pk, Instance.instance_number, Instance.id))


def storage_contexts(instances: Iterable[StoredInstance]) -> list[Any]:
    """Presentation contexts to propose to a move destination for these instances.

    One context per SOP class with the stored transfer syntaxes first, then Explicit and
    Implicit VR Little Endian (which pynetdicom converts between); at most 128.
    """
    syntaxes: dict[str, list[str]] = {}
    for item in instances:
        known = syntaxes.setdefault(item.sop_class_uid, [])
        if item.transfer_syntax_uid and item.transfer_syntax_uid not in known:
            known.append(item.transfer_syntax_uid)
    contexts = []
    for sop_class, stored in list(syntaxes.items())[:_MAX_CONTEXTS]:
        offered = list(dict.fromkeys([*stored, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        contexts.append(build_context(sop_class, offered))
    return contexts


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
    >>> add_query_retrieve_contexts(ae)  # doctest: +SKIP
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

        Pending ``0xFF00`` with one response identifier per match, ``0xFE00`` on cancel, or a
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
        when it is not a configured peer with host and port (pynetdicom answers ``0xA801``)
        — then the number of instances, then ``(0xFF00, dataset)`` per instance.

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
            yield (*destination, {"contexts": [build_context(_VERIFICATION)]})
            yield 1
            yield failure, None
            return
        yield (*destination, {"contexts": storage_contexts(instances)})
        yield len(instances)
        yield from self._send(event, instances)

    def handle_get(self, event: Any) -> Iterator[Any]:
        """``evt.EVT_C_GET`` handler: sub-operation count, then ``(0xFF00, dataset)`` pairs.

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
        root = _MODELS.get(str(event.request.AffectedSOPClassUID))
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
                             _UNABLE_TO_PROCESS[service] + _UNDECODABLE) from exc

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
                    modalities = _modalities(session, [row._study_pk for row in rows])
        except SQLAlchemyError as exc:
            # The exception text holds the bound parameters, i.e. the key values: not logged.
            log.error("C-FIND query failed: %s", type(exc).__name__)
            raise QueryError("database error",
                             _UNABLE_TO_PROCESS["find"] + _DATABASE_ERROR) from None
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
            return _status(_UNABLE_TO_PROCESS[service] + _DATABASE_ERROR, "database error"), []
        log.info("C-%s from %s at %s level: %d instances", service.upper(), _calling_ae(event),
                 request.level.name, len(instances))
        return None, instances

    def _destination(self, event: Any) -> tuple[str, int] | None:
        name = event.move_destination
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        peer = self.config.peer(name or "")
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
            except _READ_ERRORS as exc:
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


# -- helpers ---------------------------------------------------------------------------------


def _study_series_count() -> Any:
    return (select(func.count(Series.id)).where(Series.study_pk == Study.id)
            .correlate(Study).scalar_subquery())


def _study_instance_count() -> Any:
    return (select(func.count(Instance.id)).join(Series, Instance.series_pk == Series.id)
            .where(Series.study_pk == Study.id).correlate(Study).scalar_subquery())


def _series_instance_count() -> Any:
    return (select(func.count(Instance.id)).where(Instance.series_pk == Series.id)
            .correlate(Series).scalar_subquery())


#: Correlated counts, added to a C-FIND's SELECT only when requested.
_COUNTS: Final[dict[str, Callable[[], Any]]] = {
    "NumberOfStudyRelatedSeries": _study_series_count,
    "NumberOfStudyRelatedInstances": _study_instance_count,
    "NumberOfSeriesRelatedInstances": _series_instance_count,
}


def _labelled(keyword: str) -> Any:
    column = KEYS[keyword].column
    assert column is not None
    return column.label(keyword)


def _modalities_clause(value: str) -> ColumnElement[bool] | None:
    # Modalities in Study may list several modalities: a study matches when one of its series
    # has any of them (PS3.4 C.6.1.1.3.1 allows the list for this key).
    clause = match_any(Series.modality, [v for v in value.split("\\")], "CS")
    if clause is None:
        return None
    return exists(select(Series.id).where(Series.study_pk == Study.id, clause)
                  .correlate(Study))


def _modalities(session: Any, study_pks: Sequence[int]) -> dict[int, list[str]]:
    found: dict[int, set[str]] = {}
    unique = sorted(set(study_pks))
    for start in range(0, len(unique), _CHUNK):
        stmt = (select(Series.study_pk, Series.modality).distinct()
                .where(Series.study_pk.in_(unique[start:start + _CHUNK])))
        for study_pk, modality in session.execute(stmt):
            if modality:
                found.setdefault(study_pk, set()).add(modality)
    return {pk: sorted(values) for pk, values in found.items()}


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def _calling_ae(event: Any) -> str:
    title = event.assoc.requestor.ae_title
    if isinstance(title, bytes):
        title = title.decode("ascii", "replace")
    return str(title).strip()


def _ascii(identifier: Dataset, tag: BaseTag) -> str:
    if tag not in identifier:
        return ""
    elem = identifier.get_item(tag)
    if isinstance(elem, RawDataElement):
        raw = elem.value or b""
        return raw.decode("ascii").rstrip("\0 ") if isinstance(raw, bytes) else str(raw)
    value = elem.value
    return "" if value is None else str(value)


def _encodings(identifier: Dataset) -> list[str]:
    text = _ascii(identifier, Tag(0x0008, 0x0005))
    terms = [term.strip() for term in text.split("\\")] if text else []
    try:
        return convert_encodings(terms or None)
    except READ_ERRORS:
        return convert_encodings(None)


def _text(identifier: Dataset, tag: BaseTag, vr: str, encodings: list[str]) -> str:
    """A key value as text, values joined by backslashes, decoded without validation."""
    elem = identifier.get_item(tag)
    if isinstance(elem, RawDataElement):
        raw = elem.value or b""
        if not isinstance(raw, bytes):
            return str(raw)
        if vr in _TEXT_VRS:
            # "^", "=" and "\\" end an ISO 2022 escape sequence's scope.
            return decode_bytes(raw, encodings, {0x5E, 0x3D, 0x5C})
        return raw.decode("ascii")
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii")
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)
