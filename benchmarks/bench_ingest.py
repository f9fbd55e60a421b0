"""Ingest throughput of the node beside a bare pynetdicom SCP, and completion → SR latency.

Run: ``python -m benchmarks.bench_ingest [--series 4] [--slices 64] [--senders 1,4,16]
[--clinical-size] [--during-adaptation]``

1. Instances/s with 1, 4 and 16 concurrent DCMTK ``storescu`` senders, each sending its own
   copies of a real CT series (``../shared/data``), against (a) ``bpr serve`` — validate, fsync,
   index, track — and (b) a bare pynetdicom SCP in a subprocess that only writes each dataset
   to a file (no fsync, no index): the baseline of the same run, reported as a ratio; and
   (c) the same bare SCP writing each file with the node's own ``FileStore.write``
   (temporary name, fsync, rename, folder fsync), the floor of any SCP that acknowledges
   only what survives a power cut. The series is a 128² OpenKBP volume, or with
   ``--clinical-size`` a 512² series made from LIDC-IDRI-0003 as ``bench_inference`` makes
   it (512 kB per instance, the size of a clinical slice). Both
   sender settings are measured: storescu's default, where Nagle's algorithm on the sender
   and delayed acknowledgements on the receiver hold every instance about 40 ms whatever
   either SCP does, and ``TCP_NODELAY=1`` (DCMTK's switch), where the receivers' own costs
   decide the rate.
   With ``--during-adaptation`` the node is measured again while an adaptation run trains
   beside it as the node starts one (``bpr adapt`` at niceness 19 with one torch thread, the
   ``adaptation`` defaults of ``config.yaml``), and the ratio to the node alone is printed.
2. Seconds from series completion (last instance acknowledged + quiet time) to the SR being
   stored and indexed (median over ``--latency-series`` series sent one by one), with the
   node's own timings of its two steps: the analysis and writing the SR.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import ColumnElement, func, select

from benchmarks.bench_inference import DEFAULT_SOURCE, make_series
from dicom_node.index import Index, Instance, Series
from model.paths import shared_data_dir
from tests.node_harness import (
    NodeProcess,
    free_port,
    real_ct_series,
    storescu,
    wait_for,
    write_config,
)

_BARE_SCP = """
import sys, uuid
from pathlib import Path
from pynetdicom import AE, AllStoragePresentationContexts, ALL_TRANSFER_SYNTAXES, evt
from dicom_node.storage import FileStore
out, durable = Path(sys.argv[2]), sys.argv[3] == "durable"
files = FileStore(out)
def store(event):
    if durable:  # the node's own durable write, without validation or index
        files.write(files.new_relative_path(), event.encoded_dataset(include_meta=True))
    else:
        (out / (uuid.uuid4().hex + ".dcm")).write_bytes(event.encoded_dataset())
    return 0
ae = AE("BPR_NODE")
ae.maximum_associations = 32
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, store)])
"""


def _send_all(port: int, batches: list[list[Path]], nodelay: bool = False) -> float:
    """Send each batch from its own storescu at once; seconds until all acknowledged."""
    env = {"TCP_NODELAY": "1"} if nodelay else None
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(batches)) as pool:
        results = list(pool.map(lambda files: storescu(port, files, env=env), batches))
    seconds = time.perf_counter() - t0
    failed = [r.stderr[-300:] for r in results if r.returncode != 0]
    if failed:
        raise RuntimeError(f"storescu failed: {failed[0]}")
    return seconds


def _wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("server exited")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError("server not listening")


def _bare(batches: list[list[Path]], work: Path, nodelay: bool, durable: bool = False) -> float:
    port = free_port()
    out = work / f"bare-{port}"
    out.mkdir()
    process = subprocess.Popen([sys.executable, "-c", _BARE_SCP, str(port), str(out),
                                "durable" if durable else "plain"])
    try:
        _wait_port(port, process)
        return _send_all(port, batches, nodelay)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _series(folder: Path, slices: int, clinical_size: bool) -> list[Path]:
    """One copy of the series sent, with UIDs of its own."""
    if not clinical_size:
        return real_ct_series(folder, "openkbp_pt_15", pixel_step=1, slices=slice(0, slices))
    folder.mkdir(parents=True)
    make_series(DEFAULT_SOURCE, slices, folder)
    return sorted(folder.iterdir())


def _node(batches: list[list[Path]], work: Path, nodelay: bool = False) -> float:
    port = free_port()
    folder = work / f"node-{port}"
    folder.mkdir()
    # No analysis during the ingest measurement: the quiet time outlasts it.
    config = write_config(folder, port, quiet_seconds=3600,
                          network={"max_associations": 32})  # as the bare SCP
    node = NodeProcess(config)
    try:
        node.wait_listening(port)
        seconds = _send_all(port, batches, nodelay)
    finally:
        node.stop()
    index = Index(f"sqlite:///{folder / 'index.sqlite'}")
    with index.session() as db:
        stored = db.scalar(select(func.count(Instance.id)))
    index.close()
    expected = sum(len(b) for b in batches)
    if stored != expected:
        raise RuntimeError(f"node indexed {stored} of {expected} instances")
    return seconds


#: Validation volumes the background adaptation run trains on (it never finishes: it is
#: stopped once the measurement is done).
ADAPT_VOLUMES = ("openkbp_pt_141", "openkbp_pt_168", "openkbp_pt_187", "openkbp_pt_211",
                 "lidc_0003", "onkodicom_rt_thorax", "pelvicref_002")


@contextmanager
def _adaptation_running(work: Path) -> Iterator[None]:
    """A ``bpr adapt`` training at niceness 19 with one thread until the block ends."""
    run_dir = work / f"adapt-{time.monotonic_ns()}"
    inputs = [str(shared_data_dir() / "ct" / f"{n}.nii.gz") for n in ADAPT_VOLUMES]
    process = subprocess.Popen(["nice", "-n", "19", sys.executable, "-m", "bpr", "adapt",
                                *inputs, "--out", str(run_dir), "--steps", "1000000",
                                "--threads", "1", "--no-validation"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (run_dir / "training").is_dir() or process.poll() is not None, 600,
                 "the adaptation run to start training")
        if process.poll() is not None:
            raise RuntimeError("the adaptation run ended before training")
        yield
    finally:
        process.kill()
        process.wait(timeout=60)


@dataclass(frozen=True)
class Latency:
    """Medians over the measured series, in seconds."""

    completion_to_sr: float  # last acknowledgement + quiet time → SR indexed (polled)
    analysis: float  # the node's own timing of the model call
    sr: float  # the node's own timing of building, storing and indexing the SR


def _equals(count: Callable[[], int], expected: int) -> bool:
    return count() == expected


def _latency(series: list[list[Path]], warm_up: list[Path], work: Path, quiet: float
             ) -> Latency:
    """Send the series one after another, each once the previous one's SR is indexed."""
    port = free_port()
    folder = work / "latency"
    folder.mkdir()
    config = write_config(folder, port, quiet_seconds=quiet, series={"torch_threads": 0})
    node = NodeProcess(config)
    index = Index(f"sqlite:///{folder / 'index.sqlite'}")

    def series_count(*conditions: ColumnElement[bool]) -> int:
        with index.session() as db:
            return int(db.scalar(select(func.count(Series.id)).where(*conditions)) or 0)

    sr_count = partial(series_count, Series.is_derived.is_(True))
    # the node stores the SR before it records the analysis of its source series
    recorded_count = partial(series_count, Series.is_derived.is_(False),
                             Series.analysis_seconds.is_not(None))

    completion = []
    try:
        node.wait_listening(port)
        # Warm the model once so the figures are the steady state, not the first-load cost.
        for number, files in enumerate([warm_up, *series]):
            _send_all(port, [files])
            complete = time.perf_counter() + quiet
            wait_for(partial(_equals, sr_count, number + 1), 300, "SR")
            if number:
                completion.append(time.perf_counter() - complete)
        wait_for(partial(_equals, recorded_count, len(series) + 1), 60, "analysis record")
        with index.session() as db:
            timings = db.execute(select(Series.analysis_seconds, Series.sr_seconds).where(
                Series.is_derived.is_(False)).order_by(Series.id)).all()[1:]
    finally:
        node.stop()
        index.close()
    return Latency(statistics.median(completion),
                   statistics.median(float(a or 0.0) for a, _ in timings),
                   statistics.median(float(s or 0.0) for _, s in timings))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=4, help="series copies per sender")
    parser.add_argument("--slices", type=int, default=64, help="slices per series")
    parser.add_argument("--clinical-size", action="store_true",
                        help="send 512² slices (as bench_inference makes them), not 128²")
    parser.add_argument("--senders", default="1,4,16", help="concurrent senders to measure")
    parser.add_argument("--quiet", type=float, default=2.0, help="quiet time for the latency run")
    parser.add_argument("--latency-series", type=int, default=5,
                        help="series sent one by one for the completion → SR figures")
    parser.add_argument("--during-adaptation", action="store_true",
                        help="also measure the node while an adaptation run trains")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # Distinct UIDs per copy: every instance is new to the node.
        senders_measured = [int(n) for n in args.senders.split(",")]
        copies = [_series(work / "in" / str(i), args.slices, args.clinical_size)
                  for i in range(max(senders_measured) * args.series)]
        first = dcmread(copies[0][0], stop_before_pixels=True)
        print(f"{len(copies)} series × {args.slices} slices of {first.Rows}×{first.Columns} CT "
              f"({sum(p.stat().st_size for p in copies[0]) / 1e6:.1f} MB per series)")
        print(f"{'storescu':>16} {'senders':>8} {'bare SCP inst/s':>16} {'node inst/s':>12} "
              f"{'node/bare':>10} {'bare + fsync':>13} {'node/(bare + fsync)':>20}")
        alone: dict[int, tuple[list[list[Path]], float]] = {}
        for nodelay in (False, True):
            for senders in senders_measured:
                per = copies[: senders * args.series]
                batches = [[f for series in per[i::senders] for f in series]
                           for i in range(senders)]
                n = sum(len(b) for b in batches)
                bare = n / _bare(batches, work, nodelay)
                node = n / _node(batches, work, nodelay)
                durable = n / _bare(batches, work, nodelay, durable=True)
                setting = "TCP_NODELAY=1" if nodelay else "default"
                print(f"{setting:>16} {senders:>8} {bare:>16.1f} {node:>12.1f} "
                      f"{node / bare:>10.2f} {durable:>13.1f} {node / durable:>20.2f}")
                if not nodelay and senders in (1, 4):
                    alone[senders] = (batches, node)
        if args.during_adaptation:
            print(f"{'senders':>8} {'node inst/s':>12} {'+ adapting':>11} {'ratio':>6}")
            for senders, (batches, node) in alone.items():
                n = sum(len(b) for b in batches)
                with _adaptation_running(work):
                    busy = n / _node(batches, work)
                print(f"{senders:>8} {node:>12.1f} {busy:>11.1f} {busy / node:>6.2f}")
        extra = [real_ct_series(work / "latency-in" / str(i), "openkbp_pt_15", pixel_step=1,
                                slices=slice(0, args.slices))
                 for i in range(args.latency_series + 1)]
        latency = _latency(extra[1:], extra[0], work, args.quiet)
        print(f"series completion → SR stored, median of {args.latency_series} series: "
              f"{latency.completion_to_sr:.2f} s (quiet time {args.quiet:.0f} s not counted; "
              f"polled every 0.2 s)")
        print(f"  node's own timings: analysis {latency.analysis:.3f} s, "
              f"SR written and indexed {latency.sr:.3f} s, "
              f"together {latency.analysis + latency.sr:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
