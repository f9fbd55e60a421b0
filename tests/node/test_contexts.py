"""The node's AE factory and the contexts it accepts and proposes (dicom_node.contexts)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from dicom_node.application_entity import build_ae
from dicom_node.config import config_from_dict
from dicom_node.contexts import MAX_CONTEXTS, fit_contexts, forward_contexts


@dataclass(frozen=True)
class Stored:
    sop_class_uid: str
    transfer_syntax_uid: str


def test_build_ae_applies_the_configuration(tmp_path: Path) -> None:
    config = config_from_dict({
        "network": {"ae_title": "NODE_X", "max_associations": 3, "dimse_timeout_s": 7},
        "peers": [{"ae_title": "PACS"}, {"ae_title": "CT1"}],
    }, tmp_path)
    ae = build_ae(config)
    assert (ae.ae_title, ae.maximum_associations, ae.dimse_timeout) == ("NODE_X", 3, 7)
    # the calling AE allow-list is the association gate of dicom_node.security (C-ECHO policy)
    assert ae.require_called_aet and ae.require_calling_aet == []
    assert ae.requested_contexts == []
    supported = {str(cx.abstract_syntax): cx for cx in ae.supported_contexts}
    assert Verification in supported and StudyRootQueryRetrieveInformationModelGet in supported
    # A C-GET requestor acts as Storage SCP for what it retrieves.
    assert supported[CTImageStorage].scp_role and not supported[CTImageStorage].scu_role


def test_unknown_peers_are_let_through_when_not_required(tmp_path: Path) -> None:
    config = config_from_dict({"security": {"require_known_peers": False}}, tmp_path)
    assert build_ae(config).require_calling_aet == []


def test_forward_contexts_offer_what_pynetdicom_can_convert() -> None:
    assert forward_contexts(Stored(CTImageStorage, ImplicitVRLittleEndian)) == [
        (CTImageStorage, (ImplicitVRLittleEndian, ExplicitVRLittleEndian))]
    assert forward_contexts(Stored(CTImageStorage, "")) == [
        (CTImageStorage, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))]
    assert forward_contexts(Stored(CTImageStorage, JPEGBaseline8Bit)) == [
        (CTImageStorage, (JPEGBaseline8Bit,))]
    assert len(forward_contexts(Stored(CTImageStorage, RLELossless))) == 1


def test_fit_contexts_leaves_out_what_one_association_cannot_carry() -> None:
    items = [Stored(f"1.2.3.{n}", ExplicitVRLittleEndian) for n in range(MAX_CONTEXTS + 5)]
    items.insert(1, items[0])  # same contexts as the first: proposed once
    contexts, kept = fit_contexts(items, forward_contexts)
    assert len(contexts) == MAX_CONTEXTS
    assert kept == items[:MAX_CONTEXTS + 1]
