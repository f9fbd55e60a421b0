"""The suite's own rules: a missing real peer skips, or fails when ``CI`` is set; figures reach
the terminal summary."""

from __future__ import annotations

import pytest

from tests.figures import TITLE, parse_summary
from tests.needs import in_ci, missing, require_tool

ABSENT = "bpr-no-such-tool"

#: An inner test session that loads the suite's conftest (hooks and fixtures).
CONFTEST = "from tests.conftest import *  # noqa: F403\n"
INNER_TESTS = f'''
import pytest


@pytest.mark.requires_tool("{ABSENT}")
def test_marked():
    pass


def test_called():
    from tests.needs import require_tool
    require_tool("{ABSENT}")


def test_data(shared_data):
    pass


def test_figures(report):
    report("inner", "one figure")
    report("inner", "another")
'''


@pytest.mark.parametrize(("value", "expected"), [
    ("", False), ("0", False), ("false", False), ("No", False), ("1", True), ("true", True),
])
def test_ci_variable(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_missing_tool_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=ABSENT):
        require_tool(ABSENT)


def test_missing_tool_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_tool(ABSENT)
    with pytest.raises(pytest.fail.Exception, match="no data here"):
        missing("no data here")


def test_installed_tool_is_found() -> None:
    assert require_tool("sh").endswith("sh")


@pytest.mark.parametrize("ci", [False, True], ids=["local", "CI=1"])
def test_inner_session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                       ci: bool) -> None:
    """Marker, helper and shared_data fixture: skipped locally, failures under CI=1; the
    figures section is written either way."""
    if ci:
        monkeypatch.setenv("CI", "1")
    else:
        monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("BPR_SHARED_DATA", str(pytester.path / "absent"))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    if ci:
        # A fixture or marker failing in setup is an error: the run fails just the same.
        result.assert_outcomes(passed=1, failed=1, errors=2)
        result.stdout.fnmatch_lines([f"*{ABSENT} not installed*CI is set*",
                                     "*real CT data not found*CI is set*"])
    else:
        result.assert_outcomes(passed=1, skipped=3)
        result.stdout.fnmatch_lines([f"SKIPPED*{ABSENT} not installed*"])
    output = "\n".join(result.outlines)
    assert f" {TITLE} " in output
    assert parse_summary(output) == ["inner:", "  one figure", "  another"]
