"""Several processes on one index: liveness, take-over, the sweep, and backfill bookkeeping."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicom_node.backfill import Found, _final, backoff_delay, discover
from dicom_node.cluster import (
    STALE_AFTER_SECONDS,
    Membership,
    Sweeper,
    being_fetched,
    is_gone,
    new_process_id,
    queue_overdue,
    take_over_abandoned,
)
from dicom_node.config import ConfigError, config_from_dict
from dicom_node.index import (
    BackfillJob,
    BackfillState,
    Index,
    NodeProcess,
    Series,
    SeriesState,
    Study,
)


@pytest.fixture
def index(tmp_path: Path) -> Index:
    return Index(f"sqlite:///{tmp_path / 'index.sqlite'}")


def _series(index: Index, uid: str, state: SeriesState, *, claimed_by: str | None = None,
            last: float | None = None) -> int:
    with index.session() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == "1.2.3"))
        if study is None:
            study = Study(study_instance_uid="1.2.3")
            session.add(study)
            session.flush()
        at = time.time() if last is None else last
        row = Series(series_instance_uid=uid, study_pk=study.id, modality="CT", state=state,
                     first_received_at=at, last_received_at=at, claimed_by=claimed_by)
        session.add(row)
        session.flush()
        return int(row.id)


def _state(index: Index, pk: int) -> SeriesState:
    with index.session() as session:
        return session.get_one(Series, pk).state


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_process_is_gone_when_stale_missing_or_its_local_pid_is_dead() -> None:
    now = time.time()
    me = NodeProcess(id=new_process_id(), role="all", started_at=now, heartbeat_at=now)
    assert not is_gone(me, now)
    assert is_gone(None, now)
    assert is_gone(me, now + STALE_AFTER_SECONDS + 1)
    host = me.id.split(":")[0]
    dead = NodeProcess(id=f"{host}:{_dead_pid()}:x", role="all", started_at=now,
                       heartbeat_at=now)
    assert is_gone(dead, now)
    elsewhere = NodeProcess(id="other-host:1:x", role="all", started_at=now, heartbeat_at=now)
    assert not is_gone(elsewhere, now)  # a fresh heartbeat from another host counts


def test_only_series_of_gone_processes_are_taken_over(index: Index) -> None:
    alive = Membership(index, "all")
    alive.join()
    try:
        mine = _series(index, "1.1", SeriesState.PROCESSING, claimed_by=alive.id)
        orphan = _series(index, "1.2", SeriesState.PROCESSING,
                         claimed_by=f"{alive.id.split(':')[0]}:{_dead_pid()}:x")
        unowned = _series(index, "1.3", SeriesState.PROCESSING)
        assert sorted(take_over_abandoned(index)) == sorted([orphan, unowned])
        assert _state(index, mine) is SeriesState.PROCESSING
        assert _state(index, orphan) is SeriesState.QUEUED
    finally:
        alive.leave()
    with index.session() as session:
        assert session.scalars(select(NodeProcess)).first() is None


def test_the_sweep_queues_overdue_series_unless_a_live_backfill_fetches_them(index: Index
                                                                             ) -> None:
    old = time.time() - 100
    overdue = _series(index, "2.1", SeriesState.RECEIVING, last=old)
    fetched = _series(index, "2.2", SeriesState.RECEIVING, last=old)
    fresh = _series(index, "2.3", SeriesState.RECEIVING)
    fetcher = Membership(index, "backfill")
    fetcher.join()
    try:
        with index.session() as session:
            session.add(BackfillJob(peer="PACS", study_instance_uid="1.2.3",
                                    series_instance_uid="2.2", state=BackfillState.FETCHING,
                                    claimed_by=fetcher.id, created_at=old))
        assert being_fetched(index, "2.2", time.time())
        offered: list[int] = []
        assert Sweeper(index, 30.0, 10.0, offered.append).sweep() == 1
        assert offered == [overdue]
        assert _state(index, fetched) is SeriesState.RECEIVING
        assert _state(index, fresh) is SeriesState.RECEIVING
    finally:
        fetcher.leave()
    # the fetcher is gone: the series no longer waits for it
    assert queue_overdue(index, 30.0, 10.0) == [fetched]


def test_discovery_adds_each_series_once_and_skips_analyzed_ones(index: Index) -> None:
    _series(index, "3.1", SeriesState.DONE)
    found = [Found("1.2.3", "3.1", "20240101", "CT", 10),
             Found("1.2.3", "3.2", "20240101", "CT", None)]
    assert discover(index, found, "PACS") == 2
    assert discover(index, found, "PACS") == 0
    with index.session() as session:
        states = {j.series_instance_uid: j.state for j in session.scalars(select(BackfillJob))}
    assert states == {"3.1": BackfillState.SKIPPED, "3.2": BackfillState.PENDING}


def test_retrieve_outcomes_and_backoff() -> None:
    def status(code: int, failed: int = 0) -> Dataset:
        ds = Dataset()
        ds.Status = code
        ds.NumberOfFailedSuboperations = failed
        return ds

    assert _final(iter([(status(0xFF00), None), (status(0x0000), None)])).ok
    unknown = _final(iter([(status(0xA801), None)]))
    assert not unknown.ok and unknown.move_destination_unknown
    partial = _final(iter([(status(0xB000, 2), None)]))
    assert not partial.ok and "2 sub-operation(s) failed" in (partial.error or "")
    aborted = _final(iter([(Dataset(), None)]))
    assert not aborted.ok and "aborted" in (aborted.error or "")
    assert [backoff_delay(n, 30, 100) for n in (1, 2, 3, 4)] == [30, 60, 100, 100]


@pytest.mark.parametrize("raw, message", [
    ({"backfill": {"rate": -1}}, "backfill: rate"),
    ({"backfill": {"concurrency": 0}}, "concurrency"),
    ({"backfill": {"initial_delay_s": 10, "max_delay_s": 1}}, "max_delay_s"),
    ({"series": {"sweep_seconds": 0}}, "sweep_seconds"),
])
def test_cluster_and_backfill_options_are_validated(tmp_path: Path, raw: dict[str, object],
                                                    message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"peers": [{"ae_title": "X"}], **raw}, tmp_path)


def test_this_process_is_alive() -> None:
    now = time.time()
    assert not is_gone(NodeProcess(id=new_process_id(), role="all", started_at=now,
                                   heartbeat_at=now), now)
    assert str(os.getpid()) in new_process_id()
