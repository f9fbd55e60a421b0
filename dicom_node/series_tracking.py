"""Series completion: a series is complete once it has been quiet for ``series.quiet_seconds``.

DICOM has no "series complete" message, so every node guesses from a quiet period. The guess
must survive restarts: the last-received time of each series is in the index (written in the
same transaction as the instance), and :meth:`SeriesTracker.recover` recomputes at start-up
what is due. One apscheduler job per series, with the stable id ``series-<pk>``, is replaced on
every new instance, so a series never has two pending completions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.base import BaseScheduler
from sqlalchemy import select

from dicom_node.index import Index, Series, SeriesState
from dicom_node.ingest import IngestResult

log = logging.getLogger(__name__)


class SeriesTracker:
    """Turns RECEIVING series into QUEUED ones after their quiet time and hands them on.

    Parameters
    ----------
    index : Index
    scheduler : apscheduler scheduler
        Already started or started later; jobs are in memory (the index is the durable state).
    quiet_seconds : float
    submit : callable
        Receives the primary key of each series that became QUEUED.
    """

    def __init__(self, index: Index, scheduler: BaseScheduler, quiet_seconds: float,
                 submit: Callable[[int], None]) -> None:
        self.index = index
        self.scheduler = scheduler
        self.quiet_seconds = quiet_seconds
        self.submit = submit

    def on_stored(self, result: IngestResult) -> None:
        """(Re)schedule completion of the series of a newly stored instance."""
        if result.series_state is SeriesState.RECEIVING:
            self.schedule(result.series_pk, result.received_at)

    def schedule(self, series_pk: int, last_received_at: float) -> None:
        """Check the series ``quiet_seconds`` after ``last_received_at``."""
        due = datetime.fromtimestamp(last_received_at + self.quiet_seconds, tz=UTC)
        self.scheduler.add_job(self.check, "date", run_date=due, args=[series_pk],
                               id=f"series-{series_pk}", replace_existing=True,
                               misfire_grace_time=None)

    def check(self, series_pk: int) -> None:
        """Queue the series if it is still RECEIVING and quiet; otherwise reschedule."""
        now = time.time()
        with self.index.session() as session:
            series = session.get(Series, series_pk)
            if series is None or series.state is not SeriesState.RECEIVING:
                return
            due = series.last_received_at + self.quiet_seconds
            if now < due:
                # An instance arrived after this job was scheduled (another process, a race).
                self.schedule(series_pk, series.last_received_at)
                return
            series.state = SeriesState.QUEUED
        log.info("series %d complete after %.0f s quiet: queued", series_pk, self.quiet_seconds)
        self.submit(series_pk)

    def recover(self) -> dict[str, int]:
        """At start-up: reschedule RECEIVING series, requeue QUEUED and interrupted ones."""
        counts = {"receiving": 0, "queued": 0, "interrupted": 0}
        queued: list[int] = []
        with self.index.session() as session:
            rows = session.scalars(select(Series).where(Series.state.in_(
                [SeriesState.RECEIVING, SeriesState.QUEUED, SeriesState.PROCESSING])))
            for series in rows:
                if series.state is SeriesState.RECEIVING:
                    counts["receiving"] += 1
                    self.schedule(series.id, series.last_received_at)
                    continue
                # PROCESSING at start-up means the previous process died mid-analysis: the
                # analysis is repeated; its SR has deterministic UIDs, so it is stored once.
                counts["queued" if series.state is SeriesState.QUEUED else "interrupted"] += 1
                series.state = SeriesState.QUEUED
                queued.append(series.id)
        for pk in queued:
            self.submit(pk)
        return counts
