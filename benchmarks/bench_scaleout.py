"""Analysis throughput with 1 and with 2 worker processes on one PostgreSQL index.

Run: ``python -m benchmarks.bench_scaleout [--series 16] [--slices 96] [--workers 1 2]``

Per round, a fresh database of a throwaway PostgreSQL cluster and a fresh storage root: one
``bpr serve --role receiver`` takes the series from DCMTK ``storescu`` and queues them; then
N ``bpr serve --role worker`` processes (one torch thread each) analyze them. Throughput is
series per second between the first analysis start and the last SR written (from the index's
own timings, so process start-up is not counted), printed with its ratio to one worker. Each
round also checks that every series was analyzed exactly once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

from dicom_node.index import Index, Series, SeriesState
from tests.node_harness import (
    NodeProcess,
    free_port,
    real_ct_series,
    storescu,
    wait_for,
    write_config,
)
from tests.postgres_cluster import fresh_database, postgres_cluster


def _config(folder: Path, url: str, storage: Path) -> tuple[Path, int]:
    folder.mkdir(parents=True)
    port = free_port()
    return write_config(folder, port, storage={"root": str(storage), "min_free_bytes": 0},
                        database={"url": url},
                        series={"quiet_seconds": 0.5, "sweep_seconds": 0.5,
                                "torch_threads": 1}), port


def _count(index: Index, state: SeriesState) -> int:
    with index.session() as session:
        return int(session.scalar(select(func.count(Series.id)).where(
            Series.is_derived.is_(False), Series.state == state)) or 0)


def _round(cluster: str, work: Path, series: list[list[Path]], workers: int) -> float:
    """Series per second with ``workers`` worker processes."""
    with fresh_database(cluster) as url:
        storage = work / "storage"
        receiver_config, port = _config(work / "receiver", url, storage)
        index = Index(url)
        receiver = NodeProcess(receiver_config, role="receiver")
        try:
            receiver.wait_listening(port)
            sent = storescu(port, [f for s in series for f in s])
            if sent.returncode != 0:
                raise RuntimeError(sent.stderr[-2000:])
            wait_for(lambda: _count(index, SeriesState.QUEUED) == len(series), 120, "queued")
            running = [NodeProcess(_config(work / f"worker{i}", url, storage)[0], role="worker")
                       for i in range(workers)]
            try:
                wait_for(lambda: _count(index, SeriesState.DONE) == len(series), 1800,
                         "every series analyzed")
            finally:
                for worker in running:
                    worker.stop()
        finally:
            receiver.stop()
        with index.session() as session:
            rows = session.execute(select(Series.analyzed_at, Series.analysis_seconds,
                                          Series.sr_seconds, Series.analysis_count).where(
                Series.is_derived.is_(False))).all()
        index.close()
    if any(count != 1 for *_t, count in rows):
        raise RuntimeError("a series was analyzed more than once")
    starts = [float(at or 0) - float(a or 0) - float(s or 0) for at, a, s, _c in rows]
    span = max(float(at or 0) for at, *_rest in rows) - min(starts)
    return len(rows) / span


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=16)
    parser.add_argument("--slices", type=int, default=96, help="slices per series")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, postgres_cluster() as cluster:
        work = Path(tmp)
        series = [real_ct_series(work / "in" / str(i), "openkbp_pt_15", pixel_step=1,
                                 slices=slice(0, args.slices), patient_id=f"BENCH-{i}")
                  for i in range(args.series)]
        print(f"{args.series} series × {args.slices} slices; receiver + N workers on one "
              f"PostgreSQL index, one torch thread per worker")
        print(f"{'workers':>8} {'series/s':>9} {'× 1 worker':>11}")
        base = None
        for n in args.workers:
            t0 = time.perf_counter()
            rate = _round(cluster, work / f"round{n}", series, n)
            base = base or rate
            took = time.perf_counter() - t0
            print(f"{n:>8} {rate:>9.2f} {rate / base:>11.2f}   (round {took:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
