"""The sidecar index: SQLAlchemy models of what the node holds and what it found.

Seven tables, one row per thing a user asks about:

- :class:`Study` — patient and study attributes (the C-FIND patient and study levels);
- :class:`Series` — series attributes, the original and corrected BodyPartExamined, the
  analysis job state and its results (:class:`Region` rows hold the slice ranges);
- :class:`Instance` — one stored file: its SOP UIDs and its server-chosen relative path;
- :class:`ForwardJob` — one SR to send to one peer, with its retry state;
- :class:`ModelVersion` — one model the node has used or made (``bpr adapt``), with its guard
  metrics and whether it is the active one;
- :class:`NodeProcess` — one running node process (several may share the index), with its
  heartbeat, so that the work of a process that died is taken over;
- :class:`BackfillJob` — one series of a peer's archive that ``bpr backfill`` fetches.

Times are UTC seconds since the epoch (floats), so that ordering and arithmetic work the same on
SQLite and PostgreSQL. The database URL comes from ``database.url``; the SQLite default uses
WAL and a busy timeout so that receive threads, workers and the CLI can share it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)


class SeriesState(enum.StrEnum):
    """Where a series is in its life (the analysis job state)."""

    RECEIVING = "RECEIVING"  # instances arriving; analysis due after the quiet time
    QUEUED = "QUEUED"  # complete, waiting for a worker
    PROCESSING = "PROCESSING"  # a worker is analyzing it
    DONE = "DONE"  # analyzed; results and SR written
    FAILED = "FAILED"  # analysis failed; ``error`` says why
    SKIPPED = "SKIPPED"  # stored and indexed, not analyzed (``error`` says why: not CT, our SR)


class ForwardState(enum.StrEnum):
    """State of one SR sent to one peer."""

    PENDING = "PENDING"  # due at ``next_attempt_at``
    DONE = "DONE"  # the peer answered success (or warning)
    FAILED = "FAILED"  # permanent rejection, or ``forwarding.max_attempts`` used up


class Base(DeclarativeBase):
    """Declarative base of the index models."""


class Study(Base):
    """One study, with the patient attributes it was received with."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_id: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician_name: Mapped[str] = mapped_column(String(324), default="")

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    """One series: attributes, job state, and what the analysis found."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    series_date: Mapped[str] = mapped_column(String(8), default="")
    #: BodyPartExamined as received (first instance that carried one).
    original_body_part: Mapped[str] = mapped_column(String(16), default="")
    #: True for the SR series this node wrote (never analyzed).
    is_derived: Mapped[bool] = mapped_column(Boolean, default=False)
    #: For a derived SR series: the series it reports on.
    source_series_pk: Mapped[int | None] = mapped_column(ForeignKey("series.id"), nullable=True)

    state: Mapped[SeriesState] = mapped_column(Enum(SeriesState, native_enum=False, length=16),
                                               default=SeriesState.RECEIVING, index=True)
    first_received_at: Mapped[float] = mapped_column(Float)
    last_received_at: Mapped[float] = mapped_column(Float)
    instances_received: Mapped[int] = mapped_column(Integer, default=0)
    #: Set when instances arrive while the series is being analyzed: one re-analysis follows.
    rerun_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Completed analyses so far (1 after the first; +1 per re-analysis).
    analysis_count: Mapped[int] = mapped_column(Integer, default=0)
    #: The node process analyzing it (:class:`NodeProcess` id) while PROCESSING.
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)

    corrected_body_part: Mapped[str | None] = mapped_column(String(16), nullable=True)
    corrected_snomed_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    corrected_snomed_meaning: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: Sanity flags that fired (comma-separated anomaly codes), empty when none.
    sanity_flags: Mapped[str] = mapped_column(String(256), default="")
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    analyzed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: Seconds: series completion (quiet time over) → analysis start; analysis; SR writing.
    wait_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    analysis_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    sr_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: The model's full result (strict JSON, the ``document`` of :mod:`model.api`).
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Why the series failed or was skipped.
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")
    regions: Mapped[list[Region]] = relationship(back_populates="series",
                                                 cascade="all, delete-orphan")


class Region(Base):
    """Slices of one body region found in a series (thesis eq. 4.18)."""

    __tablename__ = "regions"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    first_slice: Mapped[int] = mapped_column(Integer)
    last_slice: Mapped[int] = mapped_column(Integer)
    z_min_mm: Mapped[float] = mapped_column(Float)
    z_max_mm: Mapped[float] = mapped_column(Float)

    series: Mapped[Series] = relationship(back_populates="regions")


class Instance(Base):
    """One stored DICOM file."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    #: Path relative to ``storage.root``; chosen by the server, never from a peer value.
    path: Mapped[str] = mapped_column(String(255), unique=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[float] = mapped_column(Float)
    #: Calling AE title of the sender ("" for instances the node wrote itself).
    source_ae: Mapped[str] = mapped_column(String(16), default="")

    series: Mapped[Series] = relationship(back_populates="instances")


class ForwardJob(Base):
    """One SR instance to send to one peer."""

    __tablename__ = "forward_jobs"
    __table_args__ = (UniqueConstraint("instance_pk", "destination"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_pk: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    destination: Mapped[str] = mapped_column(String(16))
    state: Mapped[ForwardState] = mapped_column(Enum(ForwardState, native_enum=False, length=16),
                                                default=ForwardState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    done_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    instance: Mapped[Instance] = relationship()


class ModelVersion(Base):
    """One model: the configured base model, or a candidate an adaptation run made."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    #: The model it was fine-tuned from (None for the base model).
    parent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    #: Weights relative to ``storage.root`` (None: the configured ``series.model_weights``
    #: or the shipped model).
    weights_path: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: Series and patients the run fine-tuned and judged on.
    n_series: Mapped[int] = mapped_column(Integer, default=0)
    n_patients: Mapped[int] = mapped_column(Integer, default=0)
    #: Guard metrics and validation of the run (strict JSON), None for the base model.
    guard_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    promoted: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text, default="")
    #: Exactly one row is active once the node has recorded its base model.
    active: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class NodeProcess(Base):
    """One running node process; rows of processes that stopped cleanly are deleted."""

    __tablename__ = "node_processes"

    #: ``host:pid:random``: unique per process, and names the host and pid for liveness.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float, index=True)


class BackfillState(enum.StrEnum):
    """State of one series ``bpr backfill`` fetches from a peer."""

    PENDING = "PENDING"  # to fetch (again at ``next_attempt_at`` after a failure)
    FETCHING = "FETCHING"  # a retrieve is under way by process ``claimed_by``
    FETCHED = "FETCHED"  # every instance the peer listed is stored; the node analyzes it
    SKIPPED = "SKIPPED"  # the node had analyzed it already
    FAILED = "FAILED"  # the peer could not deliver it; ``last_error`` says why


class BackfillJob(Base):
    """One series of a peer's archive to fetch and analyze."""

    __tablename__ = "backfill_jobs"
    __table_args__ = (UniqueConstraint("peer", "series_instance_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    peer: Mapped[str] = mapped_column(String(16), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    #: NumberOfSeriesRelatedInstances as the peer answered (None: it did not say).
    expected_instances: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[BackfillState] = mapped_column(
        Enum(BackfillState, native_enum=False, length=16), default=BackfillState.PENDING,
        index=True)
    #: Retrieve requests sent for it (1 when it was fetched once).
    fetches: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    #: While FETCHING: the fetching process (:class:`NodeProcess`); a gone one's job resumes.
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the tables created; SQLite gets WAL and a busy timeout."""
    kwargs: dict[str, Any] = {}
    database = make_url(url).database
    if url.startswith("sqlite") and database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
    else:
        # a server restart leaves dead connections in the pool: test each before use, so the
        # node recovers by itself when the database is back
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    Base.metadata.create_all(engine)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer; synchronous=FULL: a commit survives power loss,
    # which the C-STORE success status promises.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # SQLite's lower() folds ASCII only, so a person-name query "müller" (ILIKE compiles to
    # lower() LIKE lower()) missed "MÜLLER", which PostgreSQL's ILIKE finds. Python's lower()
    # folds all of Unicode; NULL stays NULL.
    dbapi_connection.create_function("lower", 1, _unicode_lower, deterministic=True)


def _unicode_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class Index:
    """Sessions on the index database."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any exception."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def close(self) -> None:
        """Release all connections."""
        self.engine.dispose()
