"""The series state machine (dicom_node.series_state): each transition, from each state."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.index import Index, Series, SeriesState, Study
from dicom_node.series_state import (
    abandoned_requeued,
    analysis_finished,
    claim,
    first_instance_received,
    instance_received,
    quiet_time_reached,
    reprocess_requested,
)

ALL = tuple(SeriesState)


def series(state: SeriesState | None = None, *, modality: str = "CT", derived: bool = False,
           rerun: bool = False) -> Series:
    """A series row that is not in any session."""
    made = Series(series_instance_uid="1.2.3", modality=modality, is_derived=derived,
                  rerun_requested=rerun, error=None)
    if state is not None:
        made.state = state
    return made


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    made = Index(f"sqlite:///{tmp_path / 'i.sqlite'}")
    yield made
    made.close()


def stored(index: Index, state: SeriesState, *, rerun: bool = False) -> int:
    with index.session() as db:
        study = Study(study_instance_uid=f"1.2.{time.monotonic_ns()}")
        db.add(study)
        db.flush()
        row = Series(series_instance_uid=f"1.3.{time.monotonic_ns()}", study_pk=study.id,
                     state=state, first_received_at=0.0, last_received_at=0.0,
                     rerun_requested=rerun, error="earlier failure")
        db.add(row)
        db.flush()
        return row.id


def current(index: Index, pk: int) -> tuple[SeriesState, bool, str | None]:
    with index.session() as db:
        row = db.get_one(Series, pk)
        return row.state, row.rerun_requested, row.error


def test_first_instance_of_an_analyzed_modality_is_receiving() -> None:
    made = series()
    first_instance_received(made, ("CT",))
    assert (made.state, made.error) == (SeriesState.RECEIVING, None)


@pytest.mark.parametrize(("modality", "derived", "reason"), [
    ("MR", False, "modality MR is not analyzed"),
    ("", False, "modality (none) is not analyzed"),
    ("SR", True, "SR written by this node"),
])
def test_first_instance_of_what_is_not_analyzed_is_skipped(modality: str, derived: bool,
                                                           reason: str) -> None:
    made = series(modality=modality, derived=derived)
    first_instance_received(made, ("CT",))
    assert (made.state, made.error) == (SeriesState.SKIPPED, reason)


@pytest.mark.parametrize("state", ALL)
def test_instance_received(index: Index, state: SeriesState) -> None:
    pk = stored(index, state)
    with index.engine.begin() as connection:
        uid = connection.execute(select(Series.series_instance_uid)
                                 .where(Series.id == pk)).scalar_one()
        after = instance_received(connection, uid, 5.0, "CHEST")
    reopened = state in (SeriesState.DONE, SeriesState.FAILED, SeriesState.QUEUED)
    expected = SeriesState.RECEIVING if reopened else state
    assert after == (pk, expected)
    assert current(index, pk)[:2] == (expected, state is SeriesState.PROCESSING)
    with index.session() as db:
        row = db.get_one(Series, pk)
        assert (row.instances_received, row.last_received_at) == (1, 5.0)
        assert row.original_body_part == "CHEST"


def test_instance_received_keeps_the_latest_time_and_first_body_part(index: Index) -> None:
    pk = stored(index, SeriesState.RECEIVING)
    with index.engine.begin() as connection:
        uid = connection.execute(select(Series.series_instance_uid)
                                 .where(Series.id == pk)).scalar_one()
        instance_received(connection, uid, 9.0, "PELVIS")
        instance_received(connection, uid, 7.0, "HEAD")  # a late arrival sent earlier
    with index.session() as db:
        row = db.get_one(Series, pk)
        assert (row.instances_received, row.last_received_at) == (2, 9.0)
        assert row.original_body_part == "PELVIS"


def test_instance_of_an_unknown_series_changes_nothing(index: Index) -> None:
    with index.engine.begin() as connection:
        assert instance_received(connection, "1.9.9.9", 1.0, "") is None


@pytest.mark.parametrize("state", ALL)
def test_quiet_time_queues_only_receiving(state: SeriesState) -> None:
    made = series(state)
    if state is SeriesState.RECEIVING:
        quiet_time_reached(made)
        assert made.state is SeriesState.QUEUED
    else:
        with pytest.raises(ValueError, match="not RECEIVING"):
            quiet_time_reached(made)
        assert made.state is state


@pytest.mark.parametrize(("succeeded", "rerun", "after"), [
    (True, False, SeriesState.DONE),
    (False, False, SeriesState.FAILED),
    (True, True, SeriesState.RECEIVING),
    (False, True, SeriesState.RECEIVING),
])
def test_analysis_finished(succeeded: bool, rerun: bool, after: SeriesState) -> None:
    made = series(SeriesState.PROCESSING, rerun=rerun)
    assert analysis_finished(made, succeeded=succeeded) is after
    assert (made.state, made.rerun_requested) == (after, False)


@pytest.mark.parametrize("state", ALL)
def test_abandoned_requeued(state: SeriesState) -> None:
    made = series(state)
    made.claimed_by = "gone:1:x"
    if state is SeriesState.PROCESSING:
        abandoned_requeued(made)
        assert (made.state, made.claimed_by) == (SeriesState.QUEUED, None)
    else:
        with pytest.raises(ValueError, match="not PROCESSING"):
            abandoned_requeued(made)
        assert made.state is state


@pytest.mark.parametrize("state", ALL)
def test_claim_takes_only_a_queued_series_and_only_once(index: Index,
                                                        state: SeriesState) -> None:
    pk = stored(index, state, rerun=True)
    with index.session() as db:
        first = claim(db, pk)
    with index.session() as db:
        second = claim(db, pk)
    assert (first, second) == (state is SeriesState.QUEUED, False)
    if state is SeriesState.QUEUED:
        assert current(index, pk)[:2] == (SeriesState.PROCESSING, False)
    else:
        assert current(index, pk)[:2] == (state, True)


@pytest.mark.parametrize("state", ALL)
def test_reprocess_requeues_all_but_a_series_being_analyzed(index: Index,
                                                            state: SeriesState) -> None:
    pk = stored(index, state)
    with index.session() as db:
        queued = reprocess_requested(db, pk)
    assert queued is (state is not SeriesState.PROCESSING)
    if queued:
        assert current(index, pk) == (SeriesState.QUEUED, False, None)
    else:
        assert current(index, pk) == (state, False, "earlier failure")


def test_only_series_state_changes_the_state() -> None:
    """No other node module assigns ``Series.state`` (or updates it in SQL)."""
    package = Path(__file__).resolve().parents[1] / "dicom_node"
    offenders = []
    for path in sorted(package.glob("*.py")):
        if path.name == "series_state.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "series.state =" in line or "values(state" in line:
                offenders.append(f"{path.name}:{number}")
    assert offenders == []
