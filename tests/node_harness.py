"""Run the real node (``bpr serve`` in a subprocess) and real DCMTK peers against it.

Shared by the end-to-end, crash and Orthanc tests and by ``benchmarks/bench_ingest.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select

from dicom_node.index import Index, Series, SeriesState
from model.paths import shared_data_dir
from model.reading.load import load_volumes
from tests.dicom_factory import shrink, write_ct_series

BPR = [sys.executable, "-m", "bpr"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path, port: int, *, quiet_seconds: float = 1.0,
                 peers: Sequence[dict[str, Any]] = (), **sections: dict[str, Any]) -> Path:
    """A node configuration in ``folder`` (storage and index inside it)."""
    base_peers: list[dict[str, Any]] = [
        {"ae_title": "STORESCU", "permissions": ["store"]},
        {"ae_title": "FINDSCU", "permissions": ["find"]},
        {"ae_title": "GETSCU", "permissions": ["find", "get"]},
    ]
    config: dict[str, Any] = {
        "network": {"ae_title": "BPR_NODE", "host": "127.0.0.1", "port": port},
        "storage": {"root": "storage", "min_free_bytes": 0},
        "database": {"url": "sqlite:///index.sqlite"},
        "series": {"quiet_seconds": quiet_seconds, "torch_threads": 1},
        "forwarding": {"poll_seconds": 0.5, "initial_delay_s": 0.5, "max_delay_s": 2},
        "web": {"port": free_port()},
        "peers": base_peers + list(peers),
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class NodeProcess:
    """A running ``bpr serve``; its log is kept in ``log_path``."""

    def __init__(self, config: Path, role: str = "all") -> None:
        self.config = config
        self.log_path = config.parent / "node.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen([*BPR, "serve", "--config", str(config), "--role", role],
                                        stdout=self._log, stderr=subprocess.STDOUT)

    def wait_listening(self, port: int, timeout: float = 60.0) -> None:
        """Block until the port accepts connections (or the process died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited: {self.log_path.read_text()[-3000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"node not listening on {port}")

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as in a power cut of the process."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM and wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return int(self.process.returncode)


@contextmanager
def running_node(config: Path, port: int) -> Iterator[NodeProcess]:
    """``bpr serve`` for the duration of the block."""
    node = NodeProcess(config)
    try:
        node.wait_listening(port)
        yield node
    finally:
        node.stop()


def bpr(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a ``bpr`` command and return its result (never raises on failure)."""
    return subprocess.run([*BPR, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def storescu(port: int, files: Sequence[Path], *, calling: str = "STORESCU",
             called: str = "BPR_NODE", timeout: float = 300,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu with all files in one association; ``env`` adds to the environment
    (``TCP_NODELAY=1`` turns Nagle's algorithm off in DCMTK)."""
    return subprocess.run(
        ["storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(port),
         *map(str, files)], capture_output=True, text=True, timeout=timeout, check=False,
        env=None if env is None else {**os.environ, **env})


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def real_ct_series(folder: Path, manifest_id: str = "openkbp_pt_15", *, pixel_step: int = 2,
                   slices: slice = slice(None), **kwargs: Any) -> list[Path]:
    """Single-frame CT DICOM files made from a real volume of ``../shared/data``."""
    path = shared_data_dir() / "ct" / f"{manifest_id}.nii.gz"
    volume = load_volumes(path).volumes[0]
    folder.mkdir(parents=True, exist_ok=True)
    return write_ct_series(shrink(volume, slices=slices, pixel_step=pixel_step), folder,
                           **kwargs)



def analyzed_count(index: Index) -> int:
    """Received series the node has analyzed (state DONE)."""
    with index.session() as session:
        return int(session.scalar(select(func.count(Series.id)).where(
            Series.is_derived.is_(False), Series.state == SeriesState.DONE)) or 0)


def simulated_site(folder: Path, manifest_ids: Sequence[str], *,
                   adaptation: dict[str, Any], pixel_step: int = 1,
                   timeout: float = 900) -> Path:
    """A node in ``folder`` that received the volumes ``manifest_ids`` (one patient each) from
    DCMTK ``storescu`` and analyzed them; returns its configuration file (node stopped),
    whose ``adaptation`` section holds ``adaptation``."""
    port = free_port()
    config_path = write_config(folder, port, adaptation=adaptation)
    files = [f for i, name in enumerate(manifest_ids)
             for f in real_ct_series(folder / "dicom" / name, name, pixel_step=pixel_step,
                                     patient_id=f"SITE-{i}")]
    index = Index(f"sqlite:///{folder / 'index.sqlite'}")
    try:
        with running_node(config_path, port):
            sent = storescu(port, files, timeout=timeout)
            if sent.returncode != 0:
                raise RuntimeError(f"storescu failed: {sent.stderr[-2000:]}")
            wait_for(lambda: analyzed_count(index) == len(manifest_ids), timeout,
                     "all series analyzed")
    finally:
        index.close()
    return config_path
