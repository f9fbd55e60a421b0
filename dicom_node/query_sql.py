"""Query/Retrieve in SQL: the SELECTs that answer a C-FIND and choose what a retrieve sends.

Built from a parsed :class:`~dicom_node.query_identifier.QueryRequest`: every key value becomes
a WHERE clause (:mod:`dicom_node.matching`); a C-FIND selects one row per match with a column
per returned key (counts and the modalities of a study are computed per row); a C-MOVE or
C-GET selects the stored instances by the unique keys only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import ColumnElement, Select, exists, func, select
from sqlalchemy.orm import Session

from dicom_node.index import Instance, Series, Study
from dicom_node.matching import MatchKind, classify, match, match_any
from dicom_node.query_identifier import (
    KEYS,
    UNIQUE_KEYS,
    Level,
    QueryError,
    QueryRequest,
    key_level,
)

#: Study keys per ``IN`` list when collecting the modalities of a study.
_CHUNK: Final = 500


@dataclass(frozen=True)
class StoredInstance:
    """One instance to send in a retrieve."""

    path: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


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
    for level, keyword in UNIQUE_KEYS.items():
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


def study_modalities(session: Session, study_pks: Sequence[int]) -> dict[int, list[str]]:
    """The modalities of each study's series (ModalitiesInStudy), sorted; none: no entry."""
    found: dict[int, set[str]] = {}
    unique = sorted(set(study_pks))
    for start in range(0, len(unique), _CHUNK):
        stmt = (select(Series.study_pk, Series.modality).distinct()
                .where(Series.study_pk.in_(unique[start:start + _CHUNK])))
        for study_pk, modality in session.execute(stmt):
            if modality:
                found.setdefault(study_pk, set()).add(modality)
    return {pk: sorted(values) for pk, values in found.items()}
