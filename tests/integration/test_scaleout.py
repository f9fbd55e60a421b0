"""Two node processes on one PostgreSQL index and one storage root: every series analyzed once.

Two ``bpr serve`` processes (role ``all``) listen on two ports and share the index and the
storage. Twenty real CT series are sent with DCMTK ``storescu``: eight to each node, and four
whose instances are split between both (a load balancer in front of two nodes does that).
Every series must end DONE after exactly one analysis, with exactly one SR. Then a worker
takes over what a killed receiver-only process queued.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from dicom_node.index import Index, NodeProcess, Series, SeriesState
from tests.node_harness import NodeProcess as NodeRun
from tests.node_harness import (
    free_port,
    real_ct_series,
    running_node,
    storescu,
    wait_for,
    write_config,
)
from tests.postgres_cluster import fresh_database, postgres_cluster

pytestmark = [pytest.mark.usefixtures("shared_data"), pytest.mark.requires_tool("storescu")]

#: Small real series: 24 slices of a head-neck CT at a quarter of the pixels.
SLICES = slice(40, 64)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with postgres_cluster() as url:
        yield url


def _config(folder: Path, port: int, url: str, storage: Path, **series: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(folder, port, storage={"root": str(storage), "min_free_bytes": 0},
                        database={"url": url},
                        series={"quiet_seconds": 2.0, "sweep_seconds": 1.0, "torch_threads": 1,
                                **series})


def _series(folder: Path, n: int) -> list[list[Path]]:
    return [real_ct_series(folder / f"s{i}", "openkbp_pt_15", pixel_step=4, slices=SLICES,
                           patient_id=f"SCALE-{i}") for i in range(n)]


def _counts(index: Index) -> tuple[int, int, list[int]]:
    with index.session() as session:
        done = session.scalar(select(func.count(Series.id)).where(
            Series.is_derived.is_(False), Series.state == SeriesState.DONE)) or 0
        srs = session.scalar(select(func.count(Series.id)).where(Series.is_derived.is_(True)))
        analyses = list(session.scalars(select(Series.analysis_count).where(
            Series.is_derived.is_(False))))
    return int(done), int(srs or 0), analyses


def test_two_nodes_analyze_every_series_exactly_once(cluster: str, tmp_path: Path) -> None:
    with fresh_database(cluster) as url:
        storage = tmp_path / "storage"
        ports = free_port(), free_port()
        # the last four series arrive half through each node: a quiet time shorter than a
        # loaded runner's stall between the halves reopens a series (a second, legitimate
        # analysis), which is not what this test is about
        configs = [_config(tmp_path / f"node{i}", port, url, storage, quiet_seconds=5.0)
                   for i, port in enumerate(ports)]
        series = _series(tmp_path / "in", 20)
        to_a = [f for s in series[:8] for f in s] + [f for s in series[16:] for f in s[::2]]
        to_b = [f for s in series[8:16] for f in s] + [f for s in series[16:] for f in s[1::2]]
        index = Index(url)
        with running_node(configs[0], ports[0]), running_node(configs[1], ports[1]):
            with index.session() as session:
                assert session.scalar(select(func.count()).select_from(NodeProcess)) == 2
            with ThreadPoolExecutor(2) as pool:
                sent = list(pool.map(lambda job: storescu(*job), [(ports[0], to_a),
                                                                  (ports[1], to_b)]))
            assert all(s.returncode == 0 for s in sent), [s.stderr[-500:] for s in sent]
            wait_for(lambda: _counts(index)[:2] == (20, 20), 300, "20 series and 20 SRs")
        done, srs, analyses = _counts(index)
        assert (done, srs) == (20, 20)
        assert analyses == [1] * 20
        with index.session() as session:
            assert session.scalar(select(func.count()).select_from(NodeProcess)) == 0
        index.close()


def test_a_worker_analyzes_what_a_receiver_queued(cluster: str, tmp_path: Path) -> None:
    with fresh_database(cluster) as url:
        storage = tmp_path / "storage"
        port = free_port()
        receiver_config = _config(tmp_path / "receiver", port, url, storage)
        worker_config = _config(tmp_path / "worker", free_port(), url, storage)
        series = _series(tmp_path / "in", 3)
        index = Index(url)
        receiver = NodeRun(receiver_config, role="receiver")
        try:
            receiver.wait_listening(port)
            assert storescu(port, [f for s in series for f in s]).returncode == 0
            wait_for(lambda: _queued(index) == 3, 60, "the receiver to queue three series")
        finally:
            receiver.stop()
        assert _counts(index)[0] == 0  # a receiver never analyzes
        worker = NodeRun(worker_config, role="worker")
        try:
            wait_for(lambda: _counts(index)[:2] == (3, 3), 120, "the worker's analyses")
        finally:
            worker.stop()
        assert _counts(index)[2] == [1, 1, 1]
        index.close()


def _queued(index: Index) -> int:
    with index.session() as session:
        return int(session.scalar(select(func.count(Series.id)).where(
            Series.state == SeriesState.QUEUED)) or 0)
