"""The index on PostgreSQL: ingest, C-FIND/retrieve matching and ``bpr index`` rows.

A throwaway cluster is made per module with ``initdb`` and ``pg_ctl`` (Unix socket only, in a
temporary folder, trust authentication). The same synthetic instances are ingested into it and
into a SQLite index, and every query must answer the same on both back ends: the matching
module compiles differently per dialect (``GLOB`` on SQLite, ``LIKE ... ESCAPE`` on PostgreSQL),
so agreement is the portability check. Skipped (failed when ``CI`` is set) when PostgreSQL or
the ``psycopg`` driver is not installed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.engine import make_url

from dicom_node.cli import index_rows
from dicom_node.config import config_from_dict
from dicom_node.headers import read_header
from dicom_node.index import Index, Instance, Series, SeriesState, Study
from dicom_node.ingest import ingest
from dicom_node.query import QueryRetrieveService
from dicom_node.query_identifier import Level, parse_identifier
from dicom_node.query_sql import retrieve_statement
from dicom_node.server import Node
from dicom_node.statuses import PENDING
from dicom_node.storage import FileStore
from tests import synthetic_index
from tests.node.qr_node import identifier, stub_event
from tests.node_harness import free_port
from tests.postgres_cluster import fresh_database, postgres_cluster
from tests.synthetic_index import Spec, part10, part10_files, series_uid, study_uid

NODE_AE = "BPR_NODE"


# -- the cluster -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The URL of a fresh PostgreSQL cluster's ``postgres`` database (superuser ``bpr``)."""
    with postgres_cluster() as url:
        yield url


@pytest.fixture
def pg_url(cluster: str) -> Iterator[str]:
    """A new, empty database of the cluster for one test."""
    with fresh_database(cluster) as url:
        yield url


# -- synthetic instances ---------------------------------------------------------------------


SPECS = (
    Spec("S1", "Doe^John", "PID001", "20200101", "ACC_1", study_time="101530",
         series=(("CT", 1, 3, "CHEST"), ("MR", 2, 1, ""))),
    Spec("S2", "Doe^John", "PID001", "20201231", "ACC%2"),
    Spec("S3", "Smith_Jones^Ann", "PID_2", "19991231", "ACCX1"),
    Spec("S4", "Smith-Jones^Bob", "PIDX2", "20210615", "accy1"),
    Spec("S5", "100%^Pure", "PID%4", "20220202", ""),
    Spec("S6", "Jörg^Müller", "PID006", "20230303", "ÄCC6", charset="ISO_IR 192"),
)


def populate(index: Index, store: FileStore) -> None:
    """Ingest every spec (fixed receive times: the same order on both back ends)."""
    synthetic_index.populate(index, store, SPECS, start=1_700_000_000.0)
    with index.session() as session:
        # As if the node had analyzed S2's series and found another body part.
        session.execute(update(Series).where(Series.series_instance_uid == series_uid("S2", 1))
                        .values(corrected_body_part="ABDOMEN", state=SeriesState.DONE,
                                corrected_snomed_code="818981001", analysis_seconds=1.234,
                                model_version="test"))


@dataclass
class Backends:
    """The same data in a PostgreSQL and a SQLite index."""

    postgres: Index
    sqlite: Index
    pg_store: FileStore
    sqlite_store: FileStore


@pytest.fixture(scope="module")
def backends(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    base = tmp_path_factory.mktemp("pg-compare")
    admin = create_engine(cluster, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text('CREATE DATABASE "compare"'))
    admin.dispose()
    pg = Index(make_url(cluster).set(database="compare").render_as_string(hide_password=False))
    lite = Index(f"sqlite:///{base / 'index.sqlite'}")
    found = Backends(pg, lite, FileStore(base / "pg-storage"), FileStore(base / "sqlite-storage"))
    populate(pg, found.pg_store)
    populate(lite, found.sqlite_store)
    try:
        yield found
    finally:
        pg.close()
        lite.close()


# -- ingest ----------------------------------------------------------------------------------


def test_ingest_on_postgres(pg_url: str, tmp_path: Path) -> None:
    index, store = Index(pg_url), FileStore(tmp_path / "storage")
    try:
        spec = SPECS[0]
        results = [ingest(index, store, data, read_header(data), source_ae="CT_1",
                          analyzed_modalities=("CT",)) for data in part10_files(spec)]
        assert [r.duplicate for r in results] == [False] * 4
        assert [r.series_state for r in results] == [SeriesState.RECEIVING] * 3 + \
            [SeriesState.SKIPPED]
        again = part10(spec, "CT", 1, 2, "CHEST")
        duplicate = ingest(index, store, again, read_header(again), source_ae="CT_1",
                           analyzed_modalities=("CT",))
        assert duplicate.duplicate and duplicate.instance_pk == results[1].instance_pk
        with index.session() as session:
            assert session.scalar(select(func.count(Study.id))) == 1
            ct = session.scalars(select(Series).where(Series.modality == "CT")).one()
            assert ct.instances_received == 3 and ct.original_body_part == "CHEST"
            mr = session.scalars(select(Series).where(Series.modality == "MR")).one()
            assert mr.error == "modality MR is not analyzed"
            paths = session.scalars(select(Instance.path)).all()
        assert len(paths) == 4
        assert all(store.absolute(p).is_file() for p in paths)
        assert len([p for p in store.root.rglob("*") if p.is_file()]) == 4
    finally:
        index.close()


def test_concurrent_ingest_on_postgres(pg_url: str, tmp_path: Path) -> None:
    """Receive threads racing to create one study and series, with duplicates among them."""
    index, store = Index(pg_url), FileStore(tmp_path / "storage")
    spec = Spec("S9", "Race^Condition", "PID009", "20240101", "ACC9",
                series=(("CT", 1, 12, "CHEST"),))
    # Every instance twice: the second copy of each must come back as a duplicate.
    payloads = list(part10_files(spec)) * 2
    barrier = threading.Barrier(8)

    def worker(mine: list[bytes]) -> list[bool]:
        barrier.wait()  # all threads start together: the study and series rows race
        return [ingest(index, store, data, read_header(data), source_ae="CT_1",
                       analyzed_modalities=("CT",)).duplicate for data in mine]

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            # result() re-raises a worker's exception here.
            futures = [pool.submit(worker, payloads[i::8]) for i in range(8)]
            outcomes = [duplicate for future in futures for duplicate in future.result(60)]
        assert sorted(outcomes) == [False] * 12 + [True] * 12
        with index.session() as session:
            assert session.scalar(select(func.count(Study.id))) == 1
            series = session.scalars(select(Series)).one()
            assert series.instances_received == 12
            paths = set(session.scalars(select(Instance.path)))
        assert len(paths) == 12
        on_disk = {str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file()}
        assert on_disk == paths, "files without index rows (or the reverse) were left behind"
    finally:
        index.close()


# -- C-FIND and retrieve: PostgreSQL answers as SQLite does ----------------------------------


def find_all(index: Index, store: FileStore, query: Dataset, model: str) -> list[dict[str, str]]:
    """The C-FIND responses of the node's handler as plain dictionaries (failures raise)."""
    config = config_from_dict({"peers": [{"ae_title": "QR_SCU"}]}, store.root)
    service = QueryRetrieveService(index, store, config)
    responses = []
    for status, found in service.handle_find(stub_event(query, model)):
        assert status == PENDING, f"C-FIND failed: {status}"
        assert found is not None
        responses.append({elem.keyword: str(elem.value) for elem in found})
    return responses


STUDY = StudyRootQueryRetrieveInformationModelFind
PATIENT = PatientRootQueryRetrieveInformationModelFind
STUDY_KEYS = {"StudyInstanceUID": "", "PatientName": "", "AccessionNumber": "",
              "StudyDate": "", "StudyTime": ""}

#: (identifier, model, expected number of matches): names with ``_``, ``%`` and ``-``, case,
#: non-ASCII, ranges, UID lists, counts, the corrected body part, and every level.
QUERIES: list[tuple[str, Dataset, str, int]] = [
    ("all studies", identifier("STUDY", **STUDY_KEYS), STUDY, 6),
    ("PN wildcard ignores case", identifier("STUDY", **{**STUDY_KEYS, "PatientName": "doe*"}),
     STUDY, 2),
    ("PN underscore is literal",
     identifier("STUDY", **{**STUDY_KEYS, "PatientName": "smith_jones*"}), STUDY, 1),
    ("PN percent is literal", identifier("STUDY", **{**STUDY_KEYS, "PatientName": "100%*"}),
     STUDY, 1),
    ("PN question mark", identifier("STUDY", **{**STUDY_KEYS, "PatientName": "Smith?Jones*"}),
     STUDY, 2),
    ("PN non-ASCII", identifier("STUDY", **{**STUDY_KEYS, "PatientName": "Jörg^Müller",
                                             "SpecificCharacterSet": "ISO_IR 192"}), STUDY, 1),
    ("PN non-ASCII ignores case",
     identifier("STUDY", **{**STUDY_KEYS, "PatientName": "JÖRG^MÜLLER",
                            "SpecificCharacterSet": "ISO_IR 192"}), STUDY, 1),
    ("LO wildcard keeps case", identifier("STUDY", **{**STUDY_KEYS, "AccessionNumber": "acc*"}),
     STUDY, 1),
    ("SH underscore is literal",
     identifier("STUDY", **{**STUDY_KEYS, "AccessionNumber": "ACC_1"}), STUDY, 1),
    ("SH wildcard ?", identifier("STUDY", **{**STUDY_KEYS, "AccessionNumber": "ACC?1"}),
     STUDY, 2),
    ("SH percent is literal",
     identifier("STUDY", **{**STUDY_KEYS, "AccessionNumber": "ACC%*"}), STUDY, 1),
    ("SH non-ASCII wildcard",
     identifier("STUDY", **{**STUDY_KEYS, "AccessionNumber": "ÄCC*",
                            "SpecificCharacterSet": "ISO_IR 192"}), STUDY, 1),
    ("date range", identifier("STUDY", **{**STUDY_KEYS, "StudyDate": "20200101-20211231"}),
     STUDY, 3),
    ("open date range", identifier("STUDY", **{**STUDY_KEYS, "StudyDate": "-19991231"}),
     STUDY, 1),
    ("time range", identifier("STUDY", **{**STUDY_KEYS, "StudyTime": "1015-1100"}), STUDY, 1),
    ("UID list", identifier("STUDY", **{**STUDY_KEYS, "StudyInstanceUID":
                                        f"{study_uid('S1')}\\{study_uid('S3')}"}), STUDY, 2),
    ("modalities and counts", identifier(
        "STUDY", StudyInstanceUID="", ModalitiesInStudy="MR", NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances=""), STUDY, 1),
    ("series: corrected body part", identifier(
        "SERIES", StudyInstanceUID="", SeriesInstanceUID="", BodyPartExamined="ABDOMEN",
        Modality="", NumberOfSeriesRelatedInstances=""), STUDY, 1),
    ("series: received body part", identifier(
        "SERIES", SeriesInstanceUID="", BodyPartExamined="CHEST", Modality="CT"), STUDY, 5),
    ("series: number", identifier("SERIES", SeriesInstanceUID="", SeriesNumber="2"), STUDY, 1),
    ("image level", identifier("IMAGE", StudyInstanceUID=study_uid("S1"),
                               SeriesInstanceUID=series_uid("S1", 1), SOPInstanceUID="",
                               InstanceNumber=""), STUDY, 3),
    ("patients", identifier("PATIENT", PatientID="PID*", PatientName="",
                            NumberOfPatientRelatedStudies=""), PATIENT, 5),
    ("patient ID underscore is literal", identifier("PATIENT", PatientID="PID_*"), PATIENT, 1),
]


@pytest.mark.parametrize(("query", "model", "expected"), [q[1:] for q in QUERIES],
                         ids=[q[0] for q in QUERIES])
def test_find_answers_as_on_sqlite(backends: Backends, query: Dataset, model: str,
                                   expected: int) -> None:
    on_postgres = find_all(backends.postgres, backends.pg_store, query, model)
    on_sqlite = find_all(backends.sqlite, backends.sqlite_store, query, model)
    assert len(on_postgres) == expected
    assert on_postgres == on_sqlite


@pytest.mark.parametrize("query", [
    identifier("STUDY", StudyInstanceUID=study_uid("S1")),
    identifier("SERIES", StudyInstanceUID=study_uid("S1"), SeriesInstanceUID=series_uid("S1", 1)),
    identifier("STUDY", StudyInstanceUID=f"{study_uid('S2')}\\{study_uid('S3')}"),
], ids=["study", "series", "uid list"])
def test_retrieve_plan_as_on_sqlite(backends: Backends, query: Dataset) -> None:
    request = parse_identifier(query, Level.STUDY)

    def plan(index: Index) -> list[tuple[str, str, str]]:
        with index.session() as session:
            return [(uid, sop_class, syntax) for _path, uid, sop_class, syntax
                    in session.execute(retrieve_statement(request)).all()]

    on_postgres = plan(backends.postgres)
    assert on_postgres and on_postgres == plan(backends.sqlite)


def test_index_rows_on_postgres(backends: Backends) -> None:
    for filters in ({}, {"term": "abdomen"}, {"state": "SKIPPED"}, {"state": "RECEIVING"},
                    {"since": "20200101", "until": "20211231"}, {"derived": True}):
        on_postgres = index_rows(backends.postgres, **filters)
        assert on_postgres == index_rows(backends.sqlite, **filters), filters
    rows = index_rows(backends.postgres)
    assert len(rows) == 7
    done = index_rows(backends.postgres, term="ABDOMEN")
    assert [(r["series_instance_uid"], r["state"], r["analysis_seconds"]) for r in done] == \
        [(series_uid("S2", 1), "DONE", 1.23)]
    assert [r["modality"] for r in index_rows(backends.postgres, state="SKIPPED")] == ["MR"]


# -- the whole node on PostgreSQL ------------------------------------------------------------


def test_node_stores_and_finds_on_postgres(pg_url: str, tmp_path: Path) -> None:
    raw = {
        "network": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": free_port()},
        "storage": {"root": "storage", "min_free_bytes": 0},
        "database": {"url": pg_url},
        "series": {"quiet_seconds": 3600},
        "web": {"port": 0},
        "peers": [{"ae_title": "SCU"}],
    }
    node = Node(config_from_dict(raw, tmp_path))
    node.start()
    try:
        ae = AE("SCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        for context in (CTImageStorage, StudyRootQueryRetrieveInformationModelFind,
                        StudyRootQueryRetrieveInformationModelMove):
            ae.add_requested_context(context)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert assoc.is_established
        try:
            data = part10(SPECS[3], "CT", 1, 1, "CHEST")
            sent = read_header(data)
            assert int(assoc.send_c_store(sent).Status) == 0x0000
            query = identifier("STUDY", PatientName="smith-jones*", StudyInstanceUID="")
            found = [ds for status, ds in assoc.send_c_find(query, STUDY)
                     if status.Status == PENDING]
        finally:
            assoc.release()
        assert [str(ds.StudyInstanceUID) for ds in found if ds is not None] == [study_uid("S4")]
        assert [r["series_instance_uid"] for r in index_rows(node.index)] == \
            [series_uid("S4", 1)]
    finally:
        node.stop()
