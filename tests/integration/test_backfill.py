"""``bpr backfill`` against Orthanc: the archive is fetched, analyzed once, SRs land in Orthanc.

Orthanc holds five CT series made from ``../shared/data`` (five patients); one of them has
lost a file on Orthanc's disk, so Orthanc cannot deliver it. The node runs as ``bpr serve``.
``bpr backfill`` is SIGKILLed after two series are fetched and started again: it must finish
without any series fetched or analyzed twice, the undeliverable series must end FAILED with
the reason, and every SR must be in Orthanc.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from dicom_node.index import (
    BackfillJob,
    BackfillState,
    ForwardJob,
    ForwardState,
    Index,
    Series,
    SeriesState,
)
from tests.node_harness import (
    BPR,
    NodeProcess,
    bpr,
    free_port,
    real_ct_series,
    running_node,
    wait_for,
    write_config,
)
from tests.orthanc_server import ORTHANC_AET, OrthancServer

pytestmark = [pytest.mark.usefixtures("shared_data"), pytest.mark.requires_tool("Orthanc")]

VOLUMES = ("openkbp_pt_2", "openkbp_pt_3", "openkbp_pt_4", "openkbp_pt_7", "openkbp_pt_13")
#: The series whose first file is removed from Orthanc's storage.
BROKEN = "openkbp_pt_13"
#: Small real series: 24 slices at a quarter of the pixels.
SLICES = slice(50, 74)


@dataclass
class Site:
    folder: Path
    config: Path
    orthanc: OrthancServer
    node: NodeProcess
    index: Index
    series_uids: dict[str, str]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("backfill")
    port = free_port()
    # no storage cache: the lost file must really be missing when Orthanc reads it
    orthanc = OrthancServer(folder / "orthanc", port, MaximumStorageCacheSize=0)
    try:
        orthanc.wait_ready()
        config = write_config(
            folder, port, quiet_seconds=1.0,
            peers=[{"ae_title": ORTHANC_AET, "host": "127.0.0.1", "port": orthanc.dicom_port,
                    "permissions": ["store", "find", "move", "get"], "forward_sr": True}],
            series={"sweep_seconds": 1.0},
            backfill={"rate": 0.25, "initial_delay_s": 0.5, "max_delay_s": 1.0,
                      "max_attempts": 2})
        uids = {}
        for i, name in enumerate(VOLUMES):
            files = real_ct_series(folder / "in" / name, name, pixel_step=4, slices=SLICES,
                                   patient_id=f"ARCHIVE-{i}")
            uploaded = [orthanc.rest("POST", "/instances", raw=p.read_bytes()) for p in files]
            uids[name] = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
            if name == BROKEN:
                _lose_file(orthanc, folder / "orthanc" / "storage", uploaded[0]["ID"])
        with running_node(config, port) as node:
            index = Index(f"sqlite:///{folder / 'index.sqlite'}")
            try:
                yield Site(folder, config, orthanc, node, index, uids)
            finally:
                index.close()
    finally:
        orthanc.stop()


def _lose_file(orthanc: OrthancServer, storage: Path, instance_id: str) -> None:
    """Delete the file of one instance from Orthanc's disk (its index keeps the instance)."""
    info = orthanc.rest("GET", f"/instances/{instance_id}/attachments/dicom/info")
    uuid = str(info["Uuid"])
    path = storage / uuid[:2] / uuid[2:4] / uuid
    assert path.is_file(), path
    path.unlink()


def _jobs(index: Index) -> dict[str, BackfillJob]:
    with index.session() as session:
        return {j.series_instance_uid: j for j in session.scalars(select(BackfillJob))}


def _fetched(index: Index) -> int:
    with index.session() as session:
        return int(session.scalar(select(func.count(BackfillJob.id)).where(
            BackfillJob.state == BackfillState.FETCHED)) or 0)


def test_backfill_survives_a_sigkill_and_fetches_nothing_twice(site: Site) -> None:
    first = subprocess.Popen([*BPR, "backfill", "--config", str(site.config), "--peer",
                              ORTHANC_AET], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _fetched(site.index) >= 2, 120, "two series fetched")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert len(_jobs(site.index)) == len(VOLUMES)  # discovery was complete before the kill
    second = bpr("backfill", "--config", str(site.config), "--peer", ORTHANC_AET, "--rate", "0",
                 timeout=300)
    assert second.returncode == 1, second.stdout + second.stderr  # one series FAILED
    jobs = _jobs(site.index)
    good = [uid for name, uid in site.series_uids.items() if name != BROKEN]
    assert all(jobs[uid].state is BackfillState.FETCHED for uid in good)
    assert [jobs[uid].fetches for uid in good] == [1] * len(good)

    broken = jobs[site.series_uids[BROKEN]]
    assert broken.state is BackfillState.FAILED and broken.attempts == 2
    assert broken.last_error and "retrieve failed with status 0x" in broken.last_error

    def analyzed() -> bool:
        with site.index.session() as session:
            states = session.scalars(select(Series.state).where(
                Series.series_instance_uid.in_(good))).all()
        return len(states) == len(good) and set(states) == {SeriesState.DONE}

    wait_for(analyzed, 120, "the node to analyze the fetched series")
    with site.index.session() as session:
        counts = session.scalars(select(Series.analysis_count).where(
            Series.series_instance_uid.in_(good))).all()
        sources = select(Series.id).where(Series.series_instance_uid.in_(good))
        srs = session.scalars(select(Series.series_instance_uid).where(
            Series.source_series_pk.in_(sources))).all()
    assert list(counts) == [1] * len(good)
    assert len(srs) == len(good)

    def forwarded() -> bool:
        with site.index.session() as session:
            return not session.scalars(select(ForwardJob).where(
                ForwardJob.state == ForwardState.PENDING)).first()

    wait_for(forwarded, 60, "the SRs to be forwarded")
    for uid in srs:  # every SR is in Orthanc
        assert site.orthanc.rest("POST", "/tools/lookup", raw=uid.encode()), uid


def test_status_reports_jobs_analyses_and_failures(site: Site) -> None:
    status = bpr("backfill", "--config", str(site.config), "--status", "--format", "json")
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert row["peer"] == ORTHANC_AET
    assert (row["FETCHED"], row["FAILED"], row["PENDING"]) == (4, 1, 0)
    assert row["analyzed"] == 4
    assert row["failed_series"][0]["series_instance_uid"] == site.series_uids[BROKEN]
    text = bpr("backfill", "--config", str(site.config), "--status").stdout
    assert "fetched 4" in text and "FAILED" in text


def test_a_new_run_skips_what_is_done(site: Site) -> None:
    again = bpr("backfill", "--config", str(site.config), "--peer", ORTHANC_AET, "--rate", "0")
    assert "0 new series found" in again.stdout
    assert [j.fetches for j in _jobs(site.index).values()
            if j.state is BackfillState.FETCHED] == [1] * 4


def test_unknown_peers_and_bad_dates_are_clear_errors(site: Site) -> None:
    unknown = bpr("backfill", "--config", str(site.config), "--peer", "NOBODY")
    assert unknown.returncode == 2 and "not a configured peer" in unknown.stderr
    bad = bpr("backfill", "--config", str(site.config), "--peer", ORTHANC_AET, "--since", "2024")
    assert bad.returncode == 2 and "YYYYMMDD" in bad.stderr
