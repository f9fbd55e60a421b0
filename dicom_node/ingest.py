"""Store one instance: validate its identifiers, write its file, record it in the index.

Used for everything the node keeps — instances peers send and the SRs it writes — so both are
stored, indexed and retrievable the same way. The order is file first, index second: an index
row always points at a complete fsynced file; a crash between the two leaves an orphan file
that start-up reports, never an index row without its file. Duplicates (same SOP Instance UID)
are acknowledged without writing anything.
"""

from __future__ import annotations

import io
import logging
import re
import time
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicom_node.index import Index, Instance, Series, SeriesState, Study
from dicom_node.storage import FileStore
from model.api import READ_ERRORS, disguised_sequence

log = logging.getLogger(__name__)

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

#: Every attribute the index reads; :func:`read_header` decodes them all up front, so that
#: nothing can fail to decode after the file is written.
INDEXED_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality",
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName", "SeriesNumber",
    "SeriesDescription", "SeriesDate", "BodyPartExamined", "InstanceNumber",
)
#: Largest integer the index stores (IS is a 32-bit signed value in DICOM).
_MAX_INT = 2**31 - 1


class BadInstanceError(ValueError):
    """The instance cannot be stored as it is (answered with a 0xC000-range or 0xA900 status)."""

    def __init__(self, message: str, status: int = 0xC000) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` did."""

    series_pk: int
    instance_pk: int
    duplicate: bool
    #: The series state after this instance (RECEIVING means: (re)schedule its completion).
    series_state: SeriesState
    received_at: float


def is_valid_uid(value: object) -> bool:
    """True for a syntactically valid UID of at most 64 characters."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.match(value))


def short_uid(uid: str) -> str:
    """The last 8 characters of a UID, for logs (UIDs can be PHI-adjacent; keep logs terse)."""
    return "…" + uid[-8:]


def read_header(data: bytes) -> Dataset:
    """Decode a Part 10 file's header (no pixel data); ``BadInstanceError`` if it cannot."""
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, force=False)
        ds.ensure_file_meta()
        disguised = disguised_sequence(ds, INDEXED_KEYWORDS)
        if disguised is not None:
            raise BadInstanceError(f"{disguised} is a sequence")
        _ = ds.file_meta.get("MediaStorageSOPClassUID")
        for keyword in INDEXED_KEYWORDS:
            _ = ds.get(keyword)  # decoded once here; later reads use pydicom's cache
    except BadInstanceError:
        raise
    except READ_ERRORS as exc:
        raise BadInstanceError(f"cannot decode the dataset: {type(exc).__name__}") from exc
    return ds


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
        ``data`` decoded (:func:`read_header`).
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
    BadInstanceError
        Identifiers missing or invalid; nothing is written.
    OutOfSpaceError, OSError
        The file could not be written; nothing is indexed.
    """
    ids = _identifiers(header)
    received_at = time.time() if now is None else now
    with index.session() as session:
        existing = session.scalars(
            select(Instance).where(Instance.sop_instance_uid == ids["SOPInstanceUID"])).first()
        if existing is not None:
            series = existing.series
            return IngestResult(series.id, existing.id, True, series.state, received_at)
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
        with index.session() as session:
            existing = session.scalars(select(Instance).where(
                Instance.sop_instance_uid == ids["SOPInstanceUID"])).one()
            series = existing.series
            return IngestResult(series.id, existing.id, True, series.state, received_at)
    except BaseException:
        if written:
            store.delete(relative)
        raise


def _identifiers(ds: Dataset) -> dict[str, str]:
    ids: dict[str, str] = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        try:
            value = str(ds.get(keyword, "") or "").strip("\0 ")
        except READ_ERRORS:
            value = ""
        if not is_valid_uid(value):
            raise BadInstanceError(f"{keyword} is missing or not a valid UID")
        ids[keyword] = value
    try:
        meta_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    except READ_ERRORS:
        meta_class = ""
    if meta_class and meta_class != ids["SOPClassUID"]:
        raise BadInstanceError("SOP Class UID differs from the file meta", status=0xA900)
    return ids


def text(ds: Dataset, keyword: str, max_length: int) -> str:
    """A header value as text, cut to the index column; "" when absent or undecodable."""
    try:
        value = ds.get(keyword)
        result = "" if value is None else str(value)
    except READ_ERRORS:
        return ""
    return result.replace("\0", "").strip()[:max_length]


def integer(ds: Dataset, keyword: str) -> int | None:
    """A header IS/US value as int; None when absent or undecodable."""
    try:
        value = ds.get(keyword)
        number = None if value is None or value == "" else int(value)
    except READ_ERRORS:
        return None
    except ArithmeticError:
        return None
    return number if number is None or abs(number) <= _MAX_INT else None


def _record(index: Index, ds: Dataset, ids: dict[str, str], relative: str, size: int,
            source_ae: str, analyzed_modalities: tuple[str, ...], derived_from: int | None,
            received_at: float) -> IngestResult:
    for attempt in range(2):
        try:
            with index.session() as session:
                series = _series(session, ds, ids, analyzed_modalities, derived_from,
                                 received_at)
                instance = Instance(
                    sop_instance_uid=ids["SOPInstanceUID"], sop_class_uid=ids["SOPClassUID"],
                    series_pk=series.id, instance_number=integer(ds, "InstanceNumber"),
                    transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", ""))[:64],
                    path=relative, size_bytes=size, received_at=received_at,
                    source_ae=source_ae[:16])
                session.add(instance)
                session.flush()
                return IngestResult(series.id, instance.id, False, series.state, received_at)
        except IntegrityError:
            # Study or series row created by a concurrent association: retry finds it.
            if attempt == 1 or _instance_exists(index, ids["SOPInstanceUID"]):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _instance_exists(index: Index, sop_uid: str) -> bool:
    with index.session() as session:
        found = session.scalars(select(Instance.id).where(Instance.sop_instance_uid == sop_uid))
        return found.first() is not None


def _series(session: Session, ds: Dataset, ids: dict[str, str],
            analyzed_modalities: tuple[str, ...], derived_from: int | None,
            received_at: float) -> Series:
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
    series = session.scalars(
        select(Series).where(Series.series_instance_uid == ids["SeriesInstanceUID"])
        .with_for_update()).first()
    if series is None:
        modality = text(ds, "Modality", 16).upper()
        state, reason = SeriesState.RECEIVING, None
        if derived_from is not None:
            state, reason = SeriesState.SKIPPED, "SR written by this node"
        elif modality not in analyzed_modalities:
            state = SeriesState.SKIPPED
            reason = f"modality {modality or '(none)'} is not analyzed"
        series = Series(
            series_instance_uid=ids["SeriesInstanceUID"], study_pk=study.id, modality=modality,
            series_number=integer(ds, "SeriesNumber"),
            series_description=text(ds, "SeriesDescription", 64),
            series_date=text(ds, "SeriesDate", 8),
            original_body_part=text(ds, "BodyPartExamined", 16),
            is_derived=derived_from is not None, source_series_pk=derived_from, state=state,
            error=reason, first_received_at=received_at, last_received_at=received_at,
            instances_received=0, rerun_requested=False, analysis_count=0,
            sanity_flags="")
        session.add(series)
    else:
        series.last_received_at = max(series.last_received_at, received_at)
        if not series.original_body_part:
            series.original_body_part = text(ds, "BodyPartExamined", 16)
        if series.state in (SeriesState.DONE, SeriesState.FAILED, SeriesState.QUEUED):
            # New slices change the volume: analyze once more after the next quiet time.
            series.state = SeriesState.RECEIVING
        elif series.state is SeriesState.PROCESSING:
            series.rerun_requested = True
    series.instances_received += 1
    session.flush()
    return series
