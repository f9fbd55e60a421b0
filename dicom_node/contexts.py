"""Presentation contexts: what the node accepts as SCP and what it proposes as SCU.

Accepted (:func:`add_supported_contexts`, on the node's Application Entity):

- Verification;
- every storage SOP class in every transfer syntax, with ``scp_role=True``: a C-GET requestor
  acts as Storage SCP for what it retrieves, over its own association;
- the Query/Retrieve SOP classes pynetdicom knows (the handlers answer
  :data:`~dicom_node.statuses.SOP_CLASS_NOT_SUPPORTED` for models other than Patient Root and
  Study Root).

Proposed, one list per association (A-ASSOCIATE-RQ carries at most :data:`MAX_CONTEXTS`):

- forwarding an SR (:func:`forward_contexts`, :func:`fit_contexts`): the file's own transfer
  syntax, with the other uncompressed little-endian syntax beside it when pynetdicom can
  convert;
- C-MOVE sub-operations to a destination (:func:`move_contexts`): per SOP class the stored
  syntaxes, then Explicit and Implicit VR Little Endian;
- a C-MOVE that fails before any sub-operation (:func:`verification_contexts`), because
  pynetdicom connects to the destination before it reads the failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Protocol, TypeVar

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import (
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    QueryRetrievePresentationContexts,
    VerificationPresentationContexts,
    build_context,
)
from pynetdicom.presentation import PresentationContext

#: Most presentation contexts one A-ASSOCIATE-RQ may carry (PS3.8 9.3.2.2: odd IDs 1-255).
MAX_CONTEXTS: Final = 128
#: The uncompressed little-endian syntaxes, which pynetdicom converts between when sending.
UNCOMPRESSED: Final = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

#: A proposed context before it is built: SOP class UID and transfer syntaxes in order.
ContextSpec = tuple[str, tuple[UID, ...]]


class StoredSyntax(Protocol):
    """A stored instance as far as contexts go: its SOP class and transfer syntax."""

    @property
    def sop_class_uid(self) -> str:
        """SOP Class UID of the stored file."""

    @property
    def transfer_syntax_uid(self) -> str:
        """Transfer Syntax UID of the stored file ("" when unknown)."""


_Item = TypeVar("_Item", bound=StoredSyntax)


def add_supported_contexts(ae: Any) -> None:
    """Let ``ae`` accept Verification, every storage class and the Query/Retrieve classes."""
    for verification in _abstract_syntaxes(VerificationPresentationContexts):
        ae.add_supported_context(verification)
    for storage_class in _abstract_syntaxes(AllStoragePresentationContexts):
        # scp_role: a C-GET requestor acts as Storage SCP for what it retrieves.
        ae.add_supported_context(storage_class, ALL_TRANSFER_SYNTAXES,
                                 scu_role=False, scp_role=True)
    for query_class in _abstract_syntaxes(QueryRetrievePresentationContexts):
        ae.add_supported_context(query_class)


def forward_contexts(item: StoredSyntax) -> list[ContextSpec]:
    """Presentation contexts to propose for sending one stored file.

    Uncompressed little-endian files can be sent in either uncompressed syntax (pynetdicom
    converts), so both are offered in one context. Any other syntax gets a context of its own,
    so that a peer choosing among several syntaxes cannot pick one we cannot convert to.
    """
    syntax = UID(item.transfer_syntax_uid or ExplicitVRLittleEndian)
    if syntax in UNCOMPRESSED:
        ordered = (syntax, *(s for s in UNCOMPRESSED if s != syntax))
        return [(item.sop_class_uid, ordered)]
    contexts: list[ContextSpec] = [(item.sop_class_uid, (syntax,))]
    if not syntax.is_compressed and syntax.is_little_endian:
        contexts.append((item.sop_class_uid, UNCOMPRESSED))
    return contexts


def fit_contexts(items: Sequence[_Item], contexts_of: Callable[[_Item], list[ContextSpec]]
                 ) -> tuple[list[PresentationContext], list[_Item]]:
    """The contexts for as many ``items`` as one association can carry, in order.

    Returns
    -------
    (list of PresentationContext, list)
        The contexts to propose (each once), and the items they cover; an item whose
        contexts would pass :data:`MAX_CONTEXTS` is left out (for a later association).
    """
    specs: list[ContextSpec] = []
    kept: list[_Item] = []
    for item in items:
        wanted = [c for c in contexts_of(item) if c not in specs]
        if len(specs) + len(wanted) > MAX_CONTEXTS:
            continue
        specs.extend(wanted)
        kept.append(item)
    return [build_context(sop_class, list(syntaxes)) for sop_class, syntaxes in specs], kept


def move_contexts(instances: Iterable[StoredSyntax]) -> list[PresentationContext]:
    """Presentation contexts to propose to a move destination for these instances.

    One context per SOP class with the stored transfer syntaxes first, then Explicit and
    Implicit VR Little Endian (which pynetdicom converts between); at most
    :data:`MAX_CONTEXTS`.
    """
    syntaxes: dict[str, list[str]] = {}
    for item in instances:
        known = syntaxes.setdefault(item.sop_class_uid, [])
        if item.transfer_syntax_uid and item.transfer_syntax_uid not in known:
            known.append(item.transfer_syntax_uid)
    contexts = []
    for sop_class, stored in list(syntaxes.items())[:MAX_CONTEXTS]:
        offered = list(dict.fromkeys([*stored, *UNCOMPRESSED]))
        contexts.append(build_context(sop_class, offered))
    return contexts


def verification_contexts() -> list[PresentationContext]:
    """Verification only: for an association that will carry no sub-operation."""
    return [build_context(verification)
            for verification in _abstract_syntaxes(VerificationPresentationContexts)]


def _abstract_syntaxes(contexts: list[PresentationContext]) -> list[str]:
    return [str(c.abstract_syntax) for c in contexts if c.abstract_syntax]
