"""The DICOM Structured Report written for every analyzed series.

:func:`build_sr` turns a :class:`~model.api.SeriesAnalysis` into a TID 1500 Measurement
Report (Comprehensive 3D SR) in the study of the source series, in an SR series of its own:

* one TID 1501 measurement group per body region found: tracking identifier, the region's
  CID 4031 SNOMED CT code as finding site, the source images of its slices, and the
  inferior/superior slice position (mm), the lowest/highest slice score and the slice count;
* one group for the whole series: the BodyPartExamined term as "Target Region" (when the
  model gives one), whether any region was found, and one Yes/No/Undetermined flag per
  sanity check of the model (:data:`FLAG_CODES`).

UIDs are derived, not random, so that re-sending an unchanged series reproduces the SR
(receivers treat it as the same instance) and new instances of the series give a new SR
instance in the same SR series.

Concepts without a standard code use the private coding scheme :data:`SCHEME` (declared in
the Coding Scheme Identification Sequence).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_node.config import SRConfig
from model.api import SeriesAnalysis

if TYPE_CHECKING:
    from model.interpretation.analysis import BodyPartResult

ALGORITHM_NAME = "bpr-node body part regression"
#: Private coding scheme of the concepts below that have no standard code.
SCHEME = "99BPR"
#: Fixed first entropy source of every derived UID, so that ours never collide with UIDs
#: derived the same way by other software from the same source UIDs.
_UID_NAMESPACE = "bpr-node structured report"

#: Model regions → CID 4031 Common Anatomic Region (the codes of model/data/dicom_body_parts).
REGION_CODES: dict[str, Code] = {
    "legs": Code("61685007", "SCT", "Lower limb"),
    "pelvis": Code("816092008", "SCT", "Pelvis"),
    "abdomen": Code("818981001", "SCT", "Abdomen"),
    "chest": Code("816094009", "SCT", "Chest"),
    "neck": Code("45048000", "SCT", "Neck"),
    "head": Code("69536005", "SCT", "Head"),
}

#: Measurements of a region group.
INFERIOR_Z = Code("BPR0001", SCHEME, "Inferior slice position of region")
SUPERIOR_Z = Code("BPR0002", SCHEME, "Superior slice position of region")
MIN_SCORE = Code("BPR0003", SCHEME, "Lowest slice score in region")
MAX_SCORE = Code("BPR0004", SCHEME, "Highest slice score in region")
SLICE_COUNT = Code("BPR0005", SCHEME, "Number of slices in region")
#: Qualitative evaluation of the series group: was any region found.
REGION_FOUND = Code("BPR0010", SCHEME, "Body region found")
#: Flag concept per model anomaly code (``model.interpretation.sanity.AnomalyCode`` values).
FLAG_CODES: dict[str, Code] = {
    "no_body": Code("BPR0101", SCHEME, "No body in image"),
    "not_ct_like": Code("BPR0102", SCHEME, "Image values not CT-like"),
    "out_of_scope": Code("BPR0103", SCHEME, "Anatomy outside model range"),
    "reversed_z_ordering": Code("BPR0104", SCHEME, "Reversed z-ordering"),
    "invalid_z_spacing": Code("BPR0105", SCHEME, "Invalid z-spacing"),
    "discontinuity": Code("BPR0106", SCHEME, "Discontinuity along body axis"),
    "too_few_slices": Code("BPR0107", SCHEME, "Too few slices for slope check"),
}

MM = Code("mm", "UCUM", "mm")
SCORE = Code("{score}", "UCUM", "score")
SLICES = Code("{slices}", "UCUM", "slices")
YES, NO, UNDETERMINED = codes.SCT.Yes, codes.SCT.No, codes.SCT.Undetermined

# highdicom warns about one-component patient names and quotes the name; warnings may be
# routed into the node's logs, which must hold no PHI.
warnings.filterwarnings("ignore", message=r".*unlikely to represent the intended person name",
                        category=UserWarning)


def build_sr(analysis: SeriesAnalysis, source_headers: Sequence[Dataset],
             settings: SRConfig) -> Dataset:
    """Measurement Report of one analyzed series.

    Parameters
    ----------
    analysis : SeriesAnalysis
        :func:`model.api.analyze_series` of the series' files.
    source_headers : sequence of pydicom.Dataset
        Headers (pixel data not needed) of every stored instance of the series; they are
        the SR's evidence and give its patient and study attributes.
    settings : SRConfig
        Series number and description, manufacturer and institution of the SR.

    Returns
    -------
    pydicom.Dataset
        A Comprehensive 3D SR instance with file meta, ready for ``dcmwrite``.

    Raises
    ------
    ValueError
        If the headers are empty, span several series or lack the study UID, if the analysis
        has no result or references an instance not among the headers, or if the model
        reports an anomaly code missing from :data:`FLAG_CODES`.
    """
    series_uid, study_uid = _source_series(source_headers)
    if not analysis.results:
        raise ValueError("the analysis has no result to report")
    headers = sorted(source_headers, key=lambda h: str(h.SOPInstanceUID))
    sop_classes = {str(h.SOPInstanceUID): str(h.SOPClassUID) for h in headers}
    sop_uids = sorted(sop_classes)  # an instance stored twice counts once
    version = analysis.results[0].model_version
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=version)
    several = len(analysis.results) > 1
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations] = []
    for number, (result, slice_uids) in enumerate(
            zip(analysis.results, analysis.slice_sop_instance_uids, strict=True), start=1):
        missing = set(slice_uids) - set(sop_classes)
        if missing:
            raise ValueError(f"{len(missing)} analyzed instance(s) are not among the headers")
        references = [(sop_classes[u], u) for u in slice_uids]
        groups += _groups(result, references, algorithm, series_uid,
                          f"volume {number} " if several else "")

    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(settings),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=_evidence(headers),
        content=report[0],
        series_instance_uid=_uid("series", study_uid, series_uid),
        series_number=settings.series_number,
        # The analysis is of exactly this set of instances and this model: a new instance
        # or a new model gives a new SR instance, a repeated analysis the same one.
        sop_instance_uid=_uid("instance", study_uid, series_uid, version, *sop_uids),
        # Grows as instances arrive, so later reports of a series sort after earlier ones.
        instance_number=len(sop_uids),
        manufacturer=settings.manufacturer or None,
        institution_name=settings.institution_name or None,
        series_description=settings.series_description,
        is_complete=True,
        coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=SCHEME, name=ALGORITHM_NAME,
            responsible_organization=settings.manufacturer or None)],
    )


def _source_series(headers: Sequence[Dataset]) -> tuple[str, str]:
    """(SeriesInstanceUID, StudyInstanceUID) shared by all headers."""
    pairs = {(str(h.get("SeriesInstanceUID", "")), str(h.get("StudyInstanceUID", "")))
             for h in headers}
    if len(pairs) != 1:
        raise ValueError(f"the headers must belong to one series, got {len(pairs)}")
    series_uid, study_uid = pairs.pop()
    if not series_uid or not study_uid:
        raise ValueError("the source series has no SeriesInstanceUID or StudyInstanceUID")
    return series_uid, study_uid


def _evidence(headers: Sequence[Dataset]) -> list[Dataset]:
    """Headers with the Patient and Study attributes highdicom reads from the first one.

    They are type 2 (may be empty) in the image IODs, but some senders leave them out.
    The caller's header stays untouched: ``Dataset.copy`` would share its element dict.
    """
    first = Dataset()
    first.update(headers[0])
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                    "AccessionNumber", "StudyID", "StudyDate", "StudyTime"):
        if keyword not in first:
            setattr(first, keyword, None)
    return [first, *headers[1:]]


def _groups(result: BodyPartResult, references: Sequence[tuple[str, str]],
            algorithm: hd.sr.AlgorithmIdentification, series_uid: str, label: str
            ) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """Region groups and the whole-series group of one result.

    ``references`` holds (SOP Class UID, SOP Instance UID) per slice of the result.
    """

    def images(indices: Iterable[int]) -> list[hd.sr.SourceImageForMeasurementGroup]:
        # A multi-frame instance holds many slices; it is referenced once.
        unique = dict.fromkeys(references[i] for i in indices)
        return [hd.sr.SourceImageForMeasurementGroup(c, u) for c, u in unique]

    groups = []
    for region, found in result.regions.items():
        if found is None:
            continue
        if region not in REGION_CODES:
            raise ValueError(f"no CID 4031 code for region {region!r}")
        scores = [s for s in (result.cleaned_scores[i] for i in found.indices)
                  if s is not None]
        values = [(INFERIOR_Z, found.z_min_mm, MM), (SUPERIOR_Z, found.z_max_mm, MM),
                  (MIN_SCORE, min(scores, default=None), SCORE),
                  (MAX_SCORE, max(scores, default=None), SCORE),
                  (SLICE_COUNT, len(found.indices), SLICES)]
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(series_uid, label + region),
            algorithm_id=algorithm,
            finding_sites=[hd.sr.FindingSite(REGION_CODES[region])],
            measurements=[hd.sr.Measurement(name=n, value=v, unit=u)
                          for n, v, u in values if v is not None],
            source_images=images(found.indices)))

    evaluations = [] if result.snomed is None else [hd.sr.QualitativeEvaluation(
        codes.DCM.TargetRegion,
        Code(result.snomed.snomed_code, result.snomed.scheme, result.snomed.snomed_meaning))]
    found_any = any(r is not None for r in result.regions.values())
    evaluations.append(hd.sr.QualitativeEvaluation(REGION_FOUND, YES if found_any else NO))
    evaluations += [hd.sr.QualitativeEvaluation(FLAG_CODES[code], value)
                    for code, value in _flags(result).items()]
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(series_uid, label + "whole series"),
        algorithm_id=algorithm, qualitative_evaluations=evaluations,
        source_images=images(range(len(references)))))
    return groups


def _flags(result: BodyPartResult) -> dict[str, Code]:
    """Yes/No/Undetermined per anomaly code of :data:`FLAG_CODES` for one result."""
    present = {str(a.code) for a in result.anomalies}
    unknown = present - set(FLAG_CODES)
    if unknown:
        raise ValueError(f"no SR flag code for anomaly code(s) {sorted(unknown)}")
    # The model leaves these two checks undecided (None) for flat or too short curves;
    # "No" would claim a check that did not take place.
    undecided = {"reversed_z_ordering": result.reverse_z_ordering is None,
                 "invalid_z_spacing": result.valid_z_spacing is None}
    return {code: YES if code in present else UNDETERMINED if undecided.get(code) else NO
            for code in FLAG_CODES}


def _tracking(series_uid: str, label: str) -> hd.sr.TrackingIdentifier:
    # Derived from the source series and the label only, so that a region keeps its
    # tracking UID across reports (new instances, new model versions) of the series.
    return hd.sr.TrackingIdentifier(uid=_uid("tracking", series_uid, label), identifier=label)


def _observation_context(settings: SRConfig) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_uid("device observer"), name=ALGORITHM_NAME,
        manufacturer_name=settings.manufacturer or None, model_name=ALGORITHM_NAME)
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _uid(kind: str, *sources: str) -> str:
    """UID derived from ``sources``: the same inputs always give the same UID."""
    return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, kind, *sources]))
