"""Series completion: a series is complete once it has been quiet for ``series.quiet_seconds``.

DICOM has no "series complete" message, so every node guesses from a quiet period. The guess
must survive restarts: the last-received time of each series is in the index (written in the
same transaction as the instance), and :func:`dicom_node.recovery.recover_series` recomputes
at start-up what is due. One apscheduler job per series, with the stable id ``series-<pk>``, is
replaced on every new instance, so a series never has two pending completions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.base import BaseScheduler

from dicom_node.cluster import being_fetched
from dicom_node.index import Index, Series, SeriesState
from dicom_node.ingest import IngestResult
from dicom_node.series_state import quiet_time_reached

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
        """Make sure the series of a newly stored instance has its completion check.

        A pending check is kept as it is: when it fires it finds the later instance in the
        index and schedules itself again (:meth:`check`). A series of 1,000 instances thus
        costs a few scheduler jobs instead of one replacement per instance.
        """
        if (result.series_state is SeriesState.RECEIVING
                and self.scheduler.get_job(_job_id(result.series_pk)) is None):
            self.schedule(result.series_pk, result.received_at)

    def schedule(self, series_pk: int, last_received_at: float) -> None:
        """Check the series ``quiet_seconds`` after ``last_received_at``."""
        due = datetime.fromtimestamp(last_received_at + self.quiet_seconds, tz=UTC)
        self.scheduler.add_job(self.check, "date", run_date=due, args=[series_pk],
                               id=_job_id(series_pk), replace_existing=True,
                               misfire_grace_time=None)

    def check(self, series_pk: int) -> None:
        """Queue the series if it is still RECEIVING and quiet; otherwise reschedule."""
        now = time.time()
        with self.index.session() as session:
            series = session.get(Series, series_pk)
            if series is None or series.state is not SeriesState.RECEIVING:
                return
            due = series.last_received_at + self.quiet_seconds
            if now >= due and being_fetched(self.index, series.series_instance_uid, now):
                # `bpr backfill` is still retrieving it: complete only after its last instance
                due = now + self.quiet_seconds
            if now < due:
                # An instance arrived after this job was scheduled (another process, a race).
                self.schedule(series_pk, due - self.quiet_seconds)
                return
            quiet_time_reached(series)
        log.info("series %d complete after %.0f s quiet: queued", series_pk, self.quiet_seconds)
        self.submit(series_pk)


def _job_id(series_pk: int) -> str:
    return f"series-{series_pk}"
