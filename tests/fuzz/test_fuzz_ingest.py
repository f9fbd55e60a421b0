"""Fuzzing the dataset-to-index path: adversarial files through read_header and ingest.

Each input (:mod:`tests.fuzz.generators`) goes through the **dataset → index** property of
:mod:`tests.fuzz.properties`: rejected with a failure status and nothing written, or stored
once, under the storage root, and indexed. The hand-written inputs also go through the
series reader inside a series. The last test checks that nothing was written outside the
storage roots and reports what became of the inputs (terminal summary, "figures").
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicom_node.index import Index
from model.reading.dicom import read_dicom_series
from tests.figures import Report
from tests.fuzz.damage import Garbage, Recipe, encode
from tests.fuzz.generators import (
    ANALYSIS_EXAMPLES,
    INDEX_EXAMPLES,
    READ_EXAMPLES,
    REQUIRED_TOTAL,
    SOAK,
    WORKER_EXAMPLES,
    SliceSpec,
    ct_slice,
)
from tests.fuzz.properties import (
    Sandbox,
    check_dataset_to_index,
    check_series_read,
    outcome_lines,
    write_inputs,
)
from tests.fuzz.strategies import (
    HANDWRITTEN,
    SeriesRecipe,
    fuzz_settings,
    index_inputs,
    series_blobs,
    series_specs,
)

# Hostile values make pydicom warn on almost every input; that is expected, not news.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")
#: What each property did with its inputs ("<property>: <outcome>" → count).
OUTCOMES: Counter[str] = Counter()


def test_base_instances_are_valid(index: Index, sandbox: Sandbox) -> None:
    """The unmutated starting points are stored and read (else the fuzzing proves nothing)."""
    assert check_dataset_to_index(encode(ct_slice(SliceSpec()), Recipe()), index, sandbox,
                                  "base") == "stored"
    for multiframe in (False, True):
        recipe = SeriesRecipe(n=4, size=16, multiframe=multiframe)
        paths = write_inputs(sandbox.inputs / "base", series_blobs(recipe))
        result = read_dicom_series(paths)
        assert not result.errors and len(result.volumes) == 1
        assert result.volumes[0].hu.shape == (4, 16, 16)


@pytest.mark.parametrize("name", list(HANDWRITTEN))
def test_handwritten_inputs(name: str, index: Index, sandbox: Sandbox) -> None:
    """Each named family on both paths: ingest as one instance, and read inside a series."""
    recipe = HANDWRITTEN[name]
    data = encode(ct_slice(SliceSpec(size=16)), recipe)
    OUTCOMES["handwritten ingest: " + check_dataset_to_index(data, index, sandbox, name)] += 1
    specs = series_specs(SeriesRecipe(n=4, size=16))
    blobs = [encode(ct_slice(spec), recipe if i == 1 else Recipe())
             for i, spec in enumerate(specs)]
    paths = write_inputs(sandbox.inputs / "handwritten", blobs)
    OUTCOMES["handwritten read: " + check_series_read(paths, sandbox, name)] += 1


@fuzz_settings(INDEX_EXAMPLES)
@given(recipe=index_inputs, series_slot=st.integers(0, 5))
def test_fuzz_dataset_to_index(recipe: Recipe | Garbage, series_slot: int, index: Index,
                               sandbox: Sandbox) -> None:
    """Any input is rejected with a failure status, or stored once, under the root, indexed."""
    # A few shared series and studies, so inputs also land in series that already exist.
    spec = SliceSpec(series_uid=f"2.25.77{series_slot}", study_uid=f"2.25.88{series_slot % 2}")
    data = encode(ct_slice(spec), recipe)
    OUTCOMES["dataset→index: " + check_dataset_to_index(data, index, sandbox, recipe)] += 1


def test_report_and_nothing_outside_storage(report: Report, sandbox: Sandbox) -> None:
    """Last: the sandbox holds nothing stray, the budget is the issue's; the counts reported."""
    sandbox.reset()
    stray = [p for p in sandbox.base.rglob("*")
             if not p.is_relative_to(sandbox.inputs) and p != sandbox.work]
    assert stray == [], f"files outside the storage roots: {stray[:10]}"
    configured = INDEX_EXAMPLES + READ_EXAMPLES + ANALYSIS_EXAMPLES + WORKER_EXAMPLES
    assert configured >= REQUIRED_TOTAL
    report("fuzz: dataset → index", f"inputs tried: {sum(OUTCOMES.values())} ({INDEX_EXAMPLES} "
           f"generated, {len(HANDWRITTEN)} hand-written on two paths; {configured} configured "
           f"in all fuzz modules; BPR_SOAK factor {SOAK})")
    for line in outcome_lines(OUTCOMES):
        report("fuzz: dataset → index", line)
