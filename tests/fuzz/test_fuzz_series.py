"""Fuzzing the series-to-volume path, the analysis and the node's worker with damaged series.

Series inputs (:class:`~tests.fuzz.strategies.SeriesRecipe`: inconsistent geometry, damaged
files) go through the **series → volume**, **series → analysis** (shipped model) and
**worker** properties of :mod:`tests.fuzz.properties`. The last test checks that nothing was
written outside the storage roots and reports what became of the inputs (terminal summary,
"figures").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicom_node.analysis_worker import AnalysisWorker
from dicom_node.config import config_from_dict
from dicom_node.index import Index
from dicom_node.storage import FileStore
from model.scoring.inference import BodyPartRegressor
from tests.figures import Report
from tests.fuzz.damage import Recipe
from tests.fuzz.generators import ANALYSIS_EXAMPLES, READ_EXAMPLES, SOAK, WORKER_EXAMPLES
from tests.fuzz.properties import (
    Sandbox,
    check_series_analysis,
    check_series_read,
    check_worker,
    outcome_lines,
    write_inputs,
)
from tests.fuzz.strategies import (
    SeriesRecipe,
    analysis_edits,
    fuzz_settings,
    recipes,
    series_blobs,
    series_recipes,
    worker_edits,
)

# Hostile values make pydicom warn on almost every input; that is expected, not news.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")
#: What each property did with its inputs ("<property>: <outcome>" → count).
OUTCOMES: Counter[str] = Counter()


@fuzz_settings(READ_EXAMPLES)
@given(recipe=series_recipes(min_n=2, max_n=6, size=16))
def test_fuzz_series_to_volume(recipe: SeriesRecipe, sandbox: Sandbox) -> None:
    """read_dicom_series on damaged series never raises; bad files become error messages."""
    paths = write_inputs(sandbox.inputs / "read", series_blobs(recipe))
    OUTCOMES["series→volume: " + check_series_read(paths, sandbox, recipe)] += 1


@fuzz_settings(ANALYSIS_EXAMPLES)
@given(recipe=series_recipes(min_n=8, max_n=12, size=64, file_damage=False),
       damage=st.lists(st.tuples(st.integers(0, 15), recipes(analysis_edits, max_damage=0)),
                       max_size=3))
def test_fuzz_series_analysis(recipe: SeriesRecipe, damage: list[tuple[int, Recipe]],
                              regressor: BodyPartRegressor, sandbox: Sandbox) -> None:
    """analyze_series on readable-but-hostile series returns or raises CTInputError only."""
    recipe = replace(recipe, files=tuple(damage))
    paths = write_inputs(sandbox.inputs / "analysis", series_blobs(recipe))
    OUTCOMES["series→analysis: " + check_series_analysis(paths, regressor, sandbox,
                                                         recipe)] += 1


@pytest.fixture(scope="module")
def worker(index: Index, sandbox: Sandbox, regressor: BodyPartRegressor
           ) -> Iterator[AnalysisWorker]:
    """The node's analysis worker on the fuzzing index and storage, SR writing on."""
    config = config_from_dict({"storage": {"root": str(sandbox.storage_root()),
                                           "min_free_bytes": 0},
                               "peers": [{"ae_title": "FUZZSCU"}]}, sandbox.base)
    # The session's model: loaded once, not twice.
    made = AnalysisWorker(index, FileStore(sandbox.storage_root()), config, model=regressor)
    yield made
    made.shutdown()


@fuzz_settings(WORKER_EXAMPLES)
@given(recipe=series_recipes(min_n=8, max_n=10, size=64, file_damage=False),
       damage=st.lists(st.tuples(st.integers(0, 9), recipes(worker_edits, max_damage=0)),
                       min_size=1, max_size=3))
def test_fuzz_analysis_worker(recipe: SeriesRecipe, damage: list[tuple[int, Recipe]],
                              index: Index, worker: AnalysisWorker, sandbox: Sandbox) -> None:
    """Whatever the node accepted, the worker finishes the series DONE or FAILED (with why)."""
    blobs = series_blobs(replace(recipe, files=tuple(damage)))
    OUTCOMES["worker: " + check_worker(blobs, index, worker, sandbox, (recipe, damage))] += 1


def test_report_and_nothing_outside_storage(report: Report, sandbox: Sandbox) -> None:
    """Last: the sandbox holds nothing stray; the counts are reported."""
    sandbox.reset()
    stray = [p for p in sandbox.base.rglob("*")
             if not p.is_relative_to(sandbox.inputs) and p != sandbox.work]
    assert stray == [], f"files outside the storage roots: {stray[:10]}"
    configured = READ_EXAMPLES + ANALYSIS_EXAMPLES + WORKER_EXAMPLES
    report("fuzz: series", f"inputs tried: {sum(OUTCOMES.values())} (configured {configured}, "
           f"BPR_SOAK factor {SOAK})")
    for line in outcome_lines(OUTCOMES):
        report("fuzz: series", line)
