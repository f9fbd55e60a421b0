"""The persistent C-STORE retry queue that forwards the SRs the node writes to its peers.

Every SR the node writes gets one :class:`~dicom_node.index.ForwardJob` row per peer with
``forward_sr`` (:func:`enqueue_forwards`, in the session that records the SR, so the SR and its
jobs are committed together). :class:`Forwarder` sends the due jobs: one association per
destination per run, carrying all of that destination's due jobs.

A job is DONE only when the peer answered the C-STORE with success or a warning status. An
association that is refused, rejected transiently or aborted, and a C-STORE that gets no
response, are transient failures: the job is retried with exponential backoff
(:func:`backoff_delay`) and fails for good after ``forwarding.max_attempts`` attempts.
Permanent rejections — a status saying the peer will never accept this instance, no accepted
presentation context, a rejected-permanent association (e.g. our AE title unknown there) — and
a missing or unreadable local file fail the job at once, so a queue never retries forever.
:meth:`Forwarder.requeue_failed` puts failed jobs back once the cause is fixed. What a peer's
status means is decided by :func:`dicom_node.statuses.classify_status`; one batch is sent, and
failures before any status are judged, by :mod:`dicom_node.forward_send`.

No database session is held while the network is used: due jobs are read into plain records,
the association runs, and each outcome is written in its own short session right after its
C-STORE, so a crash mid-batch loses at most the job in flight (which is then sent again: the
peer sees a duplicate, never a loss). Logs name the destination, the last characters of the
SOP Instance UID and the status — never patient data.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dicom_node.application_entity import build_ae
from dicom_node.config import ForwardingConfig, NodeConfig
from dicom_node.forward_send import DueJob, send_batch
from dicom_node.headers import short_uid
from dicom_node.index import ForwardJob, ForwardState, Index, Instance
from dicom_node.statuses import Outcome, Verdict
from dicom_node.storage import FileStore

log = logging.getLogger(__name__)

#: Id of the scheduler job that polls the queue (stable, so a restart replaces it).
SCHEDULER_JOB_ID: Final = "forward-queue"

#: Most jobs one run reads; the rest wait for the next poll, so a long backlog never keeps
#: the lock (and the memory for its records) for an unbounded time.
MAX_JOBS_PER_RUN: Final = 1000
#: A job taken for sending is not due for other processes for this long (seconds; longer
#: than any association's timeouts). A process that dies mid-send leaves it due after it:
#: the SR is then sent again, and its fixed UIDs make the peer keep one copy.
SEND_LEASE_SECONDS: Final = 600.0


def backoff_delay(attempts: int, config: ForwardingConfig) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt.

    ``initial_delay_s * 2 ** (attempts - 1)``, capped at ``max_delay_s``.

    Parameters
    ----------
    attempts : int
        Attempts made so far (at least 1 after a failure).
    config : ForwardingConfig
        ``initial_delay_s`` and ``max_delay_s``.

    Returns
    -------
    float
        The delay in seconds.
    """
    # 2.0 ** 1024 overflows; far below that the cap has long taken over.
    exponent = min(max(attempts - 1, 0), 1023)
    return float(min(config.initial_delay_s * 2.0 ** exponent, config.max_delay_s))


def enqueue_forwards(session: Session, instance_pk: int, config: NodeConfig, now: float) -> int:
    """Add one PENDING job per peer with ``forward_sr`` for an instance.

    Idempotent: destinations that already have a job for this instance (in any state) are
    skipped, so calling it again after a crash or a re-analysis adds nothing twice.

    Parameters
    ----------
    session : Session
        The caller's session (commit it with the SR's own rows).
    instance_pk : int
        Primary key of the :class:`~dicom_node.index.Instance` to forward.
    config : NodeConfig
        ``peers`` with ``forward_sr``.
    now : float
        Epoch seconds; the jobs are due at once.

    Returns
    -------
    int
        Jobs added.
    """
    existing = set(session.scalars(
        select(ForwardJob.destination).where(ForwardJob.instance_pk == instance_pk)))
    added = 0
    for peer in config.peers:
        if not peer.forward_sr or peer.ae_title in existing:
            continue
        session.add(ForwardJob(instance_pk=instance_pk, destination=peer.ae_title,
                               state=ForwardState.PENDING, attempts=0, next_attempt_at=now))
        existing.add(peer.ae_title)
        added += 1
    if added:
        session.flush()
    return added



class Forwarder:
    """Sends due forward jobs to their peers; the scheduler runs it every ``poll_seconds``.

    Parameters
    ----------
    index : Index
        The index holding the jobs.
    store : FileStore
        Where the instance files are.
    config : NodeConfig
        Our AE (:func:`dicom_node.application_entity.build_ae`), the peers and the retry
        policy (``forwarding``).

    Notes
    -----
    :meth:`run_due` is serialized by a lock, so the timer and a run triggered right after an
    SR was written never send the same job at the same time. The lock is per instance: use
    one ``Forwarder`` per index in a process.
    """

    def __init__(self, index: Index, store: FileStore, config: NodeConfig) -> None:
        self._index = index
        self._store = store
        self._config = config
        self._ae = build_ae(config)
        self._lock = threading.Lock()
        self._scheduler: Any = None

    # -- scheduling ---------------------------------------------------------------------

    def start(self, scheduler: Any) -> None:
        """Poll the queue with an apscheduler (3.x) interval job.

        The job id is :data:`SCHEDULER_JOB_ID` (an existing one is replaced), it never runs
        twice at once and missed runs are coalesced. The first run is immediate, so jobs
        left by a previous process are sent at start-up.

        Parameters
        ----------
        scheduler : apscheduler.schedulers.base.BaseScheduler
            Started or not; it runs the job in its own threads.
        """
        scheduler.add_job(
            self.run_due, "interval", seconds=self._config.forwarding.poll_seconds,
            id=SCHEDULER_JOB_ID, name="SR forwarding queue", max_instances=1, coalesce=True,
            replace_existing=True, next_run_time=datetime.now(UTC))
        self._scheduler = scheduler

    def stop(self) -> None:
        """Remove the polling job (a run in progress finishes)."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None and scheduler.get_job(SCHEDULER_JOB_ID) is not None:
            scheduler.remove_job(SCHEDULER_JOB_ID)

    def trigger(self) -> None:
        """Ask for a run now without blocking the caller (e.g. right after an SR is written).

        Moves the polling job's next run to now; without a started scheduler it does
        nothing (the caller may call :meth:`run_due` itself). A run already in progress
        makes this one be skipped, and the regular poll picks the new jobs up.
        """
        scheduler = self._scheduler
        if scheduler is not None and scheduler.get_job(SCHEDULER_JOB_ID) is not None:
            scheduler.modify_job(SCHEDULER_JOB_ID, next_run_time=datetime.now(UTC))

    # -- queue --------------------------------------------------------------------------

    def run_due(self, now: float | None = None) -> int:
        """Send every due PENDING job: one association per destination.

        Parameters
        ----------
        now : float, optional
            Epoch seconds; jobs with ``next_attempt_at <= now`` are due and it is the time
            recorded for their outcomes. Default: the clock (each outcome is then timed
            when it happens).

        Returns
        -------
        int
            Jobs that reached DONE in this run.
        """
        with self._lock:
            due = self._due(time.time() if now is None else now)
            by_destination: dict[str, list[DueJob]] = {}
            for job in due:
                by_destination.setdefault(job.destination, []).append(job)
            done = 0
            for destination, jobs in by_destination.items():
                done += self._send_batch(destination, jobs, now)
            return done

    def requeue_failed(self, destination: str | None = None, now: float | None = None) -> int:
        """Put FAILED jobs back in the queue (after the cause was fixed), due at once.

        Parameters
        ----------
        destination : str, optional
            Only this peer's jobs; default all.
        now : float, optional
            Epoch seconds they become due; default the clock.

        Returns
        -------
        int
            Jobs requeued; their attempts start again from zero, ``last_error`` is kept.
        """
        at = time.time() if now is None else now
        with self._lock, self._index.session() as session:
            query = select(ForwardJob).where(ForwardJob.state == ForwardState.FAILED)
            if destination is not None:
                query = query.where(ForwardJob.destination == destination)
            jobs = list(session.scalars(query))
            for job in jobs:
                job.state, job.attempts, job.next_attempt_at = ForwardState.PENDING, 0, at
            return len(jobs)

    def _due(self, now: float) -> list[DueJob]:
        """The due jobs this process leased: each is moved :data:`SEND_LEASE_SECONDS` into the
        future by a conditional UPDATE, so a node process sharing the index never sends it at
        the same time; a process that dies mid-send leaves it due again after the lease."""
        with self._index.session() as session:
            rows = session.execute(
                select(ForwardJob.next_attempt_at, ForwardJob.id, ForwardJob.destination,
                       Instance.path, Instance.sop_class_uid, Instance.sop_instance_uid,
                       Instance.transfer_syntax_uid)
                .join(Instance, ForwardJob.instance_pk == Instance.id)
                .where(ForwardJob.state == ForwardState.PENDING,
                       ForwardJob.next_attempt_at <= now)
                .order_by(ForwardJob.next_attempt_at, ForwardJob.id)
                .limit(MAX_JOBS_PER_RUN)).all()
            leased = []
            for row in rows:
                job = DueJob(*row[1:])
                taken = session.execute(
                    update(ForwardJob).where(ForwardJob.id == job.job_id,
                                             ForwardJob.state == ForwardState.PENDING,
                                             ForwardJob.next_attempt_at == row[0])
                    .values(next_attempt_at=now + SEND_LEASE_SECONDS))
                if taken.rowcount == 1:  # type: ignore[attr-defined]
                    leased.append(job)
            return leased

    # -- network ------------------------------------------------------------------------

    def _send_batch(self, destination: str, jobs: list[DueJob], now: float | None) -> int:
        peer = self._config.peer(destination)
        if peer is None or not peer.host or not peer.port:
            outcome = Outcome(Verdict.FAIL, None,
                              f"{destination} is not a configured peer with host and port")
            for job in jobs:
                self._record(job, outcome, now)
            return 0
        return send_batch(self._ae, peer, jobs, self._store,
                          lambda job, outcome: self._record(job, outcome, now))

    # -- bookkeeping --------------------------------------------------------------------

    def _record(self, job: DueJob, outcome: Outcome, now: float | None) -> bool:
        """Write one outcome; True when the job is now DONE."""
        at = time.time() if now is None else now
        forwarding = self._config.forwarding
        uid = short_uid(job.sop_instance_uid)
        with self._index.session() as session:
            row = session.get(ForwardJob, job.job_id)
            if row is None or row.state is not ForwardState.PENDING:
                return False  # requeued, deleted or finished elsewhere meanwhile
            row.attempts += 1
            row.last_status = outcome.status
            row.last_error = outcome.error
            status = "none" if outcome.status is None else f"0x{outcome.status:04X}"
            if outcome.verdict is Verdict.DONE:
                row.state, row.done_at = ForwardState.DONE, at
                log.info("forwarded %s to %s (status %s)", uid, job.destination, status)
                return True
            if outcome.verdict is Verdict.FAIL:
                row.state = ForwardState.FAILED
                log.error("forward of %s to %s failed for good (status %s): %s", uid,
                          job.destination, status, outcome.error)
                return False
            if row.attempts >= forwarding.max_attempts:
                row.state = ForwardState.FAILED
                row.last_error = f"{outcome.error}; gave up after {row.attempts} attempts"
                log.error("forward of %s to %s failed after %d attempts (status %s): %s", uid,
                          job.destination, row.attempts, status, outcome.error)
                return False
            delay = backoff_delay(row.attempts, forwarding)
            row.next_attempt_at = at + delay
            log.warning("forward of %s to %s: attempt %d failed (status %s), retry in %.0f s: "
                        "%s", uid, job.destination, row.attempts, status, delay, outcome.error)
            return False
