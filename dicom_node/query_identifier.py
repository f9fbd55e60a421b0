"""Query/Retrieve identifiers: the keys the index answers, and parsing a request's identifier.

:data:`KEYS` lists every attribute a C-FIND, C-MOVE or C-GET can match or get back, with its
level in the Patient Root hierarchy, its VR and the index column that holds it.
:func:`parse_identifier` turns an identifier into a :class:`QueryRequest`: the Query/Retrieve
Level, the values of the keys at or above it (keys of lower levels are ignored, PS3.4
C.4.1.2.1) and the keys to return. Values are decoded by :mod:`dicom_node.headers` without
pydicom's value validation; a value of a form its VR does not allow is rejected here
(:func:`dicom_node.matching.classify`), before any SQL is built.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

from pydicom.datadict import dictionary_has_tag, dictionary_keyword, dictionary_VR
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from sqlalchemy import SQLColumnExpression, func

from dicom_node.headers import ascii_value, element_text, identifier_encodings
from dicom_node.index import Instance, Series, Study
from dicom_node.matching import classify
from dicom_node.statuses import IDENTIFIER_DOES_NOT_MATCH

#: Groups that never hold keys: command elements and file meta.
_NOT_KEY_GROUPS: Final = frozenset({0x0000, 0x0002})


class Level(enum.IntEnum):
    """Query/Retrieve levels, ordered from the top of the hierarchy."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3


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

#: Every key the index can match or return, by keyword (other keys are returned empty).
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
#: The unique key of each level.
UNIQUE_KEYS: Final[dict[Level, str]] = {key.level: key.keyword for key in KEYS.values()
                                        if key.unique}
#: Identifier elements that are no keys: they say how to read the others.
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
        Missing or unknown level, or one above the model's top level
        (``IDENTIFIER_DOES_NOT_MATCH``).
    MatchError
        A key value of a form its VR does not allow (the handlers answer
        ``IDENTIFIER_DOES_NOT_MATCH``).
    """
    level_text = ascii_value(identifier, Tag("QueryRetrieveLevel")).strip()
    if not level_text:
        raise QueryError("Query/Retrieve Level is missing")
    try:
        level = Level[level_text]
    except KeyError:
        raise QueryError("unknown Query/Retrieve Level") from None
    if level < root:
        raise QueryError("Query/Retrieve Level not in this information model")
    encodings = identifier_encodings(identifier)
    values: dict[str, str] = {}
    returned: list[ReturnKey] = []
    # keys(), not the Dataset itself: iterating a Dataset decodes (and validates) every value.
    for element_tag in identifier.keys():  # noqa: SIM118
        tag = Tag(element_tag)
        if tag.group in _NOT_KEY_GROUPS or tag.is_private or not dictionary_has_tag(tag):
            continue
        keyword = dictionary_keyword(tag)
        if keyword in _NOT_KEYS:
            continue
        key = KEYS.get(keyword)
        if key is not None:
            if key_level(key, root) > level:
                continue  # keys of lower levels have no meaning here (C.4.1.2.1)
            values[keyword] = element_text(identifier, tag, key.vr, encodings)
            if key.column is not None:
                classify(values[keyword], key.vr)  # rejects a malformed value early
            returned.append(ReturnKey(tag, keyword, key.vr))
            continue
        vr = dictionary_VR(tag)
        if vr != "SQ" and len(vr) == 2:
            returned.append(ReturnKey(tag, keyword, vr))
    unique = UNIQUE_KEYS[level]
    if unique not in values:
        unique_tag = Tag(unique)
        returned.append(ReturnKey(unique_tag, unique, KEYS[unique].vr))
    return QueryRequest(root, level, values, tuple(returned))
