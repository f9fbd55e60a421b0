"""Accepted connections acknowledge at once, so Nagle-enabled senders are not held 40 ms."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.application_entity import QuickAckSocket, build_ae, listen
from dicom_node.config import config_from_dict
from tests.node_harness import free_port

QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def test_plain_tcp_associations_get_a_quick_ack_socket(tmp_path: Path) -> None:
    port = free_port()
    config = config_from_dict({"network": {"ae_title": "BPR_NODE", "host": "127.0.0.1",
                                           "port": port},
                               "peers": [{"ae_title": "ECHOSCU", "permissions": []}]},
                              tmp_path)
    seen: list[type] = []

    def on_echo(event: Any) -> int:
        seen.append(type(event.assoc.dul.socket.socket))
        return 0

    server = listen(build_ae(config), config, [(evt.EVT_C_ECHO, on_echo)])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        scu = AE("ECHOSCU")
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", port, ae_title="BPR_NODE")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        server.shutdown()
    assert seen == [QuickAckSocket]


@pytest.mark.skipif(QUICKACK is None, reason="TCP_QUICKACK is Linux-only")
def test_every_receive_rearms_quick_ack() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        receiver = QuickAckSocket(accepted.family, accepted.type, accepted.proto,
                                  fileno=accepted.detach())
        calls: list[tuple[int, int, int]] = []
        original = receiver.setsockopt
        receiver.setsockopt = lambda *a: (calls.append(a), original(*a))[1]  # type: ignore
        try:
            for chunk in (b"first", b"second"):
                sender.sendall(chunk)
                assert receiver.recv(64) == chunk
            assert calls == [(socket.IPPROTO_TCP, QUICKACK, 1)] * 2
        finally:
            sender.close()
            receiver.close()
