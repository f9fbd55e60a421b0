"""Shared fixtures and rules of the suite.

- ``shared_data``: the real CT data beside the checkout (read in place, never copied into the
  repo); ``regressor``: the shipped model, loaded once per session.
- Real peers and data that are missing skip the test, or fail it when ``CI`` is set
  (:mod:`tests.needs`); the ``requires_tool`` marker checks programs before a test runs.
- ``report(section, line)``: figures a test measured (timings, counts of fuzz inputs, errors in
  mm), printed in the "figures" section of the terminal summary after the run
  (:mod:`tests.figures`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from model.paths import DEFAULT_WEIGHTS, shared_data_dir
from model.reading.nifti import read_nifti
from model.reading.volume import CTVolume
from model.scoring.inference import BodyPartRegressor
from tests.dicom_factory import shrink
from tests.figures import TITLE, Report, summary_lines
from tests.needs import missing, require_tool

#: (section, line) records of the ``report`` fixture, in the order they were made.
FIGURES = pytest.StashKey[list[tuple[str, str]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FIGURES] = []
    config.addinivalue_line(
        "markers", "requires_tool(*names): programs the test runs (skip, or fail when CI is set)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires_tool"):
        for name in mark.args:
            require_tool(name)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real CT data folder (``$BPR_SHARED_DATA`` or ``../shared/data``)."""
    path = shared_data_dir()
    if not (path / "manifest.csv").exists():
        missing(f"real CT data not found at {path} (set BPR_SHARED_DATA; read in place, "
                "never copied into the repo)")
    return path


@pytest.fixture(scope="session")
def chest_abdomen_ct(shared_data: Path) -> CTVolume:
    """CRLM-CT-1004: 41 slices of lower chest and upper abdomen, at 6 mm pixels."""
    return shrink(read_nifti(shared_data / "ct" / "crlm_ct_1004.nii.gz"), pixel_step=2)


@pytest.fixture(scope="session")
def regressor() -> BodyPartRegressor:
    """The shipped model (or ``$BPR_TEST_WEIGHTS``) with the statistics analysis needs."""
    weights = Path(os.environ.get("BPR_TEST_WEIGHTS", str(DEFAULT_WEIGHTS)))
    if not weights.exists():
        missing(f"no model weights at {weights}")
    reg = BodyPartRegressor.load(weights)
    needed = [k for k in ("slope_per_mm", "slope_ratio_range", "tangential_slope")
              if k not in reg.meta.statistics]
    if needed:
        missing(f"{weights.with_suffix('.json')} lacks statistics {needed} "
                "(model.evaluation.curve_statistics.postprocessing_statistics)")
    return reg


@pytest.fixture(scope="session")
def report(pytestconfig: pytest.Config) -> Report:
    """``report(section, line)`` keeps a figure for the terminal summary."""
    records = pytestconfig.stash[FIGURES]

    def add(section: str, line: str) -> None:
        records.append((section, line))

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    records = config.stash.get(FIGURES, [])
    if records:
        terminalreporter.section(TITLE)
        for line in summary_lines(records):
            terminalreporter.write_line(line)
