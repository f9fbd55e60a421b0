"""Quiet-time completion: persisted, rescheduled on new instances, recomputed at start-up."""

from __future__ import annotations

import time
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.index import Index, Series, SeriesState, Study
from dicom_node.ingest import IngestResult
from dicom_node.recovery import recover_series
from dicom_node.series_tracking import SeriesTracker
from tests.node_harness import wait_for


def _series(index: Index, state: SeriesState, last: float) -> int:
    with index.session() as db:
        study = Study(study_instance_uid=f"1.2.{time.monotonic_ns()}")
        db.add(study)
        db.flush()
        series = Series(series_instance_uid=f"1.3.{time.monotonic_ns()}", study_pk=study.id,
                        state=state, first_received_at=last, last_received_at=last)
        db.add(series)
        db.flush()
        return series.id


def _state(index: Index, pk: int) -> SeriesState:
    with index.session() as db:
        return db.get_one(Series, pk).state


def test_series_is_queued_after_quiet_time_and_not_before(tmp_path: Path) -> None:
    index = Index(f"sqlite:///{tmp_path / 'i.sqlite'}")
    scheduler = BackgroundScheduler()
    scheduler.start()
    submitted: list[int] = []
    quiet_s = 2.0
    tracker = SeriesTracker(index, scheduler, quiet_s, submitted.append)
    last = time.time()
    pk = _series(index, SeriesState.RECEIVING, last)
    tracker.schedule(pk, last)
    time.sleep(0.2)
    assert submitted == [] and _state(index, pk) is SeriesState.RECEIVING
    # Polled rather than slept: a loaded CI machine may run the scheduler's thread late.
    wait_for(lambda: submitted == [pk], 30, "the quiet-time check")
    assert time.time() >= last + quiet_s
    assert _state(index, pk) is SeriesState.QUEUED
    scheduler.shutdown()


def test_new_instance_replaces_the_pending_check(tmp_path: Path) -> None:
    index = Index(f"sqlite:///{tmp_path / 'i.sqlite'}")
    scheduler = BackgroundScheduler()
    scheduler.start(paused=True)
    submitted: list[int] = []
    tracker = SeriesTracker(index, scheduler, 30, submitted.append)
    pk = _series(index, SeriesState.RECEIVING, time.time())
    tracker.schedule(pk, time.time())
    tracker.schedule(pk, time.time() + 1)
    assert [job.id for job in scheduler.get_jobs()] == [f"series-{pk}"]
    scheduler.shutdown()


def test_check_reschedules_when_an_instance_arrived_meanwhile(tmp_path: Path) -> None:
    index = Index(f"sqlite:///{tmp_path / 'i.sqlite'}")
    scheduler = BackgroundScheduler()
    submitted: list[int] = []
    tracker = SeriesTracker(index, scheduler, 30, submitted.append)
    pk = _series(index, SeriesState.RECEIVING, time.time())
    tracker.check(pk)
    assert submitted == [] and _state(index, pk) is SeriesState.RECEIVING
    assert scheduler.get_job(f"series-{pk}") is not None


def test_recover_requeues_interrupted_and_reschedules_receiving(tmp_path: Path) -> None:
    index = Index(f"sqlite:///{tmp_path / 'i.sqlite'}")
    scheduler = BackgroundScheduler()
    submitted: list[int] = []
    tracker = SeriesTracker(index, scheduler, 30, submitted.append)
    receiving = _series(index, SeriesState.RECEIVING, time.time())
    queued = _series(index, SeriesState.QUEUED, time.time() - 100)
    interrupted = _series(index, SeriesState.PROCESSING, time.time() - 100)
    done = _series(index, SeriesState.DONE, time.time() - 100)
    counts = recover_series(index, tracker)
    assert counts == {"receiving": 1, "queued": 1, "interrupted": 1}
    assert sorted(submitted) == sorted([queued, interrupted])
    assert _state(index, interrupted) is SeriesState.QUEUED
    assert _state(index, done) is SeriesState.DONE
    assert scheduler.get_job(f"series-{receiving}") is not None


def test_instances_keep_the_pending_check_which_then_waits_for_the_last(tmp_path: Path
                                                                        ) -> None:
    index = Index(f"sqlite:///{tmp_path / 'i.sqlite'}")
    scheduler = BackgroundScheduler()
    scheduler.start(paused=True)
    submitted: list[int] = []
    tracker = SeriesTracker(index, scheduler, 30, submitted.append)
    first = time.time()
    pk = _series(index, SeriesState.RECEIVING, first)
    tracker.on_stored(IngestResult(pk, 1, False, SeriesState.RECEIVING, first))
    job = scheduler.get_job(f"series-{pk}")
    assert job is not None
    due = job.next_run_time
    tracker.on_stored(IngestResult(pk, 2, False, SeriesState.RECEIVING, first + 5))
    assert scheduler.get_job(f"series-{pk}").next_run_time == due  # no job per instance
    with index.session() as db:  # the later instance, as ingest records it
        db.get_one(Series, pk).last_received_at = first + 5
    scheduler.remove_job(f"series-{pk}")
    tracker.check(pk)  # the first check fires before the series is quiet
    assert submitted == []
    rescheduled = scheduler.get_job(f"series-{pk}")
    assert rescheduled is not None
    assert abs(rescheduled.next_run_time.timestamp() - (first + 35)) < 0.01
    scheduler.shutdown()
