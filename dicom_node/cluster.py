"""Several node processes on one index: who is alive, and who takes over what a dead one left.

Node processes (``bpr serve`` in any role, ``bpr reprocess``) share one index and one storage
root. Each registers in ``node_processes`` and renews its heartbeat every
:data:`HEARTBEAT_SECONDS` from a daemon thread (:class:`Membership`); a clean stop deletes the
row. A process is gone when its row is missing, when its heartbeat is older than
:data:`STALE_AFTER_SECONDS`, or at once when it ran on this host and its pid no longer exists
(a restart after a crash need not wait).

Every analyzing process sweeps the index every ``series.sweep_seconds`` (:class:`Sweeper`):

1. series PROCESSING by a gone process are QUEUED again (:func:`take_over_abandoned`), and
   so are this process's own claims its pool dropped (a database outage between the claim
   and the recorded result);
2. series RECEIVING and quiet for longer than the quiet time plus two sweeps are QUEUED: the
   process whose timer should have done it is gone, or only receives (:func:`queue_overdue`);
   a series a live ``bpr backfill`` is still fetching waits for it;
3. every QUEUED series is offered to the local analysis pool. Each process may offer the same
   series; the claim (:func:`dicom_node.series_state.claim`) lets exactly one analyze it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable

from sqlalchemy import delete, select, update

from dicom_node.index import (
    BackfillJob,
    BackfillState,
    Index,
    NodeProcess,
    Series,
    SeriesState,
)
from dicom_node.series_state import abandoned_requeued, quiet_time_reached

log = logging.getLogger(__name__)

#: How often a process renews its heartbeat.
HEARTBEAT_SECONDS = 5.0
#: A heartbeat older than this marks the process gone (six missed beats).
STALE_AFTER_SECONDS = 30.0
_HOST = socket.gethostname()[:40]


def new_process_id() -> str:
    """``host:pid:random`` for this process."""
    return f"{_HOST}:{os.getpid()}:{secrets.token_hex(4)}"


def is_gone(row: NodeProcess | None, now: float) -> bool:
    """Whether the process of ``row`` has stopped (None: no such process is registered)."""
    if row is None or now - row.heartbeat_at > STALE_AFTER_SECONDS:
        return True
    host, _sep, rest = row.id.partition(":")
    pid = rest.partition(":")[0]
    if host != _HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False


class Membership:
    """This process's row in ``node_processes``, kept fresh by a daemon thread."""

    def __init__(self, index: Index, role: str) -> None:
        self.index = index
        self.role = role
        self.id = new_process_id()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def join(self) -> None:
        """Register and start the heartbeat."""
        now = time.time()
        with self.index.session() as session:
            session.add(NodeProcess(id=self.id, role=self.role, started_at=now,
                                    heartbeat_at=now))
        self._thread = threading.Thread(target=self._beat, name="bpr-heartbeat", daemon=True)
        self._thread.start()

    def leave(self) -> None:
        """Stop the heartbeat and delete the row (a crash leaves it to go stale)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_SECONDS * 2)
        with self.index.session() as session:
            session.execute(delete(NodeProcess).where(NodeProcess.id == self.id))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                with self.index.session() as session:
                    session.execute(update(NodeProcess).where(NodeProcess.id == self.id)
                                    .values(heartbeat_at=time.time()))
            except Exception:
                # The database may be away for a while; the next beat tries again, and
                # other processes take over only after STALE_AFTER_SECONDS.
                log.warning("heartbeat failed", exc_info=True)


def take_over_abandoned(index: Index, now: float | None = None, *, me: str | None = None,
                        busy: Callable[[int], bool] | None = None) -> list[int]:
    """QUEUE the PROCESSING series whose process is gone, and those claimed by this process
    (``me``) that its pool is not working on (``busy`` false: an analysis that ended in a
    database outage before it could record its end); their primary keys."""
    at = time.time() if now is None else now
    taken = []
    with index.session() as session:
        processes = {p.id: p for p in session.scalars(select(NodeProcess))}
        for series in session.scalars(select(Series).where(
                Series.state == SeriesState.PROCESSING)):
            mine_idle = (me is not None and series.claimed_by == me and busy is not None
                         and not busy(series.id))
            if mine_idle or is_gone(processes.get(series.claimed_by or ""), at):
                abandoned_requeued(series)
                taken.append(series.id)
    if taken:
        log.warning("took over %d series whose process is gone", len(taken))
    return taken


def being_fetched(index: Index, series_uid: str, now: float) -> bool:
    """Whether a live ``bpr backfill`` is still fetching this series."""
    with index.session() as session:
        fetchers = session.scalars(select(BackfillJob.claimed_by).where(
            BackfillJob.series_instance_uid == series_uid,
            BackfillJob.state == BackfillState.FETCHING)).all()
        return any(not is_gone(session.get(NodeProcess, by or ""), now) for by in fetchers)


def queue_overdue(index: Index, quiet_seconds: float, grace_seconds: float,
                  now: float | None = None) -> list[int]:
    """QUEUE the RECEIVING series quiet for longer than ``quiet_seconds + grace_seconds``."""
    at = time.time() if now is None else now
    queued = []
    with index.session() as session:
        due = session.scalars(select(Series).where(
            Series.state == SeriesState.RECEIVING,
            Series.last_received_at < at - quiet_seconds - grace_seconds))
        for series in due:
            if not being_fetched(index, series.series_instance_uid, at):
                quiet_time_reached(series)
                queued.append(series.id)
    return queued


class Sweeper:
    """The periodic sweep of an analyzing process (see the module docstring).

    Parameters
    ----------
    index : Index
    quiet_seconds, sweep_seconds : float
    submit : callable
        Receives the primary key of each QUEUED series (the local pool claims it).
    me : str, optional
        This process's id; with ``busy``, its own claims the pool dropped are taken back.
    busy : callable, optional
        Whether the local pool is working on a series.
    """

    def __init__(self, index: Index, quiet_seconds: float, sweep_seconds: float,
                 submit: Callable[[int], None], *, me: str | None = None,
                 busy: Callable[[int], bool] | None = None) -> None:
        self.index = index
        self.quiet_seconds = quiet_seconds
        self.sweep_seconds = sweep_seconds
        self.submit = submit
        self.me = me
        self.busy = busy

    def sweep(self) -> int:
        """One sweep; the number of QUEUED series offered."""
        take_over_abandoned(self.index, me=self.me, busy=self.busy)
        queue_overdue(self.index, self.quiet_seconds, 2 * self.sweep_seconds)
        with self.index.session() as session:
            pks = list(session.scalars(select(Series.id).where(
                Series.state == SeriesState.QUEUED).order_by(Series.last_received_at)))
        for pk in pks:
            self.submit(pk)
        return len(pks)
