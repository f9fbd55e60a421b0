"""Every DIMSE status the node answers or reads, by name, and what a peer's status means.

One table, as pynetdicom's :mod:`pynetdicom.status` has: the general statuses of PS3.7 Annex C,
the Storage statuses of PS3.4 B.2.3 and the Query/Retrieve statuses of PS3.4 C.4.1.1.4,
C.4.2.1.5 and C.4.3.1.4 that the handlers return (:mod:`dicom_node.receive`,
:mod:`dicom_node.query`), and the ranges by which :func:`classify_status` decides whether a
forwarded SR is stored, worth sending again, or refused for good (:mod:`dicom_node.forwarding`).
The A-ASSOCIATE result values the forwarder reads are here too (PS3.8 9.3.3 and 9.3.4).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

# -- general (PS3.7 Annex C) -----------------------------------------------------------------

#: Success.
SUCCESS: Final = 0x0000
#: Warning: requested optional attributes are not supported.
OPTIONAL_ATTRIBUTES_NOT_SUPPORTED: Final = 0x0001
#: Warning: attribute list error.
ATTRIBUTE_LIST_ERROR: Final = 0x0107
#: Failure: processing failure.
PROCESSING_FAILURE: Final = 0x0110
#: Failure: duplicate SOP instance (the peer already holds it).
DUPLICATE_SOP_INSTANCE: Final = 0x0111
#: Warning: attribute value out of range.
ATTRIBUTE_VALUE_OUT_OF_RANGE: Final = 0x0116
#: Failure: invalid object instance.
INVALID_OBJECT_INSTANCE: Final = 0x0117
#: Refused: SOP class not supported.
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
#: Refused: not authorized (the calling AE lacks the permission for the service).
NOT_AUTHORIZED: Final = 0x0124
#: Failure: duplicate invocation.
DUPLICATE_INVOCATION: Final = 0x0210
#: Failure: unrecognized operation.
UNRECOGNIZED_OPERATION: Final = 0x0211
#: Failure: mistyped argument.
MISTYPED_ARGUMENT: Final = 0x0212
#: Failure: resource limitation.
RESOURCE_LIMITATION: Final = 0x0213
#: Cancel: the operation was cancelled at the requestor's request.
CANCEL: Final = 0xFE00
#: Pending: matches or sub-operations are continuing.
PENDING: Final = 0xFF00

# -- Storage (PS3.4 B.2.3) -------------------------------------------------------------------

#: Refused: out of resources (the sender keeps its copy and tries again later).
OUT_OF_RESOURCES: Final = 0xA700
#: Error: data set does not match SOP class.
DATA_SET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
#: Error: cannot understand (the first code of its range).
CANNOT_UNDERSTAND: Final = 0xC000
#: Refused: out of resources, the whole range (0xA7xx).
OUT_OF_RESOURCES_RANGE: Final = range(0xA700, 0xA800)
#: Error: data set does not match SOP class, the whole range (0xA9xx).
DOES_NOT_MATCH_RANGE: Final = range(0xA900, 0xAA00)
#: Error: cannot understand, the whole range (0xCxxx).
CANNOT_UNDERSTAND_RANGE: Final = range(0xC000, 0xD000)
#: Warnings of the Storage service (0xBxxx: coercion, elements discarded, ...).
WARNING_RANGE: Final = range(0xB000, 0xC000)

# -- Query/Retrieve (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4) --------------------------------

#: Failure: identifier does not match SOP class (bad level, key value that cannot match).
IDENTIFIER_DOES_NOT_MATCH: Final = 0xA900
#: Refused: move destination unknown.
MOVE_DESTINATION_UNKNOWN: Final = 0xA801
#: First code of the "unable to process" failure range the node answers, per service.
UNABLE_TO_PROCESS: Final = {"find": 0xC300, "get": 0xC400, "move": 0xC500}
#: Added to :data:`UNABLE_TO_PROCESS`: the identifier cannot be decoded.
UNDECODABLE_IDENTIFIER: Final = 0x10
#: Added to :data:`UNABLE_TO_PROCESS`: the index database failed.
DATABASE_ERROR: Final = 0x20

# -- association results (PS3.8 9.3.3, 9.3.4) -----------------------------------------------

#: A-ASSOCIATE-AC result: acceptance.
ASSOCIATION_ACCEPTED: Final = 0x00
#: A-ASSOCIATE-RJ result: rejected permanent (a retry gets the same answer).
ASSOCIATION_REJECTED_PERMANENT: Final = 0x01


# -- what a C-STORE response status means for a forwarded SR ---------------------------------


class Verdict(enum.Enum):
    """What one attempt means for a forward job."""

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


#: Warnings outside :data:`WARNING_RANGE` after which the peer holds the instance.
STORED_WITH_WARNING: Final = frozenset({
    OPTIONAL_ATTRIBUTES_NOT_SUPPORTED, ATTRIBUTE_LIST_ERROR, ATTRIBUTE_VALUE_OUT_OF_RANGE,
})

#: Failure statuses after which sending the same instance again cannot succeed.
PERMANENT_STATUSES: Final = {
    INVALID_OBJECT_INSTANCE: "invalid SOP instance",
    SOP_CLASS_NOT_SUPPORTED: "SOP class not supported",
    NOT_AUTHORIZED: "not authorized",
    UNRECOGNIZED_OPERATION: "unrecognized operation",
    MISTYPED_ARGUMENT: "mistyped argument",
}

#: Failure statuses that describe a passing condition of the peer.
TRANSIENT_STATUSES: Final = {
    PROCESSING_FAILURE: "processing failure",
    DUPLICATE_INVOCATION: "duplicate invocation",
    RESOURCE_LIMITATION: "resource limitation",
    CANCEL: "cancelled",
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
    if status == SUCCESS:
        return Outcome(Verdict.DONE, status, None)
    if status in STORED_WITH_WARNING or status in WARNING_RANGE:
        return Outcome(Verdict.DONE, status, f"stored with warning {text}")
    if status == DUPLICATE_SOP_INSTANCE:
        # Our SR UIDs are unique, so a duplicate means an earlier attempt arrived even though
        # its response was lost (e.g. an abort after the store): the peer holds it.
        return Outcome(Verdict.DONE, status, f"peer already holds this instance ({text})")
    if status in OUT_OF_RESOURCES_RANGE:
        return Outcome(Verdict.RETRY, status, f"peer out of resources ({text})")
    if status in DOES_NOT_MATCH_RANGE:
        return Outcome(Verdict.FAIL, status, f"peer: data set does not match SOP class ({text})")
    if status in CANNOT_UNDERSTAND_RANGE:
        return Outcome(Verdict.FAIL, status, f"peer cannot understand the data set ({text})")
    if status in PERMANENT_STATUSES:
        return Outcome(Verdict.FAIL, status, f"peer refused: {PERMANENT_STATUSES[status]} "
                                             f"({text})")
    if status in TRANSIENT_STATUSES:
        return Outcome(Verdict.RETRY, status, f"peer: {TRANSIENT_STATUSES[status]} ({text})")
    return Outcome(Verdict.RETRY, status, f"peer answered unrecognized status {text}")
