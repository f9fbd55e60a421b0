"""A throw-away Orthanc (the Debian ``orthanc`` package, no plugins) as the PACS of a test.

Storage, index and log live in one folder; checks go through its REST API, the way a PACS
administrator would look.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.needs import find_tool
from tests.node_harness import free_port, wait_for

#: The Debian package installs Orthanc in /usr/sbin, often not on a normal user's PATH.
ORTHANC = find_tool("Orthanc")
ORTHANC_AET = "ORTHANC"
NODE_AET = "BPR_NODE"
#: Name of the node in Orthanc's DicomModalities, as used in the REST routes.
MODALITY = "bpr"


class OrthancServer:
    """A throw-away Orthanc with storage, index and log in one folder."""

    def __init__(self, folder: Path, node_port: int, **extra: Any) -> None:
        self.dicom_port, self.http_port = free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "bpr-test",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "DicomAet": ORTHANC_AET,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            # Localhost only and no users: the REST API is reachable by this test alone.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            # The node must address us by our title, as it would a production PACS.
            "DicomCheckCalledAet": True,
            "DicomModalities": {MODALITY: [NODE_AET, "127.0.0.1", node_port]},
            # No "Plugins" entry: the Debian default config loads /usr/share/orthanc/plugins,
            # which this file replaces, so Orthanc runs bare.
            **extra,
        }
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=1), encoding="utf-8")
        self.log_path = folder / "orthanc.log"
        self._log = self.log_path.open("ab")
        assert ORTHANC is not None
        self.process = subprocess.Popen([ORTHANC, str(self.config)],
                                        stdout=self._log, stderr=subprocess.STDOUT)

    def rest(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
             ) -> Any:
        """Call the REST API; JSON in (``body``) or bytes (``raw``), parsed JSON out."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                         data=data, method=method)
        with urllib.request.urlopen(request, timeout=120) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {self.log_path.read_text()[-3000:]}")
        try:
            self.rest("GET", "/system")
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the REST API answers (or the process died)."""
        wait_for(self._answers, timeout, "Orthanc's REST API")

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL if Orthanc hangs."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._log.close()
