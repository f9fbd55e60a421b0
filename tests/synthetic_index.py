"""A small synthetic index of patients/studies/series for query tests.

Each :class:`Spec` is one study of one patient with its series; :func:`part10` makes a tiny
(4x4) image of it as a Part 10 file and :func:`populate` ingests every instance of a list of
specs into an index and a file store. UIDs are derived from the spec's label (``S1`` →
``ROOT.1``), so tests name studies, series and instances by label.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from dicom_node.headers import read_header
from dicom_node.index import Index
from dicom_node.ingest import ingest
from dicom_node.storage import FileStore

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
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid(spec.label, number, instance))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if spec.charset:
        ds.SpecificCharacterSet = spec.charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid(spec.label, number, instance)
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid(spec.label)
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.AccessionNumber = spec.accession
    ds.StudyID = spec.label
    ds.StudyDescription = spec.description
    ds.SeriesInstanceUID = series_uid(spec.label, number)
    ds.Modality = modality
    ds.SeriesNumber = number
    ds.SeriesDescription = f"{spec.label} {modality}"
    if body_part:
        ds.BodyPartExamined = body_part
    ds.InstanceNumber = instance
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(32)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


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
