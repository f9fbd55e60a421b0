"""Storing one instance: identifiers checked, file before row, duplicates idempotent."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, MRImageStorage
from sqlalchemy import select

from dicom_node.config import config_from_dict
from dicom_node.headers import BadInstanceError, is_valid_uid, read_header
from dicom_node.index import Index, Instance, Series, SeriesState, Study
from dicom_node.ingest import ingest
from dicom_node.recovery import recover_storage
from dicom_node.server import Node
from dicom_node.storage import WATERMARK_NAME, FileStore, OutOfSpaceError
from tests.dicom_factory import ct_instance, part10_bytes

SERVER_NAME = re.compile(r"^\d{4}/\d{2}/\d{2}/[0-9a-f]{32}\.dcm$")


def part10(**attributes: object) -> bytes:
    """A small CT file of one series; ``attributes`` override the defaults (None deletes)."""
    return part10_bytes(ct_instance(
        study_uid="1.2.3.4", series_uid="1.2.3.4.5", patient_name="Doe^Jane",
        study_date="20240102", body_part="ABDOMEN", size=None, **attributes))


@pytest.fixture
def node(tmp_path: Path) -> tuple[Index, FileStore]:
    return Index(f"sqlite:///{tmp_path / 'index.sqlite'}"), FileStore(tmp_path / "storage")


def store(node: tuple[Index, FileStore], data: bytes) -> int:
    index, files = node
    return ingest(index, files, data, read_header(data), source_ae="TEST",
                  analyzed_modalities=("CT",)).instance_pk


def test_instance_file_and_rows(node: tuple[Index, FileStore]) -> None:
    index, files = node
    data = part10()
    pk = store(node, data)
    with index.session() as db:
        instance = db.get_one(Instance, pk)
        assert SERVER_NAME.match(instance.path)
        assert files.absolute(instance.path).read_bytes() == data
        series = instance.series
        assert series.state is SeriesState.RECEIVING
        assert series.original_body_part == "ABDOMEN"
        assert series.instances_received == 1
        study = db.scalars(select(Study)).one()
        assert (study.patient_id, study.study_date) == ("PID-1", "20240102")


def test_duplicate_is_acknowledged_and_not_written_twice(node: tuple[Index, FileStore]) -> None:
    index, files = node
    data = part10()
    first = store(node, data)
    result = ingest(index, files, data, read_header(data), source_ae="TEST",
                    analyzed_modalities=("CT",))
    assert result.duplicate and result.instance_pk == first
    assert len(list(files.root.rglob("*.dcm"))) == 1


@pytest.mark.parametrize("uid", ["..", "../../x", "1.2.3/../../etc", "", "1." + "2" * 63,
                                 "1.02.3", "abc"])
def test_hostile_or_invalid_uids_are_refused(node: tuple[Index, FileStore], uid: str) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(BadInstanceError) as caught:
        store(node, part10(StudyInstanceUID=uid))
    assert caught.value.status == 0xC000
    assert not list(node[1].root.rglob("*.dcm"))


def test_sop_class_differing_from_file_meta_is_a900(node: tuple[Index, FileStore]) -> None:
    data = part10(SOPClassUID=MRImageStorage)
    # The file meta comes first; same-length UIDs keep every length field valid.
    data = data.replace(MRImageStorage.encode(), CTImageStorage.encode(), 1)
    with pytest.raises(BadInstanceError) as caught:
        store(node, data)
    assert caught.value.status == 0xA900


@pytest.mark.parametrize("data", [b"", b"not dicom at all", b"\0" * 128 + b"DICM" + b"\xff" * 64])
def test_garbage_is_refused(node: tuple[Index, FileStore], data: bytes) -> None:
    with pytest.raises(BadInstanceError):
        store(node, data)
    assert not list(node[1].root.rglob("*.dcm"))


def test_non_ct_series_is_stored_and_skipped_with_reason(node: tuple[Index, FileStore]) -> None:
    index, _ = node
    pk = store(node, part10(Modality="MR"))
    with index.session() as db:
        series = db.get_one(Instance, pk).series
        assert series.state is SeriesState.SKIPPED
        assert series.error == "modality MR is not analyzed"


@pytest.mark.parametrize("state, after", [
    (SeriesState.DONE, SeriesState.RECEIVING), (SeriesState.FAILED, SeriesState.RECEIVING),
    (SeriesState.QUEUED, SeriesState.RECEIVING), (SeriesState.PROCESSING,
                                                  SeriesState.PROCESSING)])
def test_late_instance_requests_one_reanalysis(node: tuple[Index, FileStore],
                                                state: SeriesState, after: SeriesState) -> None:
    index, _ = node
    pk = store(node, part10())
    with index.session() as db:
        db.get_one(Instance, pk).series.state = state
    store(node, part10())
    with index.session() as db:
        series = db.scalars(select(Series)).one()
        assert series.state is after
        assert series.rerun_requested is (state is SeriesState.PROCESSING)
        assert series.instances_received == 2


def test_full_storage_is_out_of_space_and_indexes_nothing(tmp_path: Path) -> None:
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    files = FileStore(tmp_path / "storage", min_free_bytes=2**62)
    data = part10()
    with pytest.raises(OutOfSpaceError):
        ingest(index, files, data, read_header(data), source_ae="", analyzed_modalities=("CT",))
    with index.session() as db:
        assert db.scalars(select(Instance)).first() is None
    assert not list(files.root.rglob("*"))


def test_store_paths_cannot_escape_the_root(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "storage")
    with pytest.raises(ValueError, match="escapes"):
        files.absolute("../outside.dcm")


def test_scan_removes_partials_and_lists_complete_files(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "storage")
    relative = files.new_relative_path()
    files.write(relative, b"complete")
    folder = files.absolute(relative).parent
    (folder / "x.dcm.part").write_bytes(b"half")
    assert files.changed_day_folders(None) == [folder]
    assert files.scan_folder(folder) == (1, [relative])
    assert files.scan_folder(folder) == (0, [relative])


def test_only_day_folders_changed_since_the_last_scan_are_visited(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "storage")
    old, new = files.root / "2020" / "01" / "02", files.root / "2026" / "11" / "23"
    for folder in (old, new):
        folder.mkdir(parents=True)
        (folder / "a.dcm").write_bytes(b"x")
    (files.root / "2020" / "notes").mkdir()  # not a day folder
    watermark = time.time()
    two_days = 2 * 24 * 3600
    os.utime(old, (watermark - two_days, watermark - two_days))
    assert files.read_watermark() is None
    files.write_watermark(watermark)
    assert files.read_watermark() == watermark
    assert files.changed_day_folders(files.read_watermark()) == [new]
    assert files.changed_day_folders(None) == [old, new]
    for damaged in ("garbage", "nan", ""):  # a damaged watermark means a full scan
        (files.root / WATERMARK_NAME).write_text(damaged)
        assert files.read_watermark() is None


def _recovering_node(tmp_path: Path, min_free_bytes: int = 0) -> Node:
    config = config_from_dict({"storage": {"root": "storage", "min_free_bytes": min_free_bytes},
                               "database": {"url": f"sqlite:///{tmp_path / 'i.sqlite'}"},
                               "peers": [{"ae_title": "PACS"}]},
                              tmp_path)
    return Node(config)


def _indexed_paths(index: Index) -> list[str]:
    with index.session() as db:
        return sorted(db.scalars(select(Instance.path)))


def test_node_recovery_indexes_orphans_then_skips_unchanged_folders(tmp_path: Path) -> None:
    node = _recovering_node(tmp_path)
    try:
        data = part10()
        stored = ingest(node.index, node.store, data, read_header(data), source_ae="",
                        analyzed_modalities=("CT",))
        folder = node.store.root / "2020" / "01" / "02"
        folder.mkdir(parents=True)
        orphan = folder / "lost.dcm"  # crash before its row
        orphan.write_bytes(part10(InstanceNumber=2))
        duplicate = folder / "again.dcm"  # crash after a second copy of an indexed instance
        duplicate.write_bytes(data)
        (folder / "y.dcm.part").write_bytes(b"half")
        counts = recover_storage(node.index, node.store, node.config)
        assert counts["folders_scanned"] == 2 and counts["partials_removed"] == 1
        assert counts["orphans_indexed"] == 2 and counts["orphans_kept"] == 0
        # The orphan is indexed where it lies (no second copy); the duplicate is gone.
        assert orphan.exists() and not duplicate.exists()
        with node.index.session() as db:
            first_path = db.get_one(Instance, stored.instance_pk).path
        assert _indexed_paths(node.index) == sorted([first_path, "2020/01/02/lost.dcm"])
        day = 24 * 3600
        for changed in node.store.changed_day_folders(None):
            os.utime(changed, (time.time() - 2 * day, time.time() - 2 * day))
        assert recover_storage(node.index, node.store, node.config)["folders_scanned"] == 0
    finally:
        node.index.close()


def test_node_recovery_indexes_orphans_on_a_full_disk(tmp_path: Path) -> None:
    node = _recovering_node(tmp_path, min_free_bytes=2**62)
    try:
        data = part10()
        with pytest.raises(OutOfSpaceError):  # no new instance fits
            ingest(node.index, node.store, data, read_header(data), source_ae="",
                   analyzed_modalities=("CT",))
        orphan = node.store.root / "2020" / "01" / "02" / "lost.dcm"
        orphan.parent.mkdir(parents=True)
        orphan.write_bytes(data)
        counts = recover_storage(node.index, node.store, node.config)
        assert (counts["orphans_indexed"], counts["orphans_kept"]) == (1, 0)
        assert _indexed_paths(node.index) == ["2020/01/02/lost.dcm"]
        assert orphan.read_bytes() == data
    finally:
        node.index.close()
