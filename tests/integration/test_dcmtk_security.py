"""The node's security rules seen from DCMTK: ``echoscu`` over TLS, ``findscu`` without PHI in logs.

The node runs in this process (:mod:`tests.node.secure_node`); DCMTK runs in its own process,
so every log record captured here is the node's.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node.secure_node import (
    NODE_AE,
    PHI_ID,
    PHI_NAME,
    Pki,
    Served,
    make_pki,
    phi_records,
    running,
    serving,
    tls_config,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("security")) as made:
        yield made


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.requires_tool("echoscu")
def test_tls_dcmtk_echoscu(tmp_path: Path, pki: Pki) -> None:
    with running(tmp_path, tls_config(tmp_path, pki, require_client_certificate=True)) as node:
        def echoscu(*tls: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["echoscu", "-aet", "FULL", "-aec", NODE_AE, "-to", "10", "-ta", "10",
                 "-td", "10", *tls, "127.0.0.1", str(node.port)],
                capture_output=True, text=True, timeout=60, check=False)

        ok = echoscu("+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca))
        assert ok.returncode == 0, ok.stderr
        assert echoscu().returncode != 0
        anonymous = echoscu("+tla", "+cf", str(pki.ca))
        assert anonymous.returncode != 0


@pytest.mark.requires_tool("findscu")
def test_query_logs_no_phi(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    # DCMTK as the SCU, in its own process: every record captured here is the node's.
    caplog.set_level(logging.DEBUG)
    result = subprocess.run(
        ["findscu", "-aet", "FIND_ONLY", "-aec", NODE_AE, "-S", "-k", "QueryRetrieveLevel=STUDY",
         "-k", f"PatientName={PHI_NAME}", "-k", f"PatientID={PHI_ID}", "-k", "StudyInstanceUID",
         "127.0.0.1", str(served.port)],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert len(caplog.records) > 0
    assert phi_records(caplog.records) == []
