"""The node's Application Entity: built by one factory, served behind guards and TLS.

:func:`build_ae` makes the AE from the configuration — AE title, association limit, the
timeouts and PDU size of ``network`` (:meth:`~dicom_node.config.NetworkConfig.apply_to`), the
association checks of ``security`` and the contexts it accepts
(:func:`dicom_node.contexts.add_supported_contexts`). The server listens with it and the
forwarder requests with one: the contexts it proposes are chosen per association
(:mod:`dicom_node.contexts`) and passed to ``AE.associate``. TLS belongs to the listening
socket in pynetdicom, not to the AE, so :func:`listen` applies it
(:func:`dicom_node.security.server_ssl_context`); plain TCP connections acknowledge what they
receive at once (:class:`QuickAckSocket`), so senders that leave Nagle's algorithm on are not
held back by delayed acknowledgements.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
from typing import Any

from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.config import NodeConfig
from dicom_node.contexts import add_supported_contexts
from dicom_node.security import calling_ae_gate, server_ssl_context

# pynetdicom logs whole C-FIND/C-MOVE identifiers (patient names, IDs) by default: no PHI in logs.
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False


def build_ae(config: NodeConfig) -> AE:
    """The node's Application Entity, configured as ``config`` says (not yet listening).

    Parameters
    ----------
    config : NodeConfig
        ``network`` (title, association limit, timeouts, PDU size), ``security`` (called AE
        check, known peers only) and ``peers``.

    Returns
    -------
    AE
        Accepting Verification, every storage class (also as SCP of C-GET sub-operations)
        and the Query/Retrieve classes; it requests nothing by default.
    """
    net = config.network
    ae = AE(ae_title=net.ae_title)
    ae.maximum_associations = net.max_associations
    net.apply_to(ae)
    ae.require_called_aet = config.security.check_called_ae
    # the calling AE allow-list is security.calling_ae_gate (it lets C-ECHO through)
    add_supported_contexts(ae)
    return ae


def listen(ae: AE, config: NodeConfig, handlers: list[EventHandlerType]
           ) -> ThreadedAssociationServer:
    """Serve ``ae`` on ``network.host``/``port`` with TLS when configured (not yet accepting).

    Call ``serve_forever`` on the result in a thread of its own; ``shutdown`` stops it.
    """
    net = config.network
    server: ThreadedAssociationServer = ae.make_server(
        (net.host, net.port), ssl_context=server_ssl_context(config),
        server_class=GuardedAssociationServer, socket_timeout_s=net.network_timeout_s,
        evt_handlers=[calling_ae_gate(config), *handlers])
    return server


#: Linux's TCP_QUICKACK; None where the platform has no such option.
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class QuickAckSocket(socket.socket):
    """An accepted TCP connection that acknowledges what it receives at once.

    Senders built on DCMTK (``storescu``, and many modalities and archives) leave Nagle's
    algorithm on, so the last segment of every C-STORE waits until the one before it is
    acknowledged, and Linux delays acknowledgements by up to 40 ms: about 20 instances per
    second, whatever the receiver does. Linux drops quick-ack mode by itself, so it is
    re-armed after every receive; with it the same sender delivers several times as many
    (``benchmarks.bench_ingest``). Where the option does not exist this is a plain socket.
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if _QUICKACK is not None and data:
            with contextlib.suppress(OSError):  # only an optimisation; the read succeeded
                self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return data


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with two guards against peers that stall.

    pynetdicom does the TLS handshake on the single accept thread and leaves accepted sockets
    without a timeout, so one silent TCP connection blocks every TLS client, and a peer that
    stops in the middle of a PDU holds an association slot forever. Here every accepted socket
    gets ``socket_timeout_s`` and the handshake runs in the connection's own thread.
    """

    def __init__(self, ae: AE, address: tuple[str, int], ae_title: str, contexts: Any,
                 ssl_context: ssl.SSLContext | None = None, *, socket_timeout_s: float,
                 **kwargs: Any) -> None:
        self._tls_context = ssl_context
        self._socket_timeout_s = socket_timeout_s
        super().__init__(ae, address, ae_title, contexts, None, **kwargs)

    def shutdown(self) -> None:
        """Stop serving and close the socket (built by make_server, the AE does not list it)."""
        socketserver.TCPServer.shutdown(self)
        self.server_close()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept without the handshake (that would block the accept loop)."""
        assert self.socket is not None
        client, address = self.socket.accept()
        if self._tls_context is None and client.family in (socket.AF_INET, socket.AF_INET6):
            # TLS reads the descriptor itself, past any Python recv: plain TCP only
            client = QuickAckSocket(client.family, client.type, client.proto,
                                    fileno=client.detach())
        client.settimeout(self._socket_timeout_s)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """TLS handshake (bounded by the socket timeout), then pynetdicom's handling."""
        if self._tls_context is not None:
            try:
                request = self._tls_context.wrap_socket(request, server_side=True)
            except OSError:  # ssl.SSLError and timeouts: a failed or stalled handshake
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)
