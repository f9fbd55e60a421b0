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
:meth:`Forwarder.requeue_failed` puts failed jobs back once the cause is fixed.

No database session is held while the network is used: due jobs are read into plain records,
the association runs, and each outcome is written in its own short session right after its
C-STORE, so a crash mid-batch loses at most the job in flight (which is then sent again: the
peer sees a duplicate, never a loss). Logs name the destination, the last characters of the
SOP Instance UID and the status — never patient data.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.config import ForwardingConfig, NodeConfig
from dicom_node.index import ForwardJob, ForwardState, Index, Instance
from dicom_node.ingest import short_uid
from dicom_node.storage import FileStore
from model.api import READ_ERRORS

log = logging.getLogger(__name__)

#: Id of the scheduler job that polls the queue (stable, so a restart replaces it).
SCHEDULER_JOB_ID = "forward-queue"

#: Most jobs one run reads; the rest wait for the next poll, so a long backlog never keeps
#: the lock (and the memory for its records) for an unbounded time.
MAX_JOBS_PER_RUN = 1000

#: A-ASSOCIATE-RQ carries at most 128 presentation contexts (PS3.8 9.3.2.2).
_MAX_CONTEXTS = 128

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class Verdict(enum.Enum):
    """What one attempt means for a job."""

    DONE = "DONE"  # the peer holds the instance
    RETRY = "RETRY"  # transient: try again after the backoff delay
    FAIL = "FAIL"  # permanent: never retried (until requeued by hand)


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt to send one job."""

    verdict: Verdict
    #: The DIMSE status the peer answered, None when it answered none.
    status: int | None
    #: Why it failed or what the warning was; None after a clean success.
    error: str | None


#: Failure statuses after which sending the same instance again cannot succeed.
_PERMANENT_STATUSES = {
    0x0117: "invalid SOP instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0x0211: "unrecognized operation",
    0x0212: "mistyped argument",
}

#: Failure statuses that describe a passing condition of the peer.
_TRANSIENT_STATUSES = {
    0x0110: "processing failure",
    0x0210: "duplicate invocation",
    0x0213: "resource limitation",
    0xFE00: "cancelled",
}


def classify_status(status: int) -> Outcome:
    """Classify a C-STORE response status.

    Parameters
    ----------
    status : int
        The (0000,0900) Status the peer answered.

    Returns
    -------
    Outcome
        DONE for success and warnings (the instance is stored), FAIL for rejections that a
        retry cannot change (0xA9xx, 0xCxxx, 0x0122, ...), RETRY for out-of-resources (0xA7xx)
        and other passing conditions. Unknown statuses are retried: ``max_attempts`` bounds
        them, whereas failing them at once could drop an SR over a peer's private code.
    """
    text = f"0x{status:04X}"
    if status == 0x0000:
        return Outcome(Verdict.DONE, status, None)
    if status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return Outcome(Verdict.DONE, status, f"stored with warning {text}")
    if status == 0x0111:
        # Our SR UIDs are unique, so a duplicate means an earlier attempt arrived even though
        # its response was lost (e.g. an abort after the store): the peer holds it.
        return Outcome(Verdict.DONE, status, f"peer already holds this instance ({text})")
    if 0xA700 <= status <= 0xA7FF:
        return Outcome(Verdict.RETRY, status, f"peer out of resources ({text})")
    if 0xA900 <= status <= 0xA9FF:
        return Outcome(Verdict.FAIL, status, f"peer: data set does not match SOP class ({text})")
    if 0xC000 <= status <= 0xCFFF:
        return Outcome(Verdict.FAIL, status, f"peer cannot understand the data set ({text})")
    if status in _PERMANENT_STATUSES:
        return Outcome(Verdict.FAIL, status, f"peer refused: {_PERMANENT_STATUSES[status]} "
                                             f"({text})")
    if status in _TRANSIENT_STATUSES:
        return Outcome(Verdict.RETRY, status, f"peer: {_TRANSIENT_STATUSES[status]} ({text})")
    return Outcome(Verdict.RETRY, status, f"peer answered unrecognized status {text}")


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


@dataclass(frozen=True)
class _Due:
    """What sending one job needs, copied out of the database session."""

    job_id: int
    destination: str
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


class Forwarder:
    """Sends due forward jobs to their peers; the scheduler runs it every ``poll_seconds``.

    Parameters
    ----------
    index : Index
        The index holding the jobs.
    store : FileStore
        Where the instance files are.
    config : NodeConfig
        Our AE title and timeouts (``network``), the peers and the retry policy
        (``forwarding``).

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
            by_destination: dict[str, list[_Due]] = {}
            for job in due:
                by_destination.setdefault(job.destination, []).append(job)
            done = 0
            for destination, jobs in by_destination.items():
                done += self._send_batch(destination, jobs, now)
            return done

    def status_counts(self) -> dict[ForwardState, int]:
        """Jobs per state (every state listed, zero included)."""
        counts = dict.fromkeys(ForwardState, 0)
        with self._index.session() as session:
            rows = session.execute(
                select(ForwardJob.state, func.count()).group_by(ForwardJob.state))
            for state, count in rows:
                counts[ForwardState(state)] = int(count)
        return counts

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

    def _due(self, now: float) -> list[_Due]:
        with self._index.session() as session:
            rows = session.execute(
                select(ForwardJob.id, ForwardJob.destination, Instance.path,
                       Instance.sop_class_uid, Instance.sop_instance_uid,
                       Instance.transfer_syntax_uid)
                .join(Instance, ForwardJob.instance_pk == Instance.id)
                .where(ForwardJob.state == ForwardState.PENDING,
                       ForwardJob.next_attempt_at <= now)
                .order_by(ForwardJob.next_attempt_at, ForwardJob.id)
                .limit(MAX_JOBS_PER_RUN))
            return [_Due(*row) for row in rows]

    # -- network ------------------------------------------------------------------------

    def _send_batch(self, destination: str, jobs: list[_Due], now: float | None) -> int:
        peer = self._config.peer(destination)
        if peer is None or not peer.host or not peer.port:
            outcome = Outcome(Verdict.FAIL, None,
                              f"{destination} is not a configured peer with host and port")
            for job in jobs:
                self._record(job, outcome, now)
            return 0
        ae, jobs = self._application_entity(jobs)
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
        if not assoc.is_established:
            outcome = _association_failure(assoc, jobs)
            log.warning("forward to %s: %s (%d job(s))", destination, outcome.error, len(jobs))
            for job in jobs:
                self._record(job, outcome, now)
            return 0
        done = 0
        try:
            for position, job in enumerate(jobs):
                if not assoc.is_established:
                    # Lost after an earlier C-STORE of this batch, which was counted; these
                    # were never tried, so they wait for the next run unchanged.
                    log.warning("forward to %s: association lost, %d job(s) wait for the "
                                "next run", destination, len(jobs) - position)
                    break
                outcome = self._send_one(assoc, job)
                if self._record(job, outcome, now):
                    done += 1
        finally:
            if assoc.is_established:
                assoc.release()
        return done

    def _application_entity(self, jobs: list[_Due]) -> tuple[AE, list[_Due]]:
        """Our AE with a presentation context per SOP class and transfer syntax of the jobs.

        Jobs whose contexts would not fit in one association request are dropped from the
        batch (left for the next run).
        """
        net = self._config.network
        ae = AE(ae_title=net.ae_title)
        net.apply_to(ae)
        contexts: list[tuple[str, tuple[UID, ...]]] = []
        kept: list[_Due] = []
        for job in jobs:
            wanted = [c for c in _contexts_for(job) if c not in contexts]
            if len(contexts) + len(wanted) > _MAX_CONTEXTS:
                continue
            contexts.extend(wanted)
            kept.append(job)
        for sop_class, syntaxes in contexts:
            ae.add_requested_context(sop_class, list(syntaxes))
        return ae, kept

    def _send_one(self, assoc: Association, job: _Due) -> Outcome:
        ds_or_error = self._read(job)
        if isinstance(ds_or_error, Outcome):
            return ds_or_error
        ds = ds_or_error
        if not any(cx.abstract_syntax == job.sop_class_uid for cx in assoc.accepted_contexts):
            return Outcome(Verdict.FAIL, None, "peer accepted no presentation context for "
                                               f"{UID(job.sop_class_uid).name}")
        try:
            response = assoc.send_c_store(ds)
        except ValueError as exc:
            # No accepted context fits the file's transfer syntax, or it cannot be encoded
            # in the accepted one: the same will happen on every retry.
            return Outcome(Verdict.FAIL, None, f"cannot send: {exc}")
        except AttributeError as exc:
            return Outcome(Verdict.FAIL, None, f"stored file is incomplete: {exc}")
        status = response.get("Status")
        if status is None:
            # Aborted, timed out or answered nonsense: the peer may or may not hold it, so
            # this never counts as sent (a repeat is harmless, a loss is not).
            return Outcome(Verdict.RETRY, None, "no C-STORE response (association aborted, "
                                                "DIMSE timeout or invalid response)")
        return classify_status(int(status))

    def _read(self, job: _Due) -> Dataset | Outcome:
        try:
            path = self._store.absolute(job.path)
        except ValueError:
            return Outcome(Verdict.FAIL, None, "stored path is outside the storage root")
        try:
            ds = dcmread(path)
            found = str(ds.get("SOPInstanceUID", ""))
        except FileNotFoundError:
            return Outcome(Verdict.FAIL, None, "stored file is missing")
        except IsADirectoryError:
            return Outcome(Verdict.FAIL, None, "stored path is a directory")
        except OSError as exc:
            # e.g. EIO on a network volume: may pass, and max_attempts bounds it.
            return Outcome(Verdict.RETRY, None, f"cannot read the stored file: {exc.strerror}")
        except READ_ERRORS as exc:
            return Outcome(Verdict.FAIL, None,
                           f"stored file is not readable DICOM ({type(exc).__name__})")
        if found != job.sop_instance_uid:
            return Outcome(Verdict.FAIL, None, "stored file holds a different SOP instance")
        return ds

    # -- bookkeeping --------------------------------------------------------------------

    def _record(self, job: _Due, outcome: Outcome, now: float | None) -> bool:
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


def _contexts_for(job: _Due) -> list[tuple[str, tuple[UID, ...]]]:
    """Presentation contexts to propose for one job's file.

    Uncompressed little-endian files can be sent in either uncompressed syntax (pynetdicom
    converts), so both are offered in one context. Any other syntax gets a context of its own,
    so that a peer choosing among several syntaxes cannot pick one we cannot convert to.
    """
    syntax = UID(job.transfer_syntax_uid or ExplicitVRLittleEndian)
    if syntax in _UNCOMPRESSED:
        ordered = (syntax, *(s for s in _UNCOMPRESSED if s != syntax))
        return [(job.sop_class_uid, ordered)]
    contexts: list[tuple[str, tuple[UID, ...]]] = [(job.sop_class_uid, (syntax,))]
    if not syntax.is_compressed and syntax.is_little_endian:
        contexts.append((job.sop_class_uid, _UNCOMPRESSED))
    return contexts


def _association_failure(assoc: Association, jobs: list[_Due]) -> Outcome:
    """Why no association was established, and whether that can change."""
    response = assoc.acceptor.primitive
    if assoc.is_rejected and response is not None:
        what = (f"association rejected ({response.result_str}, source: {response.source_str}, "
                f"reason: {response.reason_str})")
        verdict = Verdict.FAIL if response.result == 0x01 else Verdict.RETRY
        return Outcome(verdict, None, what)
    if response is not None and response.result == 0x00 and not assoc.accepted_contexts:
        classes = sorted({UID(job.sop_class_uid).name for job in jobs})
        return Outcome(Verdict.FAIL, None, "peer accepted no presentation context for "
                                           + ", ".join(classes))
    return Outcome(Verdict.RETRY, None, "no association (connection refused or timed out, "
                                        "or aborted during negotiation)")
