"""The node under load and faults: concurrent senders, aborted associations, repeated SIGKILL,
a full disk. Every acknowledged instance must be stored exactly once and every series analyzed.

Bounded for CI; ``BPR_SOAK=1`` runs the long form (more senders, series and kill cycles). Each
test reports its figures (the "figures" section of the terminal summary); the note of issue 5
lists a soak run.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import func, select

from dicom_node.index import Index, Instance, Series, SeriesState
from tests.figures import Report
from tests.node_harness import (
    NodeProcess,
    free_port,
    real_ct_series,
    storescu,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.usefixtures("shared_data"), pytest.mark.requires_tool("storescu")]

SOAK = os.environ.get("BPR_SOAK") == "1"
SERIES_PER_SENDER = 30 if SOAK else 2
KILL_CYCLES = 20 if SOAK else 3
SLICES = 48

StartNode = Callable[[Path, int], NodeProcess]


@pytest.fixture(scope="module")
def series_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[list[Path]]]:
    """Distinct real CT series (new UIDs each), 48 slices of 64²."""
    folder = tmp_path_factory.mktemp("series")
    sources = ["openkbp_pt_15", "openkbp_pt_60", "openkbp_pt_67", "openkbp_pt_96"]
    yield [real_ct_series(folder / str(i), sources[i % len(sources)], pixel_step=2,
                          slices=slice(40, 40 + SLICES))
           for i in range(4 * SERIES_PER_SENDER + 2)]


@pytest.fixture
def start_node() -> Iterator[Callable[[Path, int], NodeProcess]]:
    """Start ``bpr serve`` processes that are killed at teardown even when a test fails."""
    started: list[NodeProcess] = []

    def start(config: Path, port: int) -> NodeProcess:
        node = NodeProcess(config)
        started.append(node)
        node.wait_listening(port)
        return node

    yield start
    for node in started:
        if node.process.poll() is None:
            node.kill()


def _pynetdicom_send(port: int, files: list[Path], abort_after: int | None = None) -> int:
    """Send with a pynetdicom SCU; returns how many were acknowledged with success."""
    ae = AE(ae_title="LOADSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="BPR_NODE")
    assert assoc.is_established
    acknowledged = 0
    for i, path in enumerate(files):
        if abort_after is not None and i == abort_after:
            assoc.abort()
            return acknowledged
        status = assoc.send_c_store(dcmread(path))
        acknowledged += int(status is not None and status.Status == 0x0000)
    assoc.release()
    return acknowledged


def _counts(index: Index) -> tuple[int, list[tuple[SeriesState, int]], int]:
    with index.session() as db:
        instances = int(db.scalar(select(func.count(Instance.id))) or 0)
        series = [(s, n) for s, n in db.execute(
            select(Series.state, Series.analysis_count).where(Series.is_derived.is_(False)))]
        srs = int(db.scalar(select(func.count(Series.id)).where(Series.is_derived.is_(True)))
                  or 0)
    return instances, series, srs


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def test_concurrent_senders_lose_nothing(tmp_path: Path, start_node: StartNode,
                                         series_pool: list[list[Path]], report: Report) -> None:
    port = free_port()
    config = write_config(tmp_path, port, quiet_seconds=2.0,
                          peers=[{"ae_title": "LOADSCU", "permissions": ["store"]}])
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    node = start_node(config, port)
    # Two DCMTK and two pynetdicom senders, each with its own series, all at once.
    work = series_pool[: 4 * SERIES_PER_SENDER]
    batches = [[f for s in work[i::4] for f in s] for i in range(4)]
    results: dict[int, int] = {}

    def send(i: int) -> None:
        if i < 2:
            out = storescu(port, batches[i])
            results[i] = len(batches[i]) if out.returncode == 0 else -1
        else:
            results[i] = _pynetdicom_send(port, batches[i])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    total = sum(len(b) for b in batches)
    assert [results[i] for i in range(4)] == [len(b) for b in batches]
    wait_for(lambda: all(s is SeriesState.DONE for s, _ in _counts(index)[1])
             and len(_counts(index)[1]) == len(work), 300, "all series analyzed")
    instances, series, srs = _counts(index)
    rss = _peak_rss_mb(node.process.pid)
    node.stop()
    assert instances == total + srs
    assert srs == len(work)
    assert all(n == 1 for _, n in series)
    report("load", f"4 senders, {len(work)} series, {total} instances in {seconds:.1f} s "
           f"({total / seconds:.0f} instances/s); all analyzed once; node peak RSS {rss:.0f} "
           "MB; instances lost: 0")


def test_aborted_association_then_resend(tmp_path: Path, start_node: StartNode,
                                         series_pool: list[list[Path]], report: Report) -> None:
    port = free_port()
    config = write_config(tmp_path, port, quiet_seconds=3.0,
                          peers=[{"ae_title": "LOADSCU", "permissions": ["store"]}])
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    node = start_node(config, port)
    files = series_pool[-1]
    acknowledged = _pynetdicom_send(port, files, abort_after=len(files) // 2)
    assert acknowledged == len(files) // 2
    assert _counts(index)[0] == acknowledged
    # The sender retries everything: the first half are duplicates, nothing is doubled.
    assert _pynetdicom_send(port, files) == len(files)
    wait_for(lambda: _counts(index)[1] == [(SeriesState.DONE, 1)], 120, "analysis")
    instances, _, srs = _counts(index)
    node.stop()
    assert (instances, srs) == (len(files) + 1, 1)
    report("abort", f"association aborted after {acknowledged} of {len(files)}, resent: "
           "every instance stored once, series analyzed once; instances lost: 0")


def test_repeated_sigkill_loses_no_acknowledged_instance(
        tmp_path: Path, series_pool: list[list[Path]], start_node: StartNode,
        report: Report) -> None:
    port = free_port()
    config = write_config(tmp_path, port, quiet_seconds=1.0)
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    rng = random.Random(5)
    files = [f for s in series_pool[:3] for f in s]
    acknowledged: set[str] = set()
    uids = {p: dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
    for _cycle in range(KILL_CYCLES):
        node = start_node(config, port)
        sender = subprocess.Popen(
            ["storescu", "-v", "-aet", "STORESCU", "-aec", "BPR_NODE", "127.0.0.1", str(port),
             *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # Kill at a random moment: while receiving, analyzing or writing SRs.
        time.sleep(rng.uniform(0.2, 4.0))
        node.kill()
        output, _ = sender.communicate(timeout=60)
        ok = len(re.findall(r"Received Store Response \(Success\)", output))
        acknowledged.update(uids[p] for p in files[:ok])
        with index.session() as db:
            stored = set(db.scalars(select(Instance.sop_instance_uid)))
        assert acknowledged <= stored
    # Finally let it run: everything is received and each series ends DONE with one SR.
    node = start_node(config, port)
    assert storescu(port, files).returncode == 0
    wait_for(lambda: [s for s, _ in _counts(index)[1]] == [SeriesState.DONE] * 3, 300,
             "all series analyzed after the kills")
    instances, _series, srs = _counts(index)
    node.stop()
    with index.session() as db:
        per_series = list(db.execute(select(Series.id, func.count(Instance.id))
                                     .join(Instance).where(Series.is_derived.is_(False))
                                     .group_by(Series.id)))
    assert all(n == SLICES for _, n in per_series)
    assert srs == 3 and instances >= len(files) + 3
    assert not list((tmp_path / "storage").rglob("*.part"))
    report("SIGKILL", f"{KILL_CYCLES} kills at random points; {len(acknowledged)} instances "
           "acknowledged before a kill, all present; instances lost: 0")


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, check=False)
    return out.returncode == 0


def test_full_disk_refuses_with_a700_and_recovers(tmp_path: Path, start_node: StartNode,
                                                  report: Report) -> None:
    storage = tmp_path / "storage"
    if not _mount_tmpfs(storage, "512k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        port = free_port()
        config = write_config(tmp_path, port, quiet_seconds=3600)
        index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}")
        node = start_node(config, port)
        files = real_ct_series(tmp_path / "in", "openkbp_pt_60", pixel_step=1,
                               slices=slice(0, 48))
        assert sum(p.stat().st_size for p in files) > 1_000_000  # twice the tmpfs
        out = subprocess.run(
            ["storescu", "-v", "-aet", "STORESCU", "-aec", "BPR_NODE", "127.0.0.1", str(port),
             *map(str, files)], capture_output=True, text=True, timeout=120, check=False)
        text = out.stdout + out.stderr
        ok = len(re.findall(r"Received Store Response \(Success\)", text))
        assert 0 < ok < len(files)
        assert "Refused: OutOfResources" in text  # 0xA700
        with index.session() as db:
            paths = list(db.scalars(select(Instance.path)))
        assert len(paths) == ok  # nothing half-written indexed
        assert all((storage / p).stat().st_size > 0 for p in paths)
        assert not list(storage.rglob("*.part"))
        # Space returns (a bigger mount over the same path): the resend completes.
        node.stop()
        subprocess.run(["mount", "-o", "remount,size=64m", str(storage)], check=True)
        node = start_node(config, port)
        assert storescu(port, files).returncode == 0
        assert _counts(index)[0] == len(files)
        node.stop()
        report("full disk", f"{ok} of {len(files)} stored before 0xA700, nothing "
               "half-written indexed, all stored once space returned; instances lost: 0")
    finally:
        subprocess.run(["umount", "-l", str(storage)], check=False)
