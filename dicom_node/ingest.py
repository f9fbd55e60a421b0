"""Store one instance: validate its identifiers, write its file, record it in the index.

Used for everything the node keeps — instances peers send and the SRs it writes — so both are
stored, indexed and retrievable the same way. The order is file first, index second: an index
row always points at a complete fsynced file; a crash between the two leaves an orphan file
that start-up recovery indexes where it lies (:mod:`dicom_node.recovery`), never an index row
without its file. Duplicates (same SOP Instance UID) are acknowledged without writing anything.

Headers are decoded and their UIDs checked by :mod:`dicom_node.headers`; the state a series
enters with a new instance is decided by :mod:`dicom_node.series_state`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydicom.dataset import Dataset
from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from dicom_node.headers import identifying_uids, integer, text
from dicom_node.index import Index, Instance, Series, SeriesState, Study
from dicom_node.series_state import first_instance_received, instance_received
from dicom_node.storage import FileStore


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` did."""

    series_pk: int
    instance_pk: int
    duplicate: bool
    #: The series state after this instance (RECEIVING means: (re)schedule its completion).
    series_state: SeriesState
    received_at: float


def ingest(index: Index, store: FileStore, data: bytes, header: Dataset, *, source_ae: str,
           analyzed_modalities: tuple[str, ...], derived_from: int | None = None,
           now: float | None = None, stored_at: str | None = None) -> IngestResult:
    """Store and index one instance.

    Parameters
    ----------
    index, store
        The index and the file store.
    data : bytes
        The complete Part 10 file (preamble, file meta, dataset) as it will be written.
    header : Dataset
        ``data`` decoded (:func:`dicom_node.headers.read_header`).
    source_ae : str
        Calling AE title of the sender, "" for instances the node wrote.
    analyzed_modalities : tuple of str
        Series of other modalities are marked SKIPPED with the reason.
    derived_from : int, optional
        For an SR the node wrote: the primary key of the series it reports on.
    stored_at : str, optional
        The store already holds ``data`` at this relative path (a file that lost its index
        row in a crash): it is indexed where it lies, never written again nor deleted here.

    Raises
    ------
    dicom_node.headers.BadInstanceError
        Identifiers missing or invalid; nothing is written.
    OutOfSpaceError, OSError
        The file could not be written; nothing is indexed.
    """
    ids = identifying_uids(header)
    received_at = time.time() if now is None else now
    duplicate = _duplicate(index, ids["SOPInstanceUID"], received_at)
    if duplicate is not None:
        return duplicate
    written = stored_at is None
    relative = store.new_relative_path() if stored_at is None else stored_at
    if written:
        store.write(relative, data)
    try:
        return _record(index, header, ids, relative, len(data), source_ae, analyzed_modalities,
                       derived_from, received_at)
    except IntegrityError:
        # Another association stored the same SOP Instance UID meanwhile: ours is the duplicate.
        if written:
            store.delete(relative)
        duplicate = _duplicate(index, ids["SOPInstanceUID"], received_at)
        if duplicate is None:
            raise
        return duplicate
    except SQLAlchemyError:
        # The database went away, maybe during the COMMIT, whose outcome is then unknown: the
        # file stays (a committed row must never point at a deleted file), the sender is told
        # to resend, and start-up recovery indexes the file or removes it as a duplicate.
        raise
    except BaseException:
        if written:
            store.delete(relative)
        raise


# Built once: composing a statement costs more than executing it, for every instance.
_FIND_INSTANCE = (select(Instance.id, Instance.series_pk, Series.state)
                  .join(Series, Series.id == Instance.series_pk)
                  .where(Instance.sop_instance_uid == bindparam("sop_uid")))
_INSERT_INSTANCE = insert(Instance).returning(Instance.id)


def _duplicate(index: Index, sop_uid: str, received_at: float) -> IngestResult | None:
    """The result for an instance the index already holds; None for a new one."""
    # Core, not the ORM: this runs for every instance received and nearly always finds nothing.
    with index.engine.connect() as connection:
        found = connection.execute(_FIND_INSTANCE, {"sop_uid": sop_uid}).first()
    if found is None:
        return None
    instance_pk, series_pk, state = found
    return IngestResult(series_pk, instance_pk, True, SeriesState(state), received_at)


def _record(index: Index, ds: Dataset, ids: dict[str, str], relative: str, size: int,
            source_ae: str, analyzed_modalities: tuple[str, ...], derived_from: int | None,
            received_at: float) -> IngestResult:
    """Index the instance in one transaction: its series row updated (or created) and its row.

    An instance of a known series costs one UPDATE and one INSERT (SQLAlchemy Core: the ORM's
    unit of work was half of the node's time per instance); the first instance of a series
    creates the study and series rows through the ORM.
    """
    row = {"sop_instance_uid": ids["SOPInstanceUID"], "sop_class_uid": ids["SOPClassUID"],
           "instance_number": integer(ds, "InstanceNumber"),
           "transfer_syntax_uid": str(ds.file_meta.get("TransferSyntaxUID", ""))[:64],
           "path": relative, "size_bytes": size, "received_at": received_at,
           "source_ae": source_ae[:16]}
    for attempt in range(2):
        try:
            with index.engine.begin() as connection:
                found = instance_received(connection, ids["SeriesInstanceUID"], received_at,
                                          text(ds, "BodyPartExamined", 16))
                if found is None:
                    with Session(bind=connection) as session:
                        series = _new_series(session, ds, ids, analyzed_modalities,
                                             derived_from, received_at)
                        found = series.id, series.state
                series_pk, state = found
                instance_pk = int(connection.execute(
                    _INSERT_INSTANCE, {"series_pk": series_pk, **row}).scalar_one())
            return IngestResult(series_pk, instance_pk, False, state, received_at)
        except IntegrityError:
            # Study or series row created by a concurrent association: retry finds it.
            if attempt == 1 or _duplicate(index, ids["SOPInstanceUID"], received_at):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _new_series(session: Session, ds: Dataset, ids: dict[str, str],
                analyzed_modalities: tuple[str, ...], derived_from: int | None,
                received_at: float) -> Series:
    """The series row of a first instance (and its study's row, unless the study is known)."""
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == ids["StudyInstanceUID"])).first()
    if study is None:
        study = Study(
            study_instance_uid=ids["StudyInstanceUID"], patient_id=text(ds, "PatientID", 64),
            patient_name=text(ds, "PatientName", 324),
            patient_birth_date=text(ds, "PatientBirthDate", 8),
            patient_sex=text(ds, "PatientSex", 16), study_date=text(ds, "StudyDate", 8),
            study_time=text(ds, "StudyTime", 16), accession_number=text(ds, "AccessionNumber", 16),
            study_id=text(ds, "StudyID", 16), study_description=text(ds, "StudyDescription", 64),
            referring_physician_name=text(ds, "ReferringPhysicianName", 324))
        session.add(study)
        session.flush()
    series = Series(
        series_instance_uid=ids["SeriesInstanceUID"], study_pk=study.id,
        modality=text(ds, "Modality", 16).upper(), series_number=integer(ds, "SeriesNumber"),
        series_description=text(ds, "SeriesDescription", 64),
        series_date=text(ds, "SeriesDate", 8),
        original_body_part=text(ds, "BodyPartExamined", 16),
        is_derived=derived_from is not None, source_series_pk=derived_from,
        first_received_at=received_at, last_received_at=received_at,
        instances_received=1, rerun_requested=False, analysis_count=0, sanity_flags="")
    first_instance_received(series, analyzed_modalities)
    session.add(series)
    session.flush()
    return series
