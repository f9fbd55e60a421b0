"""Who may do what: peer permissions, the association checks, and TLS.

Association-level checks: the called AE title and the association limit are pynetdicom
settings applied by :func:`dicom_node.application_entity.build_ae`; the calling AE allow-list
is :func:`calling_ae_gate`, which also lets anyone verify the connection (C-ECHO) when
``security.always_allow_echo`` is on, as Orthanc's ``DicomAlwaysAllowEcho`` does: a
verification carries no data. Per-service permissions are checked in each handler with
:func:`allowed`; a handler answers :data:`~dicom_node.statuses.NOT_AUTHORIZED` when it is
false.
"""

from __future__ import annotations

import ssl

from pynetdicom import evt
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.config import NodeConfig, Permission
from dicom_node.headers import ae_title

#: A-ASSOCIATE-RJ: rejected-permanent, service-user, "calling AE title not recognised".
REJECT_CALLING_AE = (0x01, 0x01, 0x03)


def calling_ae_gate(config: NodeConfig) -> EventHandlerType:
    """The ``EVT_REQUESTED`` handler that refuses unknown calling AE titles.

    With ``security.require_known_peers`` an association from an AE title not listed in
    ``peers`` is rejected ("calling AE title not recognised"), unless
    ``security.always_allow_echo`` is on and it proposes Verification only. A peer that is
    let in that way can do nothing but C-ECHO.
    """
    known = {p.ae_title for p in config.peers}
    verification = str(Verification)

    def gate(event: Event) -> None:
        if not config.security.require_known_peers:
            return
        request = event.assoc.requestor.primitive
        if request is None or ae_title(request.calling_ae_title) in known:
            return
        proposed = {str(cx.abstract_syntax) for cx in
                    request.presentation_context_definition_list}
        if config.security.always_allow_echo and proposed == {verification}:
            return
        event.assoc.acse.send_reject(*REJECT_CALLING_AE)
        # as pynetdicom's own rejection does: the DUL sends the A-ASSOCIATE-RJ before the
        # connection closes
        event.assoc.kill()

    return (evt.EVT_REQUESTED, gate)


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
