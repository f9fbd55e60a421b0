"""Who may do what: peer permissions, the association checks, and TLS.

Association-level checks (calling AE allow-list, called AE title, association limit) are
pynetdicom settings applied by :func:`dicom_node.application_entity.build_ae`; per-service
permissions are checked in each handler with :func:`allowed`; a handler answers
:data:`~dicom_node.statuses.NOT_AUTHORIZED` when it is false.
"""

from __future__ import annotations

import ssl

from dicom_node.config import NodeConfig, Permission


def allowed(config: NodeConfig, calling_ae: str, permission: Permission) -> bool:
    """True when the peer with this calling AE title may use the service.

    Unknown peers get every permission only when ``security.require_known_peers`` is off.
    """
    peer = config.peer(calling_ae)
    if peer is None:
        return not config.security.require_known_peers
    return permission in peer.permissions


def server_ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The TLS context of the listening port, or None when TLS is off."""
    tls = config.security.tls
    if not tls.enabled:
        return None
    assert tls.certificate is not None and tls.private_key is not None  # validated at start
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(tls.certificate), keyfile=str(tls.private_key))
    if tls.ca_certificates is not None:
        context.load_verify_locations(cafile=str(tls.ca_certificates))
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_NONE
    return context
