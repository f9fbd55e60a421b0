"""``bpr backfill``: fetch the series a peer already holds, for the node to analyze.

1. **Discovery** (:func:`discover`): C-FIND on the peer, study by study (StudyDate range,
   ModalitiesInStudy) and then series by series (Modality), one ``backfill_jobs`` row per
   series. A row that exists is never added again, so a new run resumes the old one; series
   the node analyzed already are SKIPPED.
2. **Fetching** (:class:`Backfill`): each PENDING job is claimed by a conditional UPDATE
   (PENDING → FETCHING, with this process as ``claimed_by``), then retrieved with C-MOVE to
   this node's AE title (the node must be running to receive it), or with C-GET into this
   process's own store when ``backfill.use_c_get`` is set or the peer answers that it does not
   know the node as a move destination (0xA801). The fetch is counted in the row before the
   request is sent. A job whose fetcher died is resumed by the next run; if all the instances
   the peer listed are stored by then it is FETCHED without a second retrieve.
3. **Outcome**: FETCHED once every listed instance is stored; the node analyzes the series the
   normal way (a series being fetched is not taken as complete before the fetch ends). A peer
   that refuses, fails sub-operations, times out or aborts gives a retry after
   ``backfill.initial_delay_s`` (doubling), then FAILED with the reason; one bad series never
   stops the run.

Retrieves start at most ``rate`` per second, ``concurrency`` at once. Values the peer sends
(UIDs) are validated before they are stored or sent back; none ever becomes a path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    EnhancedCTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import func, select, update

from dicom_node.application_entity import build_ae
from dicom_node.cluster import Membership, is_gone
from dicom_node.config import ConfigError, NodeConfig, PeerConfig
from dicom_node.headers import is_valid_uid, short_uid
from dicom_node.index import (
    BackfillJob,
    BackfillState,
    Index,
    Instance,
    NodeProcess,
    Series,
    SeriesState,
)
from dicom_node.receive import StoreService
from dicom_node.storage import FileStore

log = logging.getLogger(__name__)

#: C-FIND pending statuses (an identifier follows).
_PENDING = (0xFF00, 0xFF01)
#: The peer does not know the move destination: retrieve with C-GET instead.
MOVE_DESTINATION_UNKNOWN = 0xA801
#: Storage classes accepted in a C-GET (the SCP role is negotiated for them).
GET_STORAGE_CLASSES = (CTImageStorage, EnhancedCTImageStorage)


class BackfillError(Exception):
    """The run cannot start (unknown peer, peer unreachable for discovery)."""


@dataclass(frozen=True)
class BackfillRequest:
    """What one ``bpr backfill`` run fetches (None: the ``backfill`` config value)."""

    peer: str
    since: str | None = None
    until: str | None = None
    modality: str = "CT"
    rate: float | None = None
    concurrency: int | None = None
    max_series: int | None = None


@dataclass(frozen=True)
class Found:
    """One series a peer listed."""

    study_uid: str
    series_uid: str
    study_date: str
    modality: str
    instances: int | None


def backoff_delay(attempts: int, initial: float, maximum: float) -> float:
    """Delay before retry number ``attempts`` (1 → ``initial``, doubling, capped)."""
    return float(min(maximum, initial * 2 ** max(0, attempts - 1)))


def peer_of(config: NodeConfig, title: str) -> PeerConfig:
    """The configured peer to backfill from (it needs host and port)."""
    peer = config.peer(title)
    if peer is None or not peer.host or not peer.port:
        raise ConfigError(f"backfill: {title!r} is not a configured peer with host and port")
    return peer


# -- discovery ------------------------------------------------------------------------------


def _query(assoc: Association, identifier: Dataset) -> Iterator[Dataset]:
    for status, answer in assoc.send_c_find(identifier,
                                            StudyRootQueryRetrieveInformationModelFind):
        code = getattr(status, "Status", None)
        if code is None:
            raise BackfillError("the peer stopped answering the C-FIND")
        if code in _PENDING and answer is not None:
            yield answer
        elif code not in _PENDING and code != 0x0000:
            raise BackfillError(f"C-FIND refused with status 0x{code:04X}")


def find_series(ae: AE, peer: PeerConfig, request: BackfillRequest) -> list[Found]:
    """C-FIND the peer's studies in the date range, then their series of the modality."""
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title,
                         contexts=[build_context(StudyRootQueryRetrieveInformationModelFind)])
    if not assoc.is_established:
        raise BackfillError(f"cannot associate with {peer.ae_title} at "
                            f"{peer.host}:{peer.port} for C-FIND")
    found: list[Found] = []
    try:
        study_query = Dataset()
        study_query.QueryRetrieveLevel = "STUDY"
        study_query.StudyInstanceUID = ""
        study_query.StudyDate = (f"{request.since or ''}-{request.until or ''}"
                                 if request.since or request.until else "")
        study_query.ModalitiesInStudy = request.modality
        studies = [(str(a.get("StudyInstanceUID", "")), str(a.get("StudyDate", "")))
                   for a in _query(assoc, study_query)]
        for study_uid, study_date in studies:
            if not is_valid_uid(study_uid):
                log.warning("backfill: the peer listed a study with an invalid UID; skipped")
                continue
            series_query = Dataset()
            series_query.QueryRetrieveLevel = "SERIES"
            series_query.StudyInstanceUID = study_uid
            series_query.SeriesInstanceUID = ""
            series_query.Modality = request.modality
            series_query.NumberOfSeriesRelatedInstances = ""
            for answer in _query(assoc, series_query):
                uid = str(answer.get("SeriesInstanceUID", ""))
                if not is_valid_uid(uid):
                    log.warning("backfill: the peer listed a series with an invalid UID")
                    continue
                count = answer.get("NumberOfSeriesRelatedInstances")
                found.append(Found(study_uid, uid, study_date[:8],
                                   str(answer.get("Modality", request.modality))[:16],
                                   int(count) if count not in (None, "") else None))
    finally:
        assoc.release()
    return found


def discover(index: Index, found: list[Found], peer: str, now: float | None = None) -> int:
    """Add a job per newly found series (SKIPPED when the node analyzed it); new jobs."""
    at = time.time() if now is None else now
    added = 0
    with index.session() as session:
        known = set(session.scalars(select(BackfillJob.series_instance_uid)
                                    .where(BackfillJob.peer == peer)))
        for f in found:
            if f.series_uid in known:
                continue
            known.add(f.series_uid)
            job = BackfillJob(peer=peer, study_instance_uid=f.study_uid,
                              series_instance_uid=f.series_uid, study_date=f.study_date,
                              modality=f.modality, expected_instances=f.instances,
                              state=BackfillState.PENDING, created_at=at)
            if _analyzed(session, f.series_uid):
                job.state, job.finished_at = BackfillState.SKIPPED, at
            session.add(job)
            added += 1
    return added


def _analyzed(session: Any, series_uid: str) -> bool:
    return session.scalar(select(Series.id).where(
        Series.series_instance_uid == series_uid, Series.state == SeriesState.DONE)) is not None


def stored_instances(index: Index, series_uid: str) -> int:
    """Instances of the series the index holds."""
    with index.session() as session:
        return int(session.scalar(
            select(func.count(Instance.id)).join(Series)
            .where(Series.series_instance_uid == series_uid)) or 0)


# -- fetching -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retrieved:
    """Final answer of one retrieve."""

    ok: bool
    error: str | None = None
    move_destination_unknown: bool = False


class Backfill:
    """Fetches the jobs of one peer (see the module docstring).

    Parameters
    ----------
    index, store, config
    request : BackfillRequest
    on_progress : callable, optional
        Called with each job's new state when it leaves FETCHING.
    """

    def __init__(self, index: Index, store: FileStore, config: NodeConfig,
                 request: BackfillRequest,
                 on_progress: Callable[[BackfillState], None] | None = None) -> None:
        self.index = index
        self.store = store
        self.config = config
        self.request = request
        self.peer = peer_of(config, request.peer)
        self.settings = config.backfill
        self.rate = self.settings.rate if request.rate is None else request.rate
        self.concurrency = request.concurrency or self.settings.concurrency
        self.use_get = self.settings.use_c_get
        self.on_progress = on_progress
        self.ae = build_ae(config)
        self.membership = Membership(index, "backfill")
        self._started_last = 0.0
        self._rate_lock = threading.Lock()

    def discover(self) -> int:
        """C-FIND the peer and add the new jobs; their number."""
        found = find_series(self.ae, self.peer, self.request)
        return discover(self.index, found, self.peer.ae_title)

    def run(self) -> dict[str, int]:
        """Fetch until no job is due or waiting for a retry; the final counts per state."""
        self.membership.join()
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="bpr-backfill") as pool:
                for _ in pool.map(lambda _i: self._drain(), range(self.concurrency)):
                    pass
        finally:
            self.membership.leave()
        return job_counts(self.index, self.peer.ae_title)

    def _drain(self) -> None:
        while True:
            job_id = self._claim_next()
            if job_id is None:
                wait = self._next_retry_in()
                if wait is None:
                    return
                time.sleep(min(wait, 5.0))
                continue
            self._throttle()
            state = self._fetch(job_id)
            if self.on_progress is not None:
                self.on_progress(state)

    def _throttle(self) -> None:
        if not self.rate:
            return
        with self._rate_lock:
            wait = self._started_last + 1.0 / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._started_last = time.monotonic()

    def _claim_next(self) -> int | None:
        """PENDING (due) or FETCHING by a gone process → FETCHING by us; its id."""
        now = time.time()
        with self.index.session() as session:
            if self.request.max_series is not None:
                started = session.scalar(select(func.count(BackfillJob.id)).where(
                    BackfillJob.peer == self.peer.ae_title, BackfillJob.fetches > 0)) or 0
                if started >= self.request.max_series:
                    return None
            processes = {p.id: p for p in session.scalars(select(NodeProcess))}
            candidates = session.scalars(select(BackfillJob).where(
                BackfillJob.peer == self.peer.ae_title,
                ((BackfillJob.state == BackfillState.PENDING)
                 & (BackfillJob.next_attempt_at <= now))
                | (BackfillJob.state == BackfillState.FETCHING))
                .order_by(BackfillJob.id)).all()
            for job in candidates:
                if (job.state is BackfillState.FETCHING
                        and not is_gone(processes.get(job.claimed_by or ""), now)):
                    continue  # a live fetcher has it
                same_holder = (BackfillJob.claimed_by.is_(None) if job.claimed_by is None
                               else BackfillJob.claimed_by == job.claimed_by)
                taken = session.execute(
                    update(BackfillJob).where(BackfillJob.id == job.id,
                                              BackfillJob.state == job.state, same_holder)
                    .values(state=BackfillState.FETCHING, claimed_by=self.membership.id))
                if taken.rowcount == 1:  # type: ignore[attr-defined]
                    return int(job.id)
        return None

    def _next_retry_in(self) -> float | None:
        with self.index.session() as session:
            soonest = session.scalar(select(func.min(BackfillJob.next_attempt_at)).where(
                BackfillJob.peer == self.peer.ae_title,
                BackfillJob.state == BackfillState.PENDING))
        return None if soonest is None else max(0.0, soonest - time.time())

    def _fetch(self, job_id: int) -> BackfillState:
        with self.index.session() as session:
            job = session.get_one(BackfillJob, job_id)
            series_uid, study_uid = job.series_instance_uid, job.study_instance_uid
            expected = job.expected_instances
            if _analyzed(session, series_uid) and job.fetches == 0:
                return self._finish(job_id, BackfillState.SKIPPED, None)
        if expected and stored_instances(self.index, series_uid) >= expected:
            # e.g. a retrieve of a killed run delivered everything: never fetch twice
            return self._finish(job_id, BackfillState.FETCHED, None)
        with self.index.session() as session:
            session.get_one(BackfillJob, job_id).fetches += 1
        log.info("backfill: retrieving series %s from %s", short_uid(series_uid),
                 self.peer.ae_title)
        outcome = self._retrieve(study_uid, series_uid)
        if outcome.move_destination_unknown and not self.use_get:
            log.warning("backfill: %s does not know %s as a move destination; using C-GET",
                        self.peer.ae_title, self.config.network.ae_title)
            self.use_get = True
            outcome = self._retrieve(study_uid, series_uid)
        if outcome.ok and expected:
            stored = stored_instances(self.index, series_uid)
            if stored < expected:
                outcome = Retrieved(False, f"the peer delivered {stored} of {expected} "
                                           "instances")
        if outcome.ok:
            return self._finish(job_id, BackfillState.FETCHED, None)
        return self._failed(job_id, outcome.error or "retrieve failed")

    def _finish(self, job_id: int, state: BackfillState, error: str | None) -> BackfillState:
        with self.index.session() as session:
            job = session.get_one(BackfillJob, job_id)
            job.state, job.claimed_by, job.last_error = state, None, error
            job.finished_at = time.time()
        return state

    def _failed(self, job_id: int, error: str) -> BackfillState:
        with self.index.session() as session:
            job = session.get_one(BackfillJob, job_id)
            job.attempts += 1
            job.last_error = error[:2000]
            job.claimed_by = None
            if job.attempts >= self.settings.max_attempts:
                job.state, job.finished_at = BackfillState.FAILED, time.time()
                log.error("backfill: series %s FAILED after %d attempts: %s",
                          short_uid(job.series_instance_uid), job.attempts, error)
                return BackfillState.FAILED
            delay = backoff_delay(job.attempts, self.settings.initial_delay_s,
                                  self.settings.max_delay_s)
            job.state, job.next_attempt_at = BackfillState.PENDING, time.time() + delay
            log.warning("backfill: series %s attempt %d failed, retry in %.0f s: %s",
                        short_uid(job.series_instance_uid), job.attempts, delay, error)
            return BackfillState.PENDING

    def _retrieve(self, study_uid: str, series_uid: str) -> Retrieved:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        if self.use_get:
            return self._get(identifier)
        return self._move(identifier)

    def _move(self, identifier: Dataset) -> Retrieved:
        assoc = self.ae.associate(
            self.peer.host, self.peer.port, ae_title=self.peer.ae_title,
            contexts=[build_context(StudyRootQueryRetrieveInformationModelMove)])
        if not assoc.is_established:
            return Retrieved(False, "association for C-MOVE refused or timed out")
        try:
            responses = assoc.send_c_move(identifier, self.config.network.ae_title,
                                          StudyRootQueryRetrieveInformationModelMove)
            return _final(responses)
        finally:
            if assoc.is_established:
                assoc.release()

    def _get(self, identifier: Dataset) -> Retrieved:
        receiver = StoreService(self.index, self.store, self.config)
        contexts = [build_context(StudyRootQueryRetrieveInformationModelGet),
                    *(build_context(c) for c in GET_STORAGE_CLASSES)]
        assoc = self.ae.associate(
            self.peer.host, self.peer.port, ae_title=self.peer.ae_title, contexts=contexts,
            ext_neg=[build_role(c, scp_role=True) for c in GET_STORAGE_CLASSES],
            evt_handlers=receiver.handlers())
        if not assoc.is_established:
            return Retrieved(False, "association for C-GET refused or timed out")
        try:
            return _final(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
        finally:
            if assoc.is_established:
                assoc.release()


def _final(responses: Iterator[tuple[Dataset, Dataset | None]]) -> Retrieved:
    """The retrieve's outcome from its last response."""
    last: Dataset | None = None
    for status, _identifier in responses:
        last = status
    code = getattr(last, "Status", None) if last is not None else None
    if code is None:
        return Retrieved(False, "the peer aborted or timed out during the retrieve")
    if code == MOVE_DESTINATION_UNKNOWN:
        return Retrieved(False, "move destination unknown to the peer (0xA801)",
                         move_destination_unknown=True)
    failed = int(getattr(last, "NumberOfFailedSuboperations", 0) or 0)
    if code == 0x0000 and not failed:
        return Retrieved(True)
    return Retrieved(False, f"retrieve failed with status 0x{code:04X} ({_meaning(code)})"
                            + (f", {failed} sub-operation(s) failed" if failed else ""))


def _meaning(code: int) -> str:
    """What a C-MOVE / C-GET final status says (PS3.4 C.4.2.1.5 and C.4.3.1.4)."""
    if code in (0xA701, 0xA702):
        return "the peer is out of resources"
    if code == 0xA900:
        return "identifier does not match the SOP class"
    if code == 0xB000:
        return "sub-operations completed with failures"
    if code == 0xFE00:
        return "cancelled"
    if 0xC000 <= code <= 0xCFFF:
        return "the peer is unable to process it"
    return "failure"


def job_counts(index: Index, peer: str | None = None) -> dict[str, int]:
    """Jobs per state (all states listed), of one peer or all."""
    query = select(BackfillJob.state, func.count(BackfillJob.id)).group_by(BackfillJob.state)
    if peer is not None:
        query = query.where(BackfillJob.peer == peer)
    with index.session() as session:
        counts = {state.value: 0 for state in BackfillState}
        counts.update({state.value: int(n) for state, n in session.execute(query)})
    return counts


def status_report(index: Index) -> list[dict[str, object]]:
    """Per peer: jobs per state, fetched series analyzed, and the reasons of failures."""
    with index.session() as session:
        peers = sorted(set(session.scalars(select(BackfillJob.peer))))
        rows: list[dict[str, object]] = []
        for peer in peers:
            fetched = select(BackfillJob.series_instance_uid).where(
                BackfillJob.peer == peer, BackfillJob.state == BackfillState.FETCHED)
            analyzed = session.scalar(select(func.count(Series.id)).where(
                Series.series_instance_uid.in_(fetched), Series.state == SeriesState.DONE))
            failures = session.execute(select(BackfillJob.series_instance_uid,
                                              BackfillJob.last_error).where(
                BackfillJob.peer == peer, BackfillJob.state == BackfillState.FAILED)).all()
            rows.append({"peer": peer, **job_counts(index, peer),
                         "analyzed": int(analyzed or 0),
                         "failed_series": [{"series_instance_uid": uid, "error": error}
                                           for uid, error in failures]})
    return rows
