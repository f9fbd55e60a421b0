"""The SR forwarding queue against DCMTK ``storescp`` as the destination."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_node.index import ForwardState
from tests.needs import require_tool
from tests.node.forwarding_node import PACS, T0, Node, peer
from tests.node_harness import free_port


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def node(tmp_path: Path, port: int) -> Iterator[Node]:
    made = Node(tmp_path, [peer(port)])
    yield made
    made.index.close()


@pytest.fixture
def storescp(tmp_path: Path, port: int, request: pytest.FixtureRequest) -> Iterator[Path]:
    """DCMTK storescp on ``port``; yields its output folder (extra flags via indirect param)."""
    program = require_tool("storescp")
    received = tmp_path / "storescp"
    received.mkdir()
    extra: list[str] = list(getattr(request, "param", []))
    process = subprocess.Popen(
        [program, "-aet", PACS, "-od", str(received), "-dhl", "+xa", *extra, str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield received
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.requires_tool("storescp")
def test_dcmtk_storescp_receives_the_forwarded_sr(node: Node, storescp: Path) -> None:
    pk = node.add_sr()
    assert node.forwarder.run_due(now=T0) == 1
    files = list(storescp.iterdir())
    assert len(files) == 1
    assert dcmread(files[0]).SOPInstanceUID == node.sop_uid(pk)
    assert node.job(pk).state is ForwardState.DONE


@pytest.mark.requires_tool("storescp")
@pytest.mark.parametrize("storescp", [["--abort-after"]], indirect=True)
def test_dcmtk_abort_after_store_is_not_done(node: Node, storescp: Path) -> None:
    pk = node.add_sr()
    assert node.forwarder.run_due(now=T0) == 0
    job = node.job(pk)
    assert (job.state, job.attempts) == (ForwardState.PENDING, 1)
