"""Orthanc as the PACS: Orthanc sends a CT series to the node, the node forwards its SR back.

The issue's done-when: "Orthanc sends the series to the node, the node forwards the SR to
Orthanc, and Orthanc holds it." A real Orthanc (the Debian ``orthanc`` package, no plugins)
runs in a subprocess with its storage in ``tmp_path``; the node runs as ``bpr serve``. All
checks on Orthanc's side go through its REST API, the way a PACS administrator would look.
The second test has Orthanc query the node (C-FIND) and retrieve the SR (C-MOVE to itself).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import select

from dicom_node.cli import index_rows
from dicom_node.index import ForwardJob, ForwardState, Index, SeriesState
from tests.node_harness import (
    NodeProcess,
    free_port,
    real_ct_series,
    running_node,
    wait_for,
    write_config,
)
from tests.orthanc_server import MODALITY, ORTHANC_AET, OrthancServer

pytestmark = [pytest.mark.usefixtures("shared_data"), pytest.mark.requires_tool("Orthanc")]

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@dataclass
class Session:
    folder: Path
    orthanc: OrthancServer
    node: NodeProcess
    index: Index
    #: Orthanc's IDs of the uploaded CT study and series.
    study_id: str
    ct_series_id: str
    study_uid: str


def _sr_series(orthanc: OrthancServer, study_id: str) -> list[dict[str, Any]]:
    """Orthanc's SR series of the study."""
    return [s for s in orthanc.rest("GET", f"/studies/{study_id}/series")
            if s["MainDicomTags"].get("Modality") == "SR"]


def _pending_forwards(index: Index) -> list[ForwardJob]:
    with index.session() as db:
        return list(db.scalars(select(ForwardJob).where(
            ForwardJob.state == ForwardState.PENDING)).all())


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    folder = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    orthanc = OrthancServer(folder / "orthanc", port)
    try:
        orthanc.wait_ready()
        config = write_config(folder, port, quiet_seconds=1.0, peers=[{
            "ae_title": ORTHANC_AET, "host": "127.0.0.1", "port": orthanc.dicom_port,
            "permissions": ["store", "find", "move", "get"], "forward_sr": True}])
        inputs = real_ct_series(folder / "in", "openkbp_pt_15", pixel_step=2)
        uploaded = [orthanc.rest("POST", "/instances", raw=p.read_bytes()) for p in inputs]
        assert {u["Status"] for u in uploaded} == {"Success"}
        study_id, ct_series_id = uploaded[0]["ParentStudy"], uploaded[0]["ParentSeries"]
        study_uid = str(dcmread(inputs[0], stop_before_pixels=True).StudyInstanceUID)
        with running_node(config, port) as node:
            index = Index(f"sqlite:///{folder / 'index.sqlite'}")
            try:
                # Synchronous: the answer comes after the last C-STORE of the series.
                orthanc.rest("POST", f"/modalities/{MODALITY}/store",
                             {"Resources": [ct_series_id], "Synchronous": True})
                try:
                    wait_for(lambda: bool(_sr_series(orthanc, study_id)), 90,
                             "Orthanc to hold the node's SR")
                    # Orthanc shows the SR as soon as it has stored it, before its C-STORE
                    # response reaches the node and the node records the job as sent.
                    wait_for(lambda: not _pending_forwards(index), 30,
                             "the node to record the forward")
                except TimeoutError as exc:
                    # CI shows only the assertion: the two logs say which side got stuck.
                    raise AssertionError(
                        f"{exc}\n--- node log ---\n{node.log_path.read_text()[-4000:]}"
                        f"\n--- Orthanc log ---\n{orthanc.log_path.read_text()[-2000:]}"
                    ) from exc
                yield Session(folder, orthanc, node, index, study_id, ct_series_id, study_uid)
            finally:
                index.close()
    finally:
        orthanc.stop()


def _sr_tags(s: Session) -> dict[str, Any]:
    (series,) = _sr_series(s.orthanc, s.study_id)
    (instance_id,) = series["Instances"]
    tags: dict[str, Any] = s.orthanc.rest("GET", f"/instances/{instance_id}/simplified-tags")
    return tags


def test_orthanc_holds_the_forwarded_sr(session: Session) -> None:
    tags = _sr_tags(session)
    assert tags["StudyInstanceUID"] == session.study_uid
    assert tags["SOPClassUID"] == COMPREHENSIVE_3D_SR
    assert tags["Modality"] == "SR"
    templates = [t["TemplateIdentifier"] for t in tags["ContentTemplateSequence"]]
    assert templates == ["1500"]
    ct = session.orthanc.rest("GET", f"/series/{session.ct_series_id}")
    assert tags["SeriesInstanceUID"] != ct["MainDicomTags"]["SeriesInstanceUID"]

    (row,) = index_rows(session.index)
    assert row["state"] == SeriesState.DONE.value
    assert row["instances"] == len(ct["Instances"])
    assert row["corrected_body_part"]
    with session.index.session() as db:
        jobs = db.scalars(select(ForwardJob)).all()
        assert [(j.destination, j.state, j.attempts) for j in jobs] == [
            (ORTHANC_AET, ForwardState.DONE, 1)]
        assert jobs[0].last_error is None
        # Orthanc holds the very instance the job sent, not some other SR.
        assert jobs[0].instance.sop_instance_uid == tags["SOPInstanceUID"]
        assert jobs[0].instance.source_ae == ""


def test_orthanc_queries_the_node_and_moves_the_sr_to_itself(session: Session) -> None:
    sr = _sr_tags(session)
    (sr_series,) = _sr_series(session.orthanc, session.study_id)
    # Forget the forwarded copy, so that only the C-MOVE can bring the SR back.
    session.orthanc.rest("DELETE", f"/series/{sr_series['ID']}")
    assert _sr_series(session.orthanc, session.study_id) == []

    query = session.orthanc.rest("POST", f"/modalities/{MODALITY}/query", {
        "Level": "Series",
        "Query": {"StudyInstanceUID": session.study_uid, "Modality": "SR"}})
    answers = session.orthanc.rest("GET", f"/queries/{query['ID']}/answers?expand&simplify")
    assert [a["SeriesInstanceUID"] for a in answers] == [sr["SeriesInstanceUID"]]

    session.orthanc.rest("POST", f"/queries/{query['ID']}/retrieve",
                         {"TargetAet": ORTHANC_AET, "Synchronous": True})
    retrieved = _sr_tags(session)
    assert retrieved["SOPInstanceUID"] == sr["SOPInstanceUID"]
    assert retrieved["StudyInstanceUID"] == session.study_uid
