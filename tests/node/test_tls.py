"""TLS on the node's port: served with a certificate, refused in plain, no stall blocking others.

The certificates are made per module with the ``openssl`` command line tool
(:func:`tests.node.secure_node.make_pki`).
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tests.node.secure_node import (
    SUCCESS,
    Pki,
    client_context,
    echo,
    make_pki,
    running,
    tls_config,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_echo_and_plain_client_refused(tmp_path: Path, pki: Pki) -> None:
    with running(tmp_path, tls_config(tmp_path, pki, require_client_certificate=False)) as node:
        assert echo(node.port, tls=client_context(pki)) == SUCCESS
        assert echo(node.port) == -1, "a plain client was served on the TLS port"
        # The client certificate is optional here, but one that is offered is accepted.
        client = (pki.client_cert, pki.client_key)
        assert echo(node.port, tls=client_context(pki, client)) == SUCCESS
        assert echo(node.port, tls=client_context(pki)) == SUCCESS


def test_tls_with_required_client_certificate(tmp_path: Path, pki: Pki) -> None:
    with running(tmp_path, tls_config(tmp_path, pki, require_client_certificate=True)) as node:
        client = (pki.client_cert, pki.client_key)
        assert echo(node.port, tls=client_context(pki, client)) == SUCCESS
        assert echo(node.port, tls=client_context(pki)) == -1, "served without a certificate"
        foreign = (pki.foreign_cert, pki.foreign_key)
        assert echo(node.port, tls=client_context(pki, foreign)) == -1, \
            "served a certificate from another CA"
        assert echo(node.port) == -1, "a plain client was served on the TLS port"
        assert echo(node.port, tls=client_context(pki, client)) == SUCCESS


def test_tls_stalled_handshake_does_not_block_others(tmp_path: Path, pki: Pki) -> None:
    raw = tls_config(tmp_path, pki, require_client_certificate=False)
    raw["network"].update(acse_timeout_s=1.5, network_timeout_s=1.5)
    with running(tmp_path, raw) as node, \
            socket.create_connection(("127.0.0.1", node.port)) as _silent:
        # A peer that connects and never starts its TLS handshake must not stop the node
        # from serving everybody else.
        done: list[int] = []
        worker = threading.Thread(
            target=lambda: done.append(echo(node.port, tls=client_context(pki))), daemon=True)
        worker.start()
        worker.join(8)
        assert done == [SUCCESS], "the node stopped accepting while one TLS handshake stalled"

