"""Sending due forward jobs to one peer over one association.

:func:`send_batch` proposes the contexts the batch's files need (:mod:`dicom_node.contexts`),
then C-STOREs each file and hands every outcome to the caller at once, so the queue records it
in its own short session before the next C-STORE (:mod:`dicom_node.forwarding`). What an
answer means is decided by :func:`dicom_node.statuses.classify_status`; what it means when
there is no answer is decided here: an association that is refused or aborted, a local file
that is missing, unreadable or holds another instance, a file that cannot be sent in any
accepted context.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_node.config import PeerConfig
from dicom_node.contexts import fit_contexts, forward_contexts
from dicom_node.headers import uid_name, uid_value
from dicom_node.statuses import (
    ASSOCIATION_ACCEPTED,
    ASSOCIATION_REJECTED_PERMANENT,
    Outcome,
    Verdict,
    classify_status,
)
from dicom_node.storage import FileStore
from model.api import READ_ERRORS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DueJob:
    """What sending one job needs, copied out of the database session."""

    job_id: int
    destination: str
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def send_batch(ae: AE, peer: PeerConfig, jobs: list[DueJob], store: FileStore,
               record: Callable[[DueJob, Outcome], bool]) -> int:
    """Send ``jobs`` to ``peer`` in one association; ``record`` each outcome as it comes.

    Parameters
    ----------
    ae : AE
        The requesting AE (:func:`dicom_node.application_entity.build_ae`).
    peer : PeerConfig
        The destination, with host and port.
    jobs : list of DueJob
        Jobs whose contexts do not fit in one association request are left out, unrecorded
        (for the next run).
    store : FileStore
        Where the files are.
    record : callable
        Writes one outcome; returns True when the job is now DONE.

    Returns
    -------
    int
        Jobs that reached DONE.
    """
    contexts, jobs = fit_contexts(jobs, forward_contexts)
    assoc = ae.associate(peer.host, peer.port, contexts=contexts, ae_title=peer.ae_title)
    if not assoc.is_established:
        outcome = _association_failure(assoc, jobs)
        log.warning("forward to %s: %s (%d job(s))", peer.ae_title, outcome.error, len(jobs))
        for job in jobs:
            record(job, outcome)
        return 0
    done = 0
    try:
        for position, job in enumerate(jobs):
            if not assoc.is_established:
                # Lost after an earlier C-STORE of this batch, which was counted; these
                # were never tried, so they wait for the next run unchanged.
                log.warning("forward to %s: association lost, %d job(s) wait for the "
                            "next run", peer.ae_title, len(jobs) - position)
                break
            if record(job, _send_one(assoc, job, store)):
                done += 1
    finally:
        if assoc.is_established:
            assoc.release()
    return done


def _association_failure(assoc: Association, jobs: list[DueJob]) -> Outcome:
    """Why no association was established, and whether that can change."""
    response = assoc.acceptor.primitive
    if assoc.is_rejected and response is not None:
        what = (f"association rejected ({response.result_str}, source: {response.source_str}, "
                f"reason: {response.reason_str})")
        verdict = (Verdict.FAIL if response.result == ASSOCIATION_REJECTED_PERMANENT
                   else Verdict.RETRY)
        return Outcome(verdict, None, what)
    if (response is not None and response.result == ASSOCIATION_ACCEPTED
            and not assoc.accepted_contexts):
        classes = sorted({uid_name(job.sop_class_uid) for job in jobs})
        return Outcome(Verdict.FAIL, None, "peer accepted no presentation context for "
                                           + ", ".join(classes))
    return Outcome(Verdict.RETRY, None, "no association (connection refused or timed out, "
                                        "or aborted during negotiation)")


def _send_one(assoc: Association, job: DueJob, store: FileStore) -> Outcome:
    ds_or_error = _read(job, store)
    if isinstance(ds_or_error, Outcome):
        return ds_or_error
    ds = ds_or_error
    if not any(cx.abstract_syntax == job.sop_class_uid for cx in assoc.accepted_contexts):
        return Outcome(Verdict.FAIL, None, "peer accepted no presentation context for "
                                           f"{uid_name(job.sop_class_uid)}")
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


def _read(job: DueJob, store: FileStore) -> Dataset | Outcome:
    try:
        path = store.absolute(job.path)
    except ValueError:
        return Outcome(Verdict.FAIL, None, "stored path is outside the storage root")
    try:
        ds = dcmread(path)
        found = uid_value(ds, "SOPInstanceUID")
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
