"""A small synthetic index of patients/studies/series for query tests.

Each :class:`Spec` is one study of one patient with its series; :func:`part10` makes a tiny
(4x4) image of it as a Part 10 file and :func:`populate` ingests every instance of a list of
specs into an index and a file store. UIDs are derived from the spec's label (``S1`` →
``ROOT.1``), so tests name studies, series and instances by label.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydicom.uid import CTImageStorage, MRImageStorage

from dicom_node.headers import read_header
from dicom_node.index import Index
from dicom_node.ingest import ingest
from dicom_node.storage import FileStore
from tests.dicom_factory import ct_instance, part10_bytes

ROOT = "1.2.826.0.1.3680043.8.498.4242"


@dataclass(frozen=True)
class Spec:
    """One synthetic study: patient, study attributes and its series."""

    label: str
    patient_name: str
    patient_id: str
    study_date: str
    accession: str = ""
    description: str = ""
    study_time: str = "120000"
    #: (modality, series number, instances, body part) per series
    series: tuple[tuple[str, int, int, str], ...] = (("CT", 1, 1, "CHEST"),)
    charset: str = ""


def study_uid(label: str) -> str:
    """The Study Instance UID of the spec labelled ``label``."""
    return f"{ROOT}.{label[1:]}"


def series_uid(label: str, number: int) -> str:
    """The Series Instance UID of series ``number`` of that study."""
    return f"{study_uid(label)}.{number}"


def sop_uid(label: str, number: int, instance: int) -> str:
    """The SOP Instance UID of instance ``instance`` of that series."""
    return f"{series_uid(label, number)}.{instance}"


def part10(spec: Spec, modality: str, number: int, instance: int, body_part: str) -> bytes:
    """A tiny (4x4) image as a Part 10 file."""
    return part10_bytes(ct_instance(
        sop_class=MRImageStorage if modality == "MR" else CTImageStorage,
        sop_uid=sop_uid(spec.label, number, instance), study_uid=study_uid(spec.label),
        series_uid=series_uid(spec.label, number), modality=modality,
        patient_name=spec.patient_name, patient_id=spec.patient_id,
        study_date=spec.study_date, series_number=number, instance_number=instance,
        body_part=body_part or None, charset=spec.charset or None,
        PatientBirthDate="19700101", PatientSex="O", StudyTime=spec.study_time,
        AccessionNumber=spec.accession, StudyID=spec.label, StudyDescription=spec.description,
        SeriesDescription=f"{spec.label} {modality}"))


def part10_files(spec: Spec) -> Iterator[bytes]:
    """Every instance of ``spec`` as a Part 10 file, series by series, in instance order."""
    for modality, number, count, body_part in spec.series:
        for instance in range(1, count + 1):
            yield part10(spec, modality, number, instance, body_part)


def populate(index: Index, store: FileStore, specs: Iterable[Spec], *,
             start: float | None = None) -> None:
    """Ingest every instance of ``specs`` as sent by ``MODALITY`` (only CT is analyzed).

    With ``start`` the receive times are ``start + 1``, ``start + 2``, ... (a fixed order, the
    same on every back end); without it they are the clock's.
    """
    files = (data for spec in specs for data in part10_files(spec))
    for n, data in enumerate(files, start=1):
        ingest(index, store, data, read_header(data), source_ae="MODALITY",
               analyzed_modalities=("CT",), now=None if start is None else start + n)
