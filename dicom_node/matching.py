"""DICOM attribute matching (PS3.4 C.2.2.2) as SQLAlchemy WHERE clauses over index columns.

A C-FIND, C-MOVE or C-GET identifier holds one value per key; this module turns one such value
into a boolean SQL expression over the index column that holds the attribute:

- **universal** matching — an empty value, or one made only of ``*`` — constrains nothing
  (:func:`match` returns None), so entities with an empty value match too;
- **single value** matching — the stored value equals the key value;
- **wildcard** matching — ``*`` (any run of characters) and ``?`` (one character) for the
  VRs that allow it; every other character, ``%``, ``_`` and ``\\`` included, is literal;
- **list of UID** matching — backslash-separated UIDs, any of which may match (UI only);
- **range** matching — ``A-B``, ``A-`` and ``-B`` for DA, TM and DT (bounds included); a
  partial time bound such as ``1015`` covers the whole minute;
- numbers (IS and the binary integer VRs) — single value only, compared as integers.

Case: PN values match case-insensitively (PS3.4 allows it, and users type names in any case),
through ``ILIKE``: ``lower() LIKE lower()`` on SQLite, whose ``lower()`` the index replaces with
a Unicode one (:mod:`dicom_node.index`), and PostgreSQL's own, which folds what the database's
``LC_CTYPE`` folds. Every other VR matches case-sensitively. The usual pitfalls are avoided on
both supported back ends: SQLite's ``LIKE`` ignores ASCII case, so case-sensitive wildcards
compile to ``GLOB`` there (and to ``LIKE ... ESCAPE`` on PostgreSQL, where ``LIKE`` is
case-sensitive); ``%``, ``_`` and the escape character in a key value are escaped, never
wildcards.

Padding: leading and trailing spaces are insignificant for the VRs where PS3.5 says so, UIDs
lose trailing NUL padding, and person names also lose trailing empty components (``DOE^JOHN^^``
equals ``DOE^JOHN``) on both sides of the comparison.

Everything here is a pure function of its arguments; values that cannot be matched (a wildcard
in a date, a malformed range, a list outside UIDs) raise :class:`MatchError`, which the query
service answers with a failure status.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Boolean, ColumnElement, SQLColumnExpression, and_, func, literal, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

__all__ = [
    "NUMERIC_VRS",
    "RANGE_VRS",
    "WILDCARD_VRS",
    "MatchError",
    "MatchKind",
    "classify",
    "escape_glob",
    "escape_like",
    "match",
    "match_any",
    "normalize",
    "parse_range",
    "wildcard_to_glob",
    "wildcard_to_like",
]

#: VRs whose key values may hold ``*`` and ``?`` (PS3.4 C.2.2.2.4).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
#: VRs that take range matching (PS3.4 C.2.2.2.5).
RANGE_VRS = frozenset({"DA", "TM", "DT"})
#: VRs matched as integers (the index stores them in integer columns).
NUMERIC_VRS = frozenset({"IS", "SS", "US", "SL", "UL", "SV", "UV"})
#: VRs where leading spaces are padding too (PS3.5 Table 6.2-1); the text VRs keep them.
_STRIP_BOTH_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM",
                             "UC"})
#: The escape character of the LIKE patterns; a backslash cannot occur inside one DICOM value
#: (it separates values), and it is escaped anyway should one come through.
_ESCAPE = "\\"
#: Characters at the end of a person name that only delimit empty components or groups.
_PN_PADDING = "^= "

_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_DATETIME = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?$")
_RANGE_FORMATS = {"DA": _DATE, "TM": _TIME, "DT": _DATETIME}
_INTEGER = re.compile(r"^[+-]?\d{1,20}$")


class MatchError(ValueError):
    """A key value that cannot be matched as given (wrong form for its VR)."""


class MatchKind(enum.Enum):
    """The kind of matching a key value asks for (PS3.4 C.2.2.2)."""

    UNIVERSAL = "universal"
    SINGLE = "single value"
    WILDCARD = "wildcard"
    UID_LIST = "list of UID"
    RANGE = "range"


def normalize(value: str, vr: str) -> str:
    """Drop the padding that is not part of a value of this VR.

    Parameters
    ----------
    value : str
        The key value as decoded (pydicom usually strips trailing spaces already).
    vr : str
        Its value representation.

    Returns
    -------
    str
        UI: without trailing NULs and spaces; the VRs where PS3.5 calls leading and trailing
        spaces insignificant: stripped on both ends; PN additionally without trailing ``^``
        and ``=`` (empty components); other VRs (ST, LT, UT, ...): trailing spaces only.
    """
    if vr == "UI":
        return value.rstrip("\0 ").strip(" ")
    if vr == "PN":
        return value.strip(" ").rstrip(_PN_PADDING)
    if vr in _STRIP_BOTH_VRS:
        return value.strip(" ")
    return value.rstrip(" ")


def classify(value: str, vr: str) -> MatchKind:
    """Which kind of matching ``value`` asks for on an attribute of this VR.

    Parameters
    ----------
    value : str
        The key value (backslash-separated when it has several values).
    vr : str
        The attribute's value representation.

    Returns
    -------
    MatchKind

    Raises
    ------
    MatchError
        Several values outside UI, or ``*``/``?`` in a VR that does not allow wildcards.
    """
    value = normalize(value, vr)
    if value == "" or set(value) == {"*"}:
        # A lone "*" also returns entities with an empty value (PS3.4 C.2.2.2.4), exactly as
        # the empty value does.
        return MatchKind.UNIVERSAL
    if "\\" in value:
        if vr == "UI":
            return MatchKind.UID_LIST
        raise MatchError(f"several values are matched only for UIDs, not for VR {vr}")
    if vr in RANGE_VRS and "-" in value:
        return MatchKind.RANGE
    if "*" in value or "?" in value:
        if vr in WILDCARD_VRS:
            return MatchKind.WILDCARD
        raise MatchError(f"wildcards are not allowed for VR {vr}")
    return MatchKind.SINGLE


def escape_like(text: str) -> str:
    """``text`` as a literal LIKE pattern (``%``, ``_`` and the escape character escaped)."""
    return (text.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%")
            .replace("_", _ESCAPE + "_"))


def escape_glob(text: str) -> str:
    """``text`` as a literal SQLite GLOB pattern (``*``, ``?`` and ``[`` in brackets)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def wildcard_to_like(pattern: str) -> str:
    """A DICOM wildcard pattern as a LIKE pattern with ``\\`` as the escape character."""
    return "".join("%" if c == "*" else "_" if c == "?" else escape_like(c) for c in pattern)


def wildcard_to_glob(pattern: str) -> str:
    """A DICOM wildcard pattern as an SQLite GLOB pattern (case-sensitive)."""
    return "".join(c if c in "*?" else escape_glob(c) for c in pattern)


def parse_range(value: str, vr: str) -> tuple[str | None, str | None]:
    """The bounds of a DA, TM or DT range value (None: open on that side).

    Parameters
    ----------
    value : str
        ``A-B``, ``A-`` or ``-B``; a value without ``-`` is the range ``A-A``.
    vr : str
        DA, TM or DT.

    Raises
    ------
    MatchError
        Not a range VR, both bounds missing, or a bound that is not a valid value of the VR
        (the legacy ``YYYY.MM.DD`` and ``HH:MM`` forms are not accepted).
    """
    if vr not in RANGE_VRS:
        raise MatchError(f"range matching is not defined for VR {vr}")
    value = normalize(value, vr)
    if value.count("-") > 1:
        raise MatchError(f"a {vr} range has one '-'")
    lower, sep, upper = value.partition("-")
    if not sep:
        upper = lower
    if not lower and not upper:
        raise MatchError(f"a {vr} range needs at least one bound")
    pattern = _RANGE_FORMATS[vr]
    for bound in (lower, upper):
        if bound and not pattern.match(bound):
            raise MatchError(f"invalid {vr} range bound")
    return lower or None, upper or None


def match(column: SQLColumnExpression[Any], value: str, vr: str) -> ColumnElement[bool] | None:
    """The WHERE clause that matches ``column`` against one key value.

    Parameters
    ----------
    column : SQLColumnExpression
        The index column (or expression) holding the attribute: a string column, or an
        integer column for :data:`NUMERIC_VRS`.
    value : str
        The key value; several values are backslash-separated.
    vr : str
        The attribute's value representation (decides wildcards, ranges, lists and case).

    Returns
    -------
    ColumnElement of bool or None
        None for universal matching (no constraint).

    Raises
    ------
    MatchError
        The value has a form its VR does not allow.
    """
    kind = classify(value, vr)
    if kind is MatchKind.UNIVERSAL:
        return None
    value = normalize(value, vr)
    if vr in NUMERIC_VRS:
        return _match_integer(column, value, kind, vr)
    if kind is MatchKind.UID_LIST:
        uids = [normalize(uid, vr) for uid in value.split("\\")]
        uids = list(dict.fromkeys(uid for uid in uids if uid))
        if any("*" in uid or "?" in uid for uid in uids):
            raise MatchError("wildcards are not allowed in a list of UIDs")
        return column.in_(uids)
    if kind is MatchKind.RANGE or (kind is MatchKind.SINGLE and vr in ("TM", "DT")):
        # A single time is the range of itself, so "1015" finds 10:15:30 too.
        return _match_range(column, *parse_range(value, vr))
    if kind is MatchKind.SINGLE and vr == "DA":
        parse_range(value, vr)  # validates the date
        return column == value
    if vr == "PN":
        pattern = wildcard_to_like(value) if kind is MatchKind.WILDCARD else escape_like(value)
        return func.rtrim(column, _PN_PADDING).ilike(pattern, escape=_ESCAPE)
    if kind is MatchKind.WILDCARD:
        return _CaseSensitiveMatch(column, literal(wildcard_to_like(value)),
                                   literal(wildcard_to_glob(value)))
    return column == value


def match_any(column: SQLColumnExpression[Any], values: Sequence[str],
              vr: str) -> ColumnElement[bool] | None:
    """Match when ``column`` matches any of ``values`` (e.g. Modalities in Study).

    Returns None (no constraint) when there are no values or any of them is universal.
    """
    clauses = [match(column, value, vr) for value in values]
    if not clauses:
        return None
    present = [clause for clause in clauses if clause is not None]
    if len(present) < len(clauses):
        return None
    return present[0] if len(present) == 1 else or_(*present)


def _match_integer(column: SQLColumnExpression[Any], value: str, kind: MatchKind,
                   vr: str) -> ColumnElement[bool]:
    if kind is not MatchKind.SINGLE or not _INTEGER.match(value):
        raise MatchError(f"a {vr} key takes a single integer value")
    return column == int(value)


def _match_range(column: SQLColumnExpression[Any], lower: str | None,
                 upper: str | None) -> ColumnElement[bool]:
    # Values of one VR compare correctly as strings (fixed-width digits, most significant
    # first); a shorter upper bound ("1015") covers every value that starts with it.
    clauses: list[ColumnElement[bool]] = [column != ""]
    if lower is not None:
        clauses.append(column >= lower)
    if upper is not None:
        clauses.append(func.substr(column, 1, len(upper)) <= upper)
    return and_(*clauses)


class _CaseSensitiveMatch(FunctionElement[bool]):
    """``column`` matches a wildcard pattern, case-sensitively on every back end.

    Carries the pattern in both forms (LIKE and GLOB) as bound parameters, so that a cached
    compiled statement still gets the right pattern; each dialect renders the one it needs.
    """

    name = "dicom_case_sensitive_match"
    type = Boolean()
    inherit_cache = True


@compiles(_CaseSensitiveMatch)
def _compile_like(element: _CaseSensitiveMatch, compiler: Any, **kw: Any) -> str:
    # PostgreSQL (and standard SQL): LIKE is case-sensitive.
    column, like, _glob = element.clauses.clauses
    return f"({compiler.process(column.like(like, escape=_ESCAPE), **kw)})"


@compiles(_CaseSensitiveMatch, "sqlite")
def _compile_glob(element: _CaseSensitiveMatch, compiler: Any, **kw: Any) -> str:
    # SQLite's LIKE ignores ASCII case; GLOB does not. The parentheses keep the comparison
    # whole where SQLAlchemy appends "= 1" to a boolean (SQLite has no native boolean).
    column, _like, glob = element.clauses.clauses
    return f"({compiler.process(column.op('GLOB')(glob), **kw)})"
