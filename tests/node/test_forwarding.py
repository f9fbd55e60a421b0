"""The SR forwarding queue against scripted pynetdicom peers (DCMTK ``storescp``: integration)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from pydicom.dataset import Dataset
from pydicom.uid import BasicTextSRStorage, CTImageStorage
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select

from dicom_node.forwarding import SCHEDULER_JOB_ID, backoff_delay, enqueue_forwards
from dicom_node.index import ForwardJob, ForwardState
from dicom_node.statuses import Verdict, classify_status
from tests.node.forwarding_node import PACS, T0, Node, peer
from tests.node_harness import free_port


class FakePeer:
    """A scripted storage SCP: answers ``statuses`` in turn (the last one repeats)."""

    def __init__(self, port: int, *, statuses: tuple[int, ...] = (0x0000,),
                 abort: bool = False, calling_aets: tuple[str, ...] = (),
                 sop_class: str = BasicTextSRStorage, delay_s: float = 0.0,
                 max_associations: int = 10) -> None:
        self.port = port
        self.statuses = list(statuses)
        self.abort = abort
        self.delay_s = delay_s
        self.received: list[Dataset] = []
        self.associations = 0
        self._ae = AE(ae_title=PACS)
        self._ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self._ae.maximum_associations = max_associations
        if calling_aets:
            self._ae.require_calling_aet = list(calling_aets)
        self._server: ThreadedAssociationServer | None = None

    def _on_store(self, event: Any) -> int:
        time.sleep(self.delay_s)
        if self.abort:
            event.assoc.abort()
            return 0x0000
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def _on_established(self, _event: Any) -> None:
        self.associations += 1

    def __enter__(self) -> FakePeer:
        self._server = self._ae.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store),
                          (evt.EVT_ESTABLISHED, self._on_established)])
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def node(tmp_path: Path, port: int) -> Iterator[Node]:
    made = Node(tmp_path, [peer(port)])
    yield made
    made.index.close()


# -- the queue --------------------------------------------------------------------------


def test_enqueue_is_idempotent_and_only_for_forward_sr_peers(tmp_path: Path) -> None:
    made = Node(tmp_path, [peer(free_port(), "A"), peer(free_port(), "B"),
                           peer(free_port(), "C", forward_sr=False)])
    pk = made.add_sr()
    with made.index.session() as session:
        assert enqueue_forwards(session, pk, made.config, T0 + 1) == 0
    with made.index.session() as session:
        jobs = list(session.scalars(select(ForwardJob).order_by(ForwardJob.destination)))
    assert [(j.destination, j.state, j.attempts, j.next_attempt_at) for j in jobs] == [
        ("A", ForwardState.PENDING, 0, T0), ("B", ForwardState.PENDING, 0, T0)]
    made.index.close()


def test_accepting_peer_gets_the_sr_and_the_job_is_done(node: Node, port: int) -> None:
    pk = node.add_sr()
    with FakePeer(port) as pacs:
        assert node.forwarder.run_due(now=T0 + 1) == 1
    job = node.job(pk)
    assert (job.state, job.attempts, job.last_status, job.done_at) == (
        ForwardState.DONE, 1, 0x0000, T0 + 1)
    assert [ds.SOPInstanceUID for ds in pacs.received] == [node.sop_uid(pk)]
    assert pacs.received[0].ContentSequence[0].TextValue == "CHEST"
    assert node.status_counts() == {
        ForwardState.PENDING: 0, ForwardState.DONE: 1, ForwardState.FAILED: 0}


def test_one_association_carries_all_due_jobs_of_a_destination(node: Node, port: int) -> None:
    pks = [node.add_sr() for _ in range(3)]
    with FakePeer(port) as pacs:
        assert node.forwarder.run_due(now=T0) == 3
    assert pacs.associations == 1
    assert sorted(ds.SOPInstanceUID for ds in pacs.received) == sorted(
        node.sop_uid(pk) for pk in pks)


def test_jobs_not_yet_due_are_not_sent(node: Node, port: int) -> None:
    pk = node.add_sr(now=T0 + 100)
    with FakePeer(port) as pacs:
        assert node.forwarder.run_due(now=T0) == 0
    assert pacs.associations == 0
    assert node.job(pk).state is ForwardState.PENDING


def test_peer_down_then_up_the_sr_arrives_later(node: Node, port: int) -> None:
    pk = node.add_sr()
    assert node.forwarder.run_due(now=T0) == 0  # nothing listens on the port
    job = node.job(pk)
    assert (job.state, job.attempts, job.next_attempt_at) == (ForwardState.PENDING, 1, T0 + 10)
    assert job.last_status is None and job.last_error and "no association" in job.last_error
    with FakePeer(port) as pacs:
        assert node.forwarder.run_due(now=T0 + 5) == 0  # backoff not over: not even tried
        assert pacs.associations == 0
        assert node.forwarder.run_due(now=T0 + 10) == 1
    job = node.job(pk)
    assert (job.state, job.attempts, job.done_at) == (ForwardState.DONE, 2, T0 + 10)
    assert [ds.SOPInstanceUID for ds in pacs.received] == [node.sop_uid(pk)]


def test_dataset_does_not_match_sop_class_fails_at_once(node: Node, port: int) -> None:
    pk = node.add_sr()
    with FakePeer(port, statuses=(0xA900,)) as pacs:
        node.forwarder.run_due(now=T0)
        job = node.job(pk)
        assert (job.state, job.attempts, job.last_status) == (ForwardState.FAILED, 1, 0xA900)
        assert job.last_error and "does not match" in job.last_error
        node.forwarder.run_due(now=T0 + 10_000)
    assert len(pacs.received) == 1  # never retried


def test_out_of_resources_is_retried(node: Node, port: int) -> None:
    pk = node.add_sr()
    with FakePeer(port, statuses=(0xA700, 0x0000)) as pacs:
        assert node.forwarder.run_due(now=T0) == 0
        job = node.job(pk)
        assert (job.state, job.attempts, job.last_status) == (ForwardState.PENDING, 1, 0xA700)
        assert job.next_attempt_at == T0 + 10
        assert node.forwarder.run_due(now=T0 + 10) == 1
    assert node.job(pk).state is ForwardState.DONE
    assert len(pacs.received) == 2


def test_warning_status_counts_as_stored(node: Node, port: int) -> None:
    pk = node.add_sr()
    with FakePeer(port, statuses=(0xB000,)):
        assert node.forwarder.run_due(now=T0) == 1
    job = node.job(pk)
    assert (job.state, job.last_status) == (ForwardState.DONE, 0xB000)


def test_abort_during_the_store_is_not_done_and_is_retried(node: Node, port: int) -> None:
    pk = node.add_sr()
    with FakePeer(port, abort=True):
        assert node.forwarder.run_due(now=T0) == 0
    job = node.job(pk)
    assert (job.state, job.attempts, job.done_at) == (ForwardState.PENDING, 1, None)
    assert job.last_error and "no C-STORE response" in job.last_error
    with FakePeer(port) as pacs:
        assert node.forwarder.run_due(now=T0 + 10) == 1
    assert [ds.SOPInstanceUID for ds in pacs.received] == [node.sop_uid(pk)]


def test_abort_mid_batch_leaves_the_untried_jobs_untouched(node: Node, port: int) -> None:
    pks = [node.add_sr() for _ in range(3)]
    with FakePeer(port, abort=True):
        node.forwarder.run_due(now=T0)
    attempts = sorted(node.job(pk).attempts for pk in pks)
    assert attempts == [0, 0, 1]
    assert all(node.job(pk).state is ForwardState.PENDING for pk in pks)


def test_peer_rejecting_our_calling_ae_fails_permanently(node: Node, port: int) -> None:
    pk = node.add_sr()
    with FakePeer(port, calling_aets=("SOMEONE_ELSE",)) as pacs:
        node.forwarder.run_due(now=T0)
    job = node.job(pk)
    assert (job.state, job.attempts) == (ForwardState.FAILED, 1)
    assert job.last_error and "Rejected Permanent" in job.last_error
    assert "Calling AE title not recognised" in job.last_error
    assert pacs.received == []


def test_transient_association_rejection_is_retried(node: Node, port: int) -> None:
    pk = node.add_sr()
    with FakePeer(port, max_associations=1) as pacs:
        other = AE(ae_title="OTHER")
        other.add_requested_context(BasicTextSRStorage)
        busy = other.associate("127.0.0.1", port, ae_title=PACS)  # takes the only slot
        assert busy.is_established
        try:
            node.forwarder.run_due(now=T0)
        finally:
            busy.release()
    job = node.job(pk)
    assert (job.state, job.attempts, job.next_attempt_at) == (ForwardState.PENDING, 1, T0 + 10)
    assert job.last_error and "Rejected Transient" in job.last_error
    assert pacs.received == []


def test_no_accepted_presentation_context_fails_permanently(node: Node, port: int) -> None:
    pk = node.add_sr()
    with FakePeer(port, sop_class=CTImageStorage) as pacs:
        node.forwarder.run_due(now=T0)
    job = node.job(pk)
    assert job.state is ForwardState.FAILED
    assert job.last_error and "no presentation context" in job.last_error
    assert pacs.received == []


def test_max_attempts_then_failed(tmp_path: Path, port: int) -> None:
    made = Node(tmp_path, [peer(port)], max_attempts=3)
    pk = made.add_sr()
    now = T0
    for expected in (1, 2):
        made.forwarder.run_due(now=now)
        job = made.job(pk)
        assert (job.state, job.attempts) == (ForwardState.PENDING, expected)
        now = job.next_attempt_at
    made.forwarder.run_due(now=now)
    job = made.job(pk)
    assert (job.state, job.attempts) == (ForwardState.FAILED, 3)
    assert job.last_error and "gave up after 3 attempts" in job.last_error
    assert made.forwarder.requeue_failed(now=now) == 1
    with FakePeer(port):
        assert made.forwarder.run_due(now=now) == 1
    made.index.close()


def test_backoff_doubles_and_is_capped(tmp_path: Path, port: int) -> None:
    made = Node(tmp_path, [peer(port)], initial_delay_s=10, max_delay_s=35, max_attempts=10)
    fwd = made.config.forwarding
    assert [backoff_delay(n, fwd) for n in range(1, 6)] == [10, 20, 35, 35, 35]
    assert backoff_delay(10_000, fwd) == 35  # no overflow for huge attempt counts
    pk = made.add_sr()
    now, delays = T0, []
    for _ in range(4):
        made.forwarder.run_due(now=now)
        job = made.job(pk)
        delays.append(job.next_attempt_at - now)
        now = job.next_attempt_at
    assert delays == [10, 20, 35, 35]
    made.index.close()


@pytest.mark.parametrize(("status", "verdict"), [
    (0x0000, Verdict.DONE), (0xB006, Verdict.DONE), (0xB007, Verdict.DONE),
    (0xA700, Verdict.RETRY), (0xA7FF, Verdict.RETRY), (0x0213, Verdict.RETRY),
    (0x0110, Verdict.RETRY), (0xA901, Verdict.FAIL), (0xC123, Verdict.FAIL),
    (0x0122, Verdict.FAIL), (0x0211, Verdict.FAIL), (0x0212, Verdict.FAIL),
    (0x1234, Verdict.RETRY),
])
def test_status_classification(status: int, verdict: Verdict) -> None:
    assert classify_status(status).verdict is verdict


def test_missing_local_file_fails_with_a_clear_error(node: Node, port: int) -> None:
    pk = node.add_sr()
    node.path(pk).unlink()
    with FakePeer(port) as pacs:
        node.forwarder.run_due(now=T0)
    job = node.job(pk)
    assert (job.state, job.last_error) == (ForwardState.FAILED, "stored file is missing")
    assert pacs.received == []


def test_corrupt_local_file_fails_with_a_clear_error(node: Node, port: int) -> None:
    pk = node.add_sr()
    node.path(pk).write_bytes(b"not dicom at all" * 20)
    with FakePeer(port):
        node.forwarder.run_due(now=T0)
    job = node.job(pk)
    assert job.state is ForwardState.FAILED
    assert job.last_error and job.last_error.startswith("stored file is not readable DICOM")


def test_destination_no_longer_configured_fails(tmp_path: Path, port: int) -> None:
    made = Node(tmp_path, [peer(port)])
    pk = made.add_sr()
    # Same index and store; the peer was removed from the configuration meanwhile.
    later = Node(tmp_path, [peer(port, "OTHER", forward_sr=False)])
    later.forwarder.run_due(now=T0)
    assert made.job(pk).state is ForwardState.FAILED
    made.index.close()
    later.index.close()


def test_concurrent_runs_send_a_job_once(node: Node, port: int) -> None:
    node.add_sr()
    with FakePeer(port, delay_s=0.3) as pacs:
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(node.forwarder.run_due(T0)))
                   for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=15)
    assert sorted(results) == [0, 0, 1]
    assert len(pacs.received) == 1


def test_scheduler_job_polls_the_queue(tmp_path: Path, port: int) -> None:
    made = Node(tmp_path, [peer(port)], poll_seconds=0.2)
    pk = made.add_sr(now=time.time())
    scheduler = BackgroundScheduler()
    scheduler.start()
    try:
        with FakePeer(port):
            made.forwarder.start(scheduler)
            made.forwarder.start(scheduler)  # a restart replaces the job
            job = scheduler.get_job(SCHEDULER_JOB_ID)
            assert len(scheduler.get_jobs()) == 1
            assert (job.max_instances, job.coalesce) == (1, True)
            deadline = time.monotonic() + 10
            while made.job(pk).state is ForwardState.PENDING and time.monotonic() < deadline:
                time.sleep(0.05)
            made.forwarder.trigger()
            made.forwarder.stop()
    finally:
        scheduler.shutdown(wait=True)
    assert made.job(pk).state is ForwardState.DONE
    assert scheduler.get_job(SCHEDULER_JOB_ID) is None
    made.index.close()

