"""Serving the HTTP view (:mod:`dicom_node.web`) with uvicorn in a thread of the node.

HTTPS with the node's certificate when ``security.tls`` is enabled. A port that cannot be
bound stops the node at start-up, like the DICOM port.
"""

from __future__ import annotations

import threading
import time

import uvicorn
from starlette.applications import Starlette

from dicom_node.config import NodeConfig

#: Longest wait for uvicorn to bind its port at start-up.
START_TIMEOUT_S = 15.0


class WebServer:
    """uvicorn serving ``app`` on ``web.host``/``web.port`` (port 0: any free port)."""

    def __init__(self, app: Starlette, config: NodeConfig) -> None:
        tls = config.security.tls
        self._server = uvicorn.Server(uvicorn.Config(
            app, host=config.web.host, port=config.web.port, log_level="warning",
            access_log=False, lifespan="off",
            ssl_certfile=str(tls.certificate) if tls.enabled and tls.certificate else None,
            ssl_keyfile=str(tls.private_key) if tls.enabled and tls.private_key else None))
        self._thread = threading.Thread(target=self._server.run, name="bpr-web", daemon=True)
        self.https = tls.enabled

    def start(self) -> None:
        """Serve; returns once the port is bound.

        Raises
        ------
        OSError
            If uvicorn could not start (port taken, certificate unreadable).
        """
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError("the web view could not start (is web.port free?)")
            time.sleep(0.05)

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(timeout=10)
