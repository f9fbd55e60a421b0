"""The node's status table (dicom_node.statuses) against pynetdicom's, and its single owner."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import pytest
from pynetdicom.status import (
    GENERAL_STATUS,
    QR_FIND_SERVICE_CLASS_STATUS,
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from dicom_node import statuses as st

StatusTable = dict[int, tuple[str, str]]

SERVICE_TABLES: dict[str, StatusTable] = {
    "find": QR_FIND_SERVICE_CLASS_STATUS,
    "get": QR_GET_SERVICE_CLASS_STATUS,
    "move": QR_MOVE_SERVICE_CLASS_STATUS,
}

#: (code, the pynetdicom table of the service that answers or reads it, its category there).
CODES: list[tuple[int, StatusTable, str]] = [
    (st.SUCCESS, GENERAL_STATUS, "Success"),
    (st.PENDING, QR_FIND_SERVICE_CLASS_STATUS, "Pending"),
    (st.PENDING, QR_GET_SERVICE_CLASS_STATUS, "Pending"),
    (st.CANCEL, GENERAL_STATUS, "Cancel"),
    (st.ATTRIBUTE_LIST_ERROR, GENERAL_STATUS, "Warning"),
    (st.ATTRIBUTE_VALUE_OUT_OF_RANGE, GENERAL_STATUS, "Warning"),
    (st.PROCESSING_FAILURE, GENERAL_STATUS, "Failure"),
    (st.DUPLICATE_SOP_INSTANCE, GENERAL_STATUS, "Failure"),
    (st.INVALID_OBJECT_INSTANCE, GENERAL_STATUS, "Failure"),
    (st.SOP_CLASS_NOT_SUPPORTED, GENERAL_STATUS, "Failure"),
    (st.NOT_AUTHORIZED, GENERAL_STATUS, "Failure"),
    (st.DUPLICATE_INVOCATION, GENERAL_STATUS, "Failure"),
    (st.UNRECOGNIZED_OPERATION, GENERAL_STATUS, "Failure"),
    (st.MISTYPED_ARGUMENT, GENERAL_STATUS, "Failure"),
    (st.RESOURCE_LIMITATION, GENERAL_STATUS, "Failure"),
    (st.OUT_OF_RESOURCES, STORAGE_SERVICE_CLASS_STATUS, "Failure"),
    (st.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, STORAGE_SERVICE_CLASS_STATUS, "Failure"),
    (st.CANNOT_UNDERSTAND, STORAGE_SERVICE_CLASS_STATUS, "Failure"),
    (st.IDENTIFIER_DOES_NOT_MATCH, QR_FIND_SERVICE_CLASS_STATUS, "Failure"),
    (st.MOVE_DESTINATION_UNKNOWN, QR_MOVE_SERVICE_CLASS_STATUS, "Failure"),
    *[(st.UNABLE_TO_PROCESS[service] + extra, table, "Failure")
      for service, table in SERVICE_TABLES.items()
      for extra in (st.UNDECODABLE_IDENTIFIER, st.DATABASE_ERROR)],
]


@pytest.mark.parametrize(("code", "table", "category"), CODES,
                         ids=[f"0x{code:04X}" for code, _, _ in CODES])
def test_status_means_what_pynetdicom_says(code: int, table: StatusTable,
                                           category: str) -> None:
    assert table[code][0] == category


@pytest.mark.parametrize("code", [*st.WARNING_RANGE[:2], *st.STORED_WITH_WARNING])
def test_stored_with_warning_codes_are_warnings(code: int) -> None:
    assert code_to_category(code) == "Warning"


@pytest.mark.parametrize(("codes", "table"), [
    (st.OUT_OF_RESOURCES_RANGE, STORAGE_SERVICE_CLASS_STATUS),
    (st.DOES_NOT_MATCH_RANGE, STORAGE_SERVICE_CLASS_STATUS),
    (st.CANNOT_UNDERSTAND_RANGE, STORAGE_SERVICE_CLASS_STATUS),
])
def test_failure_ranges_are_failures(codes: range, table: StatusTable) -> None:
    assert {table[code][0] for code in codes} == {"Failure"}


def test_no_status_literal_outside_the_table() -> None:
    """Hex literals in node code are statuses and live in statuses.py (tag groups excepted)."""
    package = Path(__file__).resolve().parents[1] / "dicom_node"
    allowed = {("query_identifier.py", "0x0000"), ("query_identifier.py", "0x0002")}
    found = []
    for path in sorted(package.glob("*.py")):
        if path.name == "statuses.py":
            continue
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text("utf-8")).readline)
        for token in tokens:
            if (token.type == tokenize.NUMBER and token.string.lower().startswith("0x")
                    and (path.name, token.string) not in allowed):
                found.append(f"{path.name}:{token.start[0]} {token.string}")
    assert found == []
