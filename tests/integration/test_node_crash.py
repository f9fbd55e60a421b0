"""SIGKILL the node mid-receive and mid-analysis: nothing acknowledged is lost, and every
series is analyzed exactly once (one completed analysis, one SR)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from dicom_node.index import Index, Instance, Series, SeriesState
from tests.node_harness import NodeProcess, free_port, real_ct_series, wait_for, write_config

pytestmark = [pytest.mark.usefixtures("shared_data"), pytest.mark.requires_tool("storescu")]


def _acknowledged(storescu_output: str, files: list[Path]) -> list[Path]:
    """The files storescu got a success response for (it sends them in order)."""
    ok = re.findall(r"Received Store Response \(Success\)", storescu_output)
    return files[:len(ok)]


def _series_state(index: Index) -> list[tuple[str, int, int]]:
    with index.session() as db:
        rows = db.execute(select(Series.state, Series.analysis_count, Series.is_derived)
                          .order_by(Series.id))
        return [(s.value, n, int(d)) for s, n, d in rows]


def test_sigkill_mid_receive_and_mid_analysis(tmp_path: Path) -> None:
    port = free_port()
    # Quiet time long enough that the restart and the resend finish before the series is due.
    config = write_config(tmp_path, port, quiet_seconds=10.0)
    files = real_ct_series(tmp_path / "in", "openkbp_pt_15", pixel_step=1)
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}")

    # 1. Kill while storescu is sending.
    node = NodeProcess(config)
    node.wait_listening(port)
    sender = subprocess.Popen(
        ["storescu", "-v", "-aet", "STORESCU", "-aec", "BPR_NODE", "127.0.0.1", str(port),
         *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def received() -> int:
        with index.session() as db:
            return int(db.scalar(select(func.count(Instance.id))) or 0)

    wait_for(lambda: received() >= len(files) // 3, 60, "a third of the series")
    node.kill()
    output, _ = sender.communicate(timeout=60)
    acknowledged = _acknowledged(output, files)
    assert 0 < len(acknowledged) < len(files)

    # 2. Restart: every acknowledged instance is there, readable, and the series is pending.
    node = NodeProcess(config)
    node.wait_listening(port)
    with index.session() as db:
        stored = {i.sop_instance_uid: i.path for i in db.scalars(select(Instance))}
    for path in acknowledged:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert uid in stored
        assert dcmread(tmp_path / "storage" / stored[uid]).SOPInstanceUID == uid

    # 3. The sender retries the whole series (duplicates are idempotent); kill mid-analysis.
    resend = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", "BPR_NODE", "127.0.0.1",
                             str(port), *map(str, files)], capture_output=True, text=True,
                            timeout=300, check=False)
    assert resend.returncode == 0, resend.stderr
    assert received() == len(files)

    def processing() -> bool:
        return any(s == SeriesState.PROCESSING.value for s, _, _ in _series_state(index))

    wait_for(processing, 60, "the analysis to start")
    node.kill()
    assert _series_state(index)[0][:2] == (SeriesState.PROCESSING.value, 0)

    # 4. Restart: the interrupted analysis runs again and completes once.
    node = NodeProcess(config)
    node.wait_listening(port)
    wait_for(lambda: _series_state(index)[0][0] == SeriesState.DONE.value, 120, "analysis")
    time.sleep(3)  # would a second analysis follow? (it must not)
    node.stop()
    states = _series_state(index)
    assert states[0] == (SeriesState.DONE.value, 1, 0)
    derived = [s for s in states if s[2] == 1]
    assert len(derived) == 1  # exactly one SR series
    with index.session() as db:
        sr_series = db.scalars(select(Series).where(Series.is_derived.is_(True))).one()
        assert len(sr_series.instances) == 1
        assert db.scalar(select(func.count(Instance.id))) == len(files) + 1
    assert not list((tmp_path / "storage").rglob("*.part"))
    index.close()
