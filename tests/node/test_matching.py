"""DICOM attribute matching (dicom_node.matching) on an in-memory SQLite index.

Each row of the small index below exists to catch one classic mistake: SQLite's
case-insensitive LIKE, unescaped ``%``/``_``/``[``, prefix matches of UIDs, empty values
matching a range, and padding that makes equal values differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import ColumnElement, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from dicom_node.index import Index, Series, Study
from dicom_node.matching import (
    MatchError,
    MatchKind,
    classify,
    escape_glob,
    escape_like,
    match,
    match_any,
    normalize,
    parse_range,
    wildcard_to_glob,
    wildcard_to_like,
)

# label: (patient name, date, time, accession, description, study UID)
STUDIES = {
    "A": ("Doe^John", "20200101", "101530.123", "ACC_1", "CT Chest", "1.2.3.1"),
    "B": ("DOE^JANE^^", "20201231", "235959", "ACC%2", "ct chest", "1.2.3.2"),
    "C": ("Smith_Jones^Ann", "19991231", "0800", "ACCX1", "CT [Head]", "1.2.3.3"),
    "D": ("100%^Pure", "", "", "", "", "1.2.3.4"),
    "E": ("Müller^Jörg", "20210615", "1200", "acc_1", "Thorax 50% dose", "1.2.3.40"),
    "F": ("Smith-Jones^Bob", "20210616", "120000", "ACC\\", "CT\\", "1.2.3.5"),
}
# label: (study label, modality, series number)
SERIES = {"s1": ("A", "CT", 1), "s2": ("A", "MR", 2), "s3": ("B", "CT", 10), "s4": ("C", "", None)}


@pytest.fixture(scope="module")
def index() -> Iterator[Index]:
    idx = Index("sqlite://")
    with idx.session() as session:
        studies = {}
        for label, (name, date, time, accession, description, uid) in STUDIES.items():
            studies[label] = Study(study_instance_uid=uid, patient_id=f"P{label}",
                                   patient_name=name, study_date=date, study_time=time,
                                   accession_number=accession, study_description=description,
                                   study_id=label)
            session.add(studies[label])
        session.flush()
        for label, (study, modality, number) in SERIES.items():
            session.add(Series(series_instance_uid=f"9.{label}", study_pk=studies[study].id,
                               modality=modality, series_number=number,
                               series_description=label, first_received_at=0.0,
                               last_received_at=0.0))
    yield idx
    idx.close()


def studies(index: Index, clause: ColumnElement[bool] | None) -> set[str]:
    """Labels (StudyID) of the studies that ``clause`` matches."""
    stmt = select(Study.study_id)
    if clause is not None:
        stmt = stmt.where(clause)
    with index.session() as session:
        return set(session.scalars(stmt))


def series(index: Index, clause: ColumnElement[bool] | None) -> set[str]:
    """Labels (SeriesDescription) of the series that ``clause`` matches."""
    stmt = select(Series.series_description)
    if clause is not None:
        stmt = stmt.where(clause)
    with index.session() as session:
        return set(session.scalars(stmt))


def sql(clause: ColumnElement[bool] | None, dialect: str) -> tuple[str, list[object]]:
    """``clause`` compiled for a dialect: the SQL text and the bound values."""
    assert clause is not None
    dialects: dict[str, Callable[[], Dialect]] = {"postgresql": postgresql.dialect,
                                                  "sqlite": sqlite.dialect}
    compiled = select(Study.id).where(clause).compile(dialect=dialects[dialect]())
    return str(compiled), list(compiled.params.values())


# -- normalize -------------------------------------------------------------------------------


def test_normalize_drops_uid_nul_padding() -> None:
    assert normalize("1.2.3\0", "UI") == "1.2.3"


def test_normalize_strips_both_ends_of_lo() -> None:
    assert normalize("  CT Chest  ", "LO") == "CT Chest"


def test_normalize_keeps_leading_spaces_of_text() -> None:
    assert normalize("  indented  ", "LT") == "  indented"


def test_normalize_drops_empty_name_components() -> None:
    assert normalize("DOE^JOHN^^ ", "PN") == "DOE^JOHN"


def test_normalize_drops_empty_name_groups() -> None:
    assert normalize("DOE^JOHN==", "PN") == "DOE^JOHN"


# -- classify --------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "vr", "kind"), [
    ("", "LO", MatchKind.UNIVERSAL),
    ("   ", "LO", MatchKind.UNIVERSAL),
    ("*", "PN", MatchKind.UNIVERSAL),
    ("**", "CS", MatchKind.UNIVERSAL),
    ("*", "DA", MatchKind.UNIVERSAL),
    ("*", "UI", MatchKind.UNIVERSAL),
    ("CT", "CS", MatchKind.SINGLE),
    ("CT*", "CS", MatchKind.WILDCARD),
    ("D?E", "PN", MatchKind.WILDCARD),
    ("1.2\\1.3", "UI", MatchKind.UID_LIST),
    ("20200101-", "DA", MatchKind.RANGE),
    ("-1200", "TM", MatchKind.RANGE),
    ("Smith-Jones", "PN", MatchKind.SINGLE),
    ("20200101", "DA", MatchKind.SINGLE),
])
def test_classify(value: str, vr: str, kind: MatchKind) -> None:
    assert classify(value, vr) is kind


@pytest.mark.parametrize(("value", "vr"), [
    ("2020*", "DA"),
    ("1.2.*", "UI"),
    ("1?", "IS"),
    ("A\\B", "LO"),
    ("CT\\MR", "CS"),
])
def test_classify_rejects_forms_the_vr_does_not_allow(value: str, vr: str) -> None:
    with pytest.raises(MatchError):
        classify(value, vr)


# -- pattern translation ---------------------------------------------------------------------


def test_escape_like_escapes_percent_underscore_and_escape_char() -> None:
    assert escape_like("a%b_c\\") == "a\\%b\\_c\\\\"


def test_escape_glob_brackets_special_characters() -> None:
    assert escape_glob("a*b?[c]") == "a[*]b[?][[]c]"


def test_wildcard_to_like() -> None:
    assert wildcard_to_like("a%*_?") == "a\\%%\\__"


def test_wildcard_to_glob_keeps_wildcards_and_escapes_bracket() -> None:
    assert wildcard_to_glob("a[b]*?") == "a[[]b]*?"


# -- parse_range -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "vr", "bounds"), [
    ("20200101-20201231", "DA", ("20200101", "20201231")),
    ("-20201231", "DA", (None, "20201231")),
    ("20200101-", "DA", ("20200101", None)),
    ("1015", "TM", ("1015", "1015")),
    ("101530.5-12", "TM", ("101530.5", "12")),
    ("2020-20211231235959", "DT", ("2020", "20211231235959")),
])
def test_parse_range(value: str, vr: str, bounds: tuple[str | None, str | None]) -> None:
    assert parse_range(value, vr) == bounds


@pytest.mark.parametrize(("value", "vr"), [
    ("-", "DA"),
    ("2020-", "DA"),
    ("2020.01.01-", "DA"),
    ("20200101-20201231-20221231", "DA"),
    ("10:15-", "TM"),
    ("A-B", "LO"),
])
def test_parse_range_rejects_malformed(value: str, vr: str) -> None:
    with pytest.raises(MatchError):
        parse_range(value, vr)


# -- universal and single value --------------------------------------------------------------


def test_empty_value_is_universal(index: Index) -> None:
    assert match(Study.study_description, "", "LO") is None
    assert studies(index, None) == set(STUDIES)


def test_lone_asterisk_is_universal_and_keeps_empty_values(index: Index) -> None:
    assert match(Study.study_description, "*", "LO") is None


def test_asterisk_with_question_mark_excludes_empty_values(index: Index) -> None:
    assert "D" not in studies(index, match(Study.study_description, "?*", "LO"))


def test_single_value_is_case_sensitive(index: Index) -> None:
    assert studies(index, match(Study.study_description, "CT Chest", "LO")) == {"A"}
    assert studies(index, match(Study.study_description, "ct chest", "LO")) == {"B"}


def test_single_value_ignores_padding(index: Index) -> None:
    assert studies(index, match(Study.study_description, " CT Chest  ", "LO")) == {"A"}


def test_single_value_underscore_is_literal(index: Index) -> None:
    assert studies(index, match(Study.accession_number, "ACC_1", "SH")) == {"A"}


def test_single_value_percent_is_literal(index: Index) -> None:
    assert studies(index, match(Study.accession_number, "ACC%2", "SH")) == {"B"}


def test_single_date(index: Index) -> None:
    assert studies(index, match(Study.study_date, "20200101", "DA")) == {"A"}


def test_single_date_must_be_a_date() -> None:
    with pytest.raises(MatchError):
        match(Study.study_date, "2020", "DA")


# -- wildcards -------------------------------------------------------------------------------


def test_wildcard_is_case_sensitive_on_sqlite(index: Index) -> None:
    assert studies(index, match(Study.study_description, "CT*", "LO")) == {"A", "C", "F"}
    assert studies(index, match(Study.study_description, "ct*", "LO")) == {"B"}


def test_question_mark_matches_one_character(index: Index) -> None:
    assert studies(index, match(Study.accession_number, "ACC?1", "SH")) == {"A", "C"}


def test_wildcard_underscore_is_literal(index: Index) -> None:
    assert studies(index, match(Study.accession_number, "ACC_*", "SH")) == {"A"}


def test_wildcard_percent_is_literal(index: Index) -> None:
    assert studies(index, match(Study.study_description, "*%*", "LO")) == {"E"}
    assert studies(index, match(Study.accession_number, "ACC%*", "SH")) == {"B"}


def test_wildcard_bracket_is_literal(index: Index) -> None:
    assert studies(index, match(Study.study_description, "CT [H*", "LO")) == {"C"}
    assert studies(index, match(Study.study_description, "CT [Head]", "LO")) == {"C"}


def test_wildcard_backslash_in_stored_value_is_literal(index: Index) -> None:
    assert studies(index, match(Study.accession_number, "ACC?", "SH")) == {"F"}


# -- person names ----------------------------------------------------------------------------


def test_person_name_single_value_ignores_case(index: Index) -> None:
    assert studies(index, match(Study.patient_name, "doe^john", "PN")) == {"A"}


def test_person_name_ignores_empty_trailing_components(index: Index) -> None:
    assert studies(index, match(Study.patient_name, "Doe^Jane", "PN")) == {"B"}


def test_person_name_wildcard_ignores_case(index: Index) -> None:
    assert studies(index, match(Study.patient_name, "doe*", "PN")) == {"A", "B"}


def test_person_name_wildcard_underscore_is_literal(index: Index) -> None:
    assert studies(index, match(Study.patient_name, "smith_jones*", "PN")) == {"C"}


def test_person_name_question_mark_matches_hyphen_and_underscore(index: Index) -> None:
    assert studies(index, match(Study.patient_name, "smith?jones*", "PN")) == {"C", "F"}


def test_person_name_percent_is_literal(index: Index) -> None:
    assert studies(index, match(Study.patient_name, "100%*", "PN")) == {"D"}
    assert studies(index, match(Study.patient_name, "1000*", "PN")) == set()


def test_person_name_non_ascii_exact(index: Index) -> None:
    assert studies(index, match(Study.patient_name, "Müller^Jörg", "PN")) == {"E"}
    assert studies(index, match(Study.patient_name, "m?ller*", "PN")) == {"E"}


def test_person_name_non_ascii_ignores_case(index: Index) -> None:
    # SQLite's own lower() folds ASCII only; the index replaces it (as PostgreSQL's ILIKE).
    assert studies(index, match(Study.patient_name, "MÜLLER^JÖRG", "PN")) == {"E"}
    assert studies(index, match(Study.patient_name, "müller*", "PN")) == {"E"}
    assert studies(index, match(Study.patient_name, "*JÖRG", "PN")) == {"E"}


# -- lists of UIDs ---------------------------------------------------------------------------


def test_uid_list(index: Index) -> None:
    assert studies(index, match(Study.study_instance_uid, "1.2.3.1\\1.2.3.3", "UI")) == {
        "A", "C"}


def test_uid_list_ignores_padding_and_empty_items(index: Index) -> None:
    assert studies(index, match(Study.study_instance_uid, "1.2.3.1\0\\\\1.2.3.2 ", "UI")) == {
        "A", "B"}


def test_uid_is_not_a_prefix_match(index: Index) -> None:
    assert studies(index, match(Study.study_instance_uid, "1.2.3.4", "UI")) == {"D"}


def test_uid_list_rejects_wildcards() -> None:
    with pytest.raises(MatchError):
        match(Study.study_instance_uid, "1.2.3.1\\1.2.*", "UI")


# -- ranges ----------------------------------------------------------------------------------


def test_date_range_closed(index: Index) -> None:
    assert studies(index, match(Study.study_date, "20200101-20201231", "DA")) == {"A", "B"}


def test_date_range_open_end(index: Index) -> None:
    assert studies(index, match(Study.study_date, "20200101-", "DA")) == {"A", "B", "E", "F"}


def test_date_range_open_start_excludes_empty_dates(index: Index) -> None:
    assert studies(index, match(Study.study_date, "-20191231", "DA")) == {"C"}


def test_date_range_reversed_matches_nothing(index: Index) -> None:
    assert studies(index, match(Study.study_date, "20201231-20200101", "DA")) == set()


def test_time_range(index: Index) -> None:
    assert studies(index, match(Study.study_time, "1000-1100", "TM")) == {"A"}


def test_time_range_partial_upper_bound_covers_the_minute(index: Index) -> None:
    assert studies(index, match(Study.study_time, "-1015", "TM")) == {"A", "C"}


def test_single_time_is_a_range_of_itself(index: Index) -> None:
    assert studies(index, match(Study.study_time, "1015", "TM")) == {"A"}
    assert studies(index, match(Study.study_time, "1200", "TM")) == {"E", "F"}


def test_malformed_range_raises() -> None:
    with pytest.raises(MatchError):
        match(Study.study_date, "2020-2021", "DA")


# -- integers --------------------------------------------------------------------------------


def test_integer_single_value(index: Index) -> None:
    assert series(index, match(Series.series_number, "2", "IS")) == {"s2"}
    assert series(index, match(Series.series_number, " 10 ", "IS")) == {"s3"}


def test_integer_universal(index: Index) -> None:
    assert match(Series.series_number, "*", "IS") is None


@pytest.mark.parametrize("value", ["x", "1-3", "1.5"])
def test_integer_rejects_non_integers(value: str) -> None:
    with pytest.raises(MatchError):
        match(Series.series_number, value, "IS")


# -- match_any -------------------------------------------------------------------------------


def test_match_any_ors_the_values(index: Index) -> None:
    assert series(index, match_any(Series.modality, ["CT", "MR"], "CS")) == {"s1", "s2", "s3"}


def test_match_any_with_a_universal_value_is_universal() -> None:
    assert match_any(Series.modality, ["CT", ""], "CS") is None
    assert match_any(Series.modality, [], "CS") is None


def test_match_any_single_value(index: Index) -> None:
    assert series(index, match_any(Series.modality, ["M*"], "CS")) == {"s2"}


# -- SQL per dialect -------------------------------------------------------------------------


def test_case_sensitive_wildcard_is_glob_on_sqlite() -> None:
    text, params = sql(match(Study.study_description, "CT_*", "LO"), "sqlite")
    assert "GLOB ?" in text
    assert "LIKE" not in text
    assert "CT_*" in params


def test_case_sensitive_wildcard_is_like_with_escape_on_postgresql() -> None:
    text, params = sql(match(Study.study_description, "CT_*", "LO"), "postgresql")
    assert " LIKE %(param_1)s" in text
    assert "ESCAPE '\\'" in text
    assert "ILIKE" not in text
    assert params[0] == "CT\\_%"


def test_person_name_is_ilike_on_postgresql() -> None:
    text, params = sql(match(Study.patient_name, "d%e*", "PN"), "postgresql")
    assert "ILIKE" in text
    assert "d\\%e%" in params


def test_single_value_is_equality() -> None:
    text, params = sql(match(Series.modality, "CT", "CS"), "postgresql")
    assert "series.modality = %(modality_1)s" in text
    assert params == ["CT"]
