"""The series state machine: every change of ``Series.state``, one named transition each.

=========================  ===========================  ====================================
transition                 from                         to
=========================  ===========================  ====================================
first_instance_received    (new series)                 RECEIVING; SKIPPED (our SR, modality
                                                        not analyzed)
instance_received          DONE, FAILED, QUEUED         RECEIVING (PROCESSING: sets
                                                        ``rerun_requested``)
quiet_time_reached         RECEIVING                    QUEUED
claim                      QUEUED                       PROCESSING
analysis_finished          PROCESSING                   DONE, FAILED; RECEIVING when
                                                        ``rerun_requested``
reprocess_requested        any but PROCESSING           QUEUED
abandoned_requeued         PROCESSING (its process is   QUEUED
                           gone)
=========================  ===========================  ====================================

A series is analyzed by one worker at a time: :func:`claim` is a conditional UPDATE, so two
workers, or a worker and ``bpr reprocess`` in another process, never both hold it. On
PostgreSQL this is as strong as ``SELECT … FOR UPDATE SKIP LOCKED`` for one row: under READ
COMMITTED the second UPDATE waits for the first one's row lock and then re-evaluates its
WHERE clause on the committed row, which is no longer QUEUED, so it changes nothing (on SQLite
writers are serialized outright). The claim records the process (``claimed_by``), so that a
series whose process died is taken over (:func:`abandoned_requeued`) and no other. Instances
that arrive while it is PROCESSING set ``rerun_requested`` instead of changing the state; the
analysis then ends in RECEIVING, so one re-analysis follows after the next quiet time.

The functions change the row in the caller's session (the caller commits); they do not check
timing — when the quiet time is over is :class:`dicom_node.series_tracking.SeriesTracker`'s
business, when to recover is :mod:`dicom_node.recovery`'s.
"""

from __future__ import annotations

from sqlalchemy import Connection, Float, bindparam, case, literal, or_, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningUpdate

from dicom_node.index import Series, SeriesState

#: States a further instance sends back to RECEIVING (the volume changed: analyze again).
_REOPENED_BY_INSTANCE = frozenset({SeriesState.DONE, SeriesState.FAILED, SeriesState.QUEUED})


def first_instance_received(series: Series, analyzed_modalities: tuple[str, ...]) -> None:
    """A new series: RECEIVING, or SKIPPED with the reason in ``error``.

    SKIPPED are the SR series this node wrote (``is_derived``) and series of a modality that
    is not analyzed; ``series.modality`` must already be set (upper case).
    """
    if series.is_derived:
        series.state, series.error = SeriesState.SKIPPED, "SR written by this node"
    elif series.modality not in analyzed_modalities:
        series.state = SeriesState.SKIPPED
        series.error = f"modality {series.modality or '(none)'} is not analyzed"
    else:
        series.state, series.error = SeriesState.RECEIVING, None


def _instance_received_statement() -> ReturningUpdate[int, SeriesState]:
    state, received_at = Series.state, bindparam("received_at", type_=Float)
    return update(Series).where(Series.series_instance_uid == bindparam("series_uid")).values(
        state=case((state.in_(_REOPENED_BY_INSTANCE),
                    literal(SeriesState.RECEIVING, state.type)), else_=state),
        # SET expressions see the row as it was: PROCESSING before this instance
        rerun_requested=or_(Series.rerun_requested, state == SeriesState.PROCESSING),
        last_received_at=case((Series.last_received_at < received_at, received_at),
                              else_=Series.last_received_at),
        instances_received=Series.instances_received + 1,
        original_body_part=case((Series.original_body_part == "", bindparam("body_part")),
                                else_=Series.original_body_part),
    ).returning(Series.id, Series.state)


#: Built once: composing the statement cost more than executing it.
_INSTANCE_RECEIVED = _instance_received_statement()


def instance_received(connection: Connection, series_uid: str, received_at: float,
                      body_part: str) -> tuple[int, SeriesState] | None:
    """A further instance: DONE, FAILED or QUEUED → RECEIVING; PROCESSING asks for a rerun.

    RECEIVING stays (its quiet time restarts) and SKIPPED stays. One ``UPDATE … RETURNING``
    in the caller's transaction, which also counts the instance, advances the last-received
    time and keeps the first BodyPartExamined received: it runs for every instance stored,
    and on PostgreSQL its row lock orders it against a concurrent :func:`claim`.

    Returns
    -------
    (int, SeriesState) or None
        The series' primary key and its state after the instance; None when no series has
        ``series_uid`` (the caller creates it with :func:`first_instance_received`).
    """
    row = connection.execute(_INSTANCE_RECEIVED, {"series_uid": series_uid,
                                                  "received_at": received_at,
                                                  "body_part": body_part}).first()
    return None if row is None else (int(row[0]), SeriesState(row[1]))


def quiet_time_reached(series: Series) -> None:
    """RECEIVING → QUEUED: the series is taken as complete."""
    if series.state is not SeriesState.RECEIVING:
        raise ValueError(f"series {series.id} is {series.state.value}, not RECEIVING")
    series.state = SeriesState.QUEUED


def claim(session: Session, series_pk: int, by: str | None = None) -> bool:
    """QUEUED → PROCESSING for one worker (process ``by``); False when it was not QUEUED
    (someone has it)."""
    claimed = session.execute(
        update(Series).where(Series.id == series_pk, Series.state == SeriesState.QUEUED)
        .values(state=SeriesState.PROCESSING, rerun_requested=False, claimed_by=by))
    return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]


def analysis_finished(series: Series, *, succeeded: bool) -> SeriesState:
    """PROCESSING → DONE or FAILED, or RECEIVING when instances arrived meanwhile.

    Returns
    -------
    SeriesState
        The new state; RECEIVING means: schedule its completion again.
    """
    if series.rerun_requested:
        series.state = SeriesState.RECEIVING
    else:
        series.state = SeriesState.DONE if succeeded else SeriesState.FAILED
    series.rerun_requested = False
    series.claimed_by = None
    return series.state


def reprocess_requested(session: Session, series_pk: int) -> bool:
    """Any state but PROCESSING → QUEUED, its error cleared (``bpr reprocess``).

    Returns
    -------
    bool
        False when the series is being analyzed (or is gone): nothing changed.
    """
    queued = session.execute(
        update(Series).where(Series.id == series_pk, Series.state != SeriesState.PROCESSING)
        .values(state=SeriesState.QUEUED, error=None))
    return bool(queued.rowcount == 1)  # type: ignore[attr-defined]


def abandoned_requeued(series: Series) -> None:
    """PROCESSING by a process that is gone → QUEUED: another process analyzes it."""
    if series.state is not SeriesState.PROCESSING:
        raise ValueError(f"series {series.id} is {series.state.value}, not PROCESSING")
    series.state, series.claimed_by = SeriesState.QUEUED, None
