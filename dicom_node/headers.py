"""Reading values out of the datasets peers send: headers, identifiers, UIDs and AE titles.

Everything the node decodes from a peer goes through here, so that one set of rules says what
counts as valid and what a value that cannot be decoded becomes:

- Part 10 headers of instances (:func:`read_header` decodes every attribute of
  :data:`INDEXED_KEYWORDS` up front, so nothing can fail to decode after the file is written;
  :func:`text` and :func:`integer` then read them for the index);
- UIDs: the identifying UIDs of an instance (:func:`identifying_uids`), the UID syntax
  (:func:`is_valid_uid`), a UID attribute without padding (:func:`uid_value`), a UID's name
  for messages (:func:`uid_name`); :func:`short_uid` is the only form of a UID that reaches a
  log;
- values of Query/Retrieve identifiers, decoded without pydicom's value validation, whose
  warnings would quote the value (:func:`ascii_value`, :func:`identifier_encodings`,
  :func:`element_text`);
- AE titles as pynetdicom hands them over (:func:`ae_title`).
"""

from __future__ import annotations

import re
from typing import Final

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from dicom_node.statuses import CANNOT_UNDERSTAND, DATA_SET_DOES_NOT_MATCH_SOP_CLASS
from model.api import (
    HEADER_PREFIX_BYTES,
    READ_ERRORS,
    disguised_sequence,
    header_from_prefix,
    parse_header,
    unclosed_items,
)

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

#: Every attribute the index reads; :func:`read_header` decodes them all up front, so that
#: nothing can fail to decode after the file is written.
INDEXED_KEYWORDS: Final = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality",
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName", "SeriesNumber",
    "SeriesDescription", "SeriesDate", "BodyPartExamined", "InstanceNumber",
)
#: The UIDs that identify an instance and place it in the index; all must be valid.
IDENTIFYING_KEYWORDS: Final = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
)
#: Largest integer the index stores (IS is a 32-bit signed value in DICOM).
_MAX_INT: Final = 2**31 - 1
#: VRs whose bytes are decoded with the identifier's Specific Character Set.
_TEXT_VRS: Final = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: "^", "=" and "\\" end an ISO 2022 escape sequence's scope in a person name or value list.
_ESCAPE_DELIMITERS: Final = frozenset(b"^=\\")


class BadInstanceError(ValueError):
    """The instance cannot be stored as it is.

    ``status`` is the C-STORE failure answered: :data:`~dicom_node.statuses.CANNOT_UNDERSTAND`
    by default, :data:`~dicom_node.statuses.DATA_SET_DOES_NOT_MATCH_SOP_CLASS` for a dataset
    that contradicts its file meta.
    """

    def __init__(self, message: str, status: int = CANNOT_UNDERSTAND) -> None:
        super().__init__(message)
        self.status = status


def is_valid_uid(value: object) -> bool:
    """True for a syntactically valid UID of at most 64 characters."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.match(value))


def short_uid(uid: str) -> str:
    """The last 8 characters of a UID, for logs (UIDs can be PHI-adjacent; keep logs terse)."""
    return "…" + uid[-8:]


def uid_value(ds: Dataset, keyword: str) -> str:
    """A UID attribute as text without its padding, "" when absent.

    Raises
    ------
    Exception
        One of ``model.api.READ_ERRORS`` when the value cannot be decoded.
    """
    return str(ds.get(keyword, "") or "").strip("\0 ")


def uid_name(uid: str) -> str:
    """The registered name of a UID for messages (the UID itself when it has none)."""
    return str(UID(uid).name)


def read_header(data: bytes) -> Dataset:
    """Decode a Part 10 file's header (no pixel data); ``BadInstanceError`` if it cannot.

    The header is parsed from the first :data:`~model.api.HEADER_PREFIX_BYTES` when it ends
    there (:func:`~model.api.header_from_prefix`), as in nearly every CT instance: checking
    a 512 kB slice whole for hostile nesting cost more than parsing its header. Otherwise
    the whole dataset is checked and parsed, and what is wrong with it is reported; a
    dataset no longer than the prefix (an SR, a small slice) is parsed whole at once, as the
    model's reader does, instead of twice when it has no pixels.
    """
    prefix = (header_from_prefix(data[:HEADER_PREFIX_BYTES])
              if len(data) > HEADER_PREFIX_BYTES else None)
    if prefix is None:
        hostile = unclosed_items(data)
        if hostile is not None:
            raise BadInstanceError(hostile)
    try:
        ds = prefix[0] if prefix is not None else parse_header(data)[0]
        ds.ensure_file_meta()
        disguised = disguised_sequence(ds, INDEXED_KEYWORDS)
        if disguised is not None:
            raise BadInstanceError(f"{disguised} is a sequence")
        _ = ds.file_meta.get("MediaStorageSOPClassUID")
        for keyword in INDEXED_KEYWORDS:
            _ = ds.get(keyword)  # decoded once here; later reads use pydicom's cache
    except BadInstanceError:
        raise
    except READ_ERRORS as exc:
        raise BadInstanceError(f"cannot decode the dataset: {type(exc).__name__}") from exc
    return ds


def identifying_uids(ds: Dataset) -> dict[str, str]:
    """The :data:`IDENTIFYING_KEYWORDS` of a header, checked.

    Raises
    ------
    BadInstanceError
        One is missing or not a valid UID, or the SOP class differs from the file meta's.
    """
    ids: dict[str, str] = {}
    for keyword in IDENTIFYING_KEYWORDS:
        try:
            value = uid_value(ds, keyword)
        except READ_ERRORS:
            value = ""
        if not is_valid_uid(value):
            raise BadInstanceError(f"{keyword} is missing or not a valid UID")
        ids[keyword] = value
    try:
        meta_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    except READ_ERRORS:
        meta_class = ""
    if meta_class and meta_class != ids["SOPClassUID"]:
        raise BadInstanceError("SOP Class UID differs from the file meta",
                               status=DATA_SET_DOES_NOT_MATCH_SOP_CLASS)
    return ids


def text(ds: Dataset, keyword: str, max_length: int) -> str:
    """A header value as text, cut to the index column; "" when absent or undecodable."""
    try:
        value = ds.get(keyword)
        result = "" if value is None else str(value)
    except READ_ERRORS:
        return ""
    return result.replace("\0", "").strip()[:max_length]


def integer(ds: Dataset, keyword: str) -> int | None:
    """A header IS/US value as int; None when absent or undecodable."""
    try:
        value = ds.get(keyword)
        number = None if value is None or value == "" else int(value)
    except READ_ERRORS:
        return None
    except ArithmeticError:
        return None
    return number if number is None or abs(number) <= _MAX_INT else None


def ae_title(value: str | bytes | None) -> str:
    """An AE title as pynetdicom gives it (str, or bytes from older peers' paths), trimmed."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").strip()


def ascii_value(identifier: Dataset, tag: BaseTag) -> str:
    """An ASCII-only value of an identifier (a CS such as the level), "" when absent."""
    if tag not in identifier:
        return ""
    elem = identifier.get_item(tag)
    if isinstance(elem, RawDataElement):
        raw = elem.value or b""
        return raw.decode("ascii").rstrip("\0 ") if isinstance(raw, bytes) else str(raw)
    value = elem.value
    return "" if value is None else str(value)


def identifier_encodings(identifier: Dataset) -> list[str]:
    """Python codecs of the identifier's Specific Character Set (the default when unusable)."""
    terms_text = ascii_value(identifier, Tag("SpecificCharacterSet"))
    terms = [term.strip() for term in terms_text.split("\\")] if terms_text else []
    try:
        return convert_encodings(terms or None)
    except READ_ERRORS:
        return convert_encodings(None)


def element_text(identifier: Dataset, tag: BaseTag, vr: str, encodings: list[str]) -> str:
    """A key value as text, values joined by backslashes, decoded without validation."""
    elem = identifier.get_item(tag)
    if isinstance(elem, RawDataElement):
        raw = elem.value or b""
        if not isinstance(raw, bytes):
            return str(raw)
        if vr in _TEXT_VRS:
            return decode_bytes(raw, encodings, set(_ESCAPE_DELIMITERS))
        return raw.decode("ascii")
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii")
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)
