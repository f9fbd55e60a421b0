"""End to end with DCMTK: storescu → node → SR (dciodvfy) → findscu → movescu → bpr index.

The series is real CT from ``../shared/data`` written as DICOM; the node runs as ``bpr serve``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from dicom_node.cli import index_rows
from dicom_node.index import Index, Instance, Series, SeriesState
from model.api import analyze_series
from tests.node_harness import (
    NodeProcess,
    bpr,
    free_port,
    real_ct_series,
    running_node,
    storescu,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.usefixtures("shared_data"),
              pytest.mark.requires_tool("storescu", "findscu", "movescu", "dciodvfy")]


@dataclass
class Session:
    folder: Path
    port: int
    move_port: int
    config: Path
    node: NodeProcess
    index: Index
    inputs: list[Path]


def _states(index: Index) -> list[str]:
    return [r["state"] for r in index_rows(index)]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    folder = tmp_path_factory.mktemp("e2e")
    port, move_port = free_port(), free_port()
    config = write_config(folder, port, peers=[{
        "ae_title": "MOVESCU", "host": "127.0.0.1", "port": move_port,
        "permissions": ["find", "move"]}])
    inputs = real_ct_series(folder / "in", "openkbp_pt_15")
    with running_node(config, port) as node:
        sent = storescu(port, inputs)
        assert sent.returncode == 0, sent.stderr
        index = Index(f"sqlite:///{folder / 'index.sqlite'}")
        wait_for(lambda: _states(index) == ["DONE"], 120, "the series to be analyzed")
        yield Session(folder, port, move_port, config, node, index, inputs)
        index.close()


def _sr_instance(s: Session) -> tuple[Series, Instance]:
    with s.index.session() as db:
        series = db.scalars(select(Series).where(Series.is_derived.is_(True))).one()
        instance = db.scalars(select(Instance).where(Instance.series_pk == series.id)).one()
        return series, instance


def test_index_holds_corrected_body_part_equal_to_the_model(session: Session) -> None:
    expected = analyze_series(session.inputs).volumes[0]
    (row,) = index_rows(session.index)
    assert row["state"] == SeriesState.DONE.value
    assert row["instances"] == len(session.inputs)
    assert row["corrected_body_part"] == expected.body_part_examined
    assert row["corrected_body_part"] is not None
    assert expected.body_part_code is not None
    assert row["snomed_code"] == expected.body_part_code.value
    assert row["model_version"] == expected.model_version


def test_bpr_index_cli_shows_the_term(session: Session) -> None:
    out = bpr("index", "--config", str(session.config), "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 1 and rows[0]["corrected_body_part"]
    table = bpr("index", "--config", str(session.config))
    assert rows[0]["corrected_body_part"] in table.stdout
    filtered = bpr("index", "--config", str(session.config), "--term", "KNEE", "--format", "csv")
    assert filtered.stdout.strip().count("\n") == 0  # header only


def test_stored_sr_validates_with_dciodvfy(session: Session) -> None:
    _series, instance = _sr_instance(session)
    path = session.folder / "storage" / instance.path
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (out.stdout + out.stderr).splitlines()
              if line.startswith("Error")]
    assert errors == []
    sr = dcmread(path)
    source = dcmread(session.inputs[0], stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID


def test_findscu_finds_the_sr_series(session: Session) -> None:
    _series, instance = _sr_instance(session)
    sr = dcmread(session.folder / "storage" / instance.path, stop_before_pixels=True)
    out = subprocess.run(
        ["findscu", "-v", "-S", "-aet", "FINDSCU", "-aec", "BPR_NODE",
         "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={sr.StudyInstanceUID}",
         "-k", "SeriesInstanceUID", "-k", "Modality=SR", "127.0.0.1", str(session.port)],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert sr.SeriesInstanceUID in out.stdout + out.stderr


def test_movescu_retrieves_the_sr(session: Session, tmp_path: Path) -> None:
    _series, instance = _sr_instance(session)
    sr = dcmread(session.folder / "storage" / instance.path, stop_before_pixels=True)
    out = subprocess.run(
        ["movescu", "-S", "-aet", "MOVESCU", "-aec", "BPR_NODE", "-aem", "MOVESCU",
         "--port", str(session.move_port), "-od", str(tmp_path),
         "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={sr.StudyInstanceUID}",
         "-k", f"SeriesInstanceUID={sr.SeriesInstanceUID}", "127.0.0.1", str(session.port)],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    received = [dcmread(p) for p in tmp_path.iterdir()]
    assert [d.SOPInstanceUID for d in received] == [sr.SOPInstanceUID]


def test_unknown_calling_ae_is_refused(session: Session) -> None:
    out = storescu(session.port, session.inputs[:1], calling="INTRUDER")
    assert out.returncode != 0
    assert "Rejected" in out.stdout + out.stderr


def test_logs_hold_no_patient_identity(session: Session) -> None:
    source = dcmread(session.inputs[0], stop_before_pixels=True)
    log = session.node.log_path.read_text()
    assert "listening" in log
    for value in (str(source.PatientID), str(source.PatientName)):
        if value:
            assert value not in log


def test_reprocess_reruns_once_and_keeps_one_sr(session: Session) -> None:
    uid = dcmread(session.inputs[0], stop_before_pixels=True).SeriesInstanceUID
    out = bpr("reprocess", "--config", str(session.config), uid)
    assert out.returncode == 0, out.stderr
    assert f"{uid}: DONE" in out.stdout
    with session.index.session() as db:
        series = db.scalars(select(Series).where(Series.series_instance_uid == uid)).one()
        assert series.analysis_count == 2 and series.state is SeriesState.DONE
        sr_series = db.scalars(select(Series).where(Series.is_derived.is_(True))).one()
        # Same inputs, same model: the SR has the same UID and is stored once.
        assert len(sr_series.instances) == 1
    missing = bpr("reprocess", "--config", str(session.config), "1.2.3.999")
    assert missing.returncode == 1 and "not found" in missing.stderr
