"""The DICOM Structured Report written for every analyzed series.

:func:`build_sr` turns a :class:`~model.api.SeriesAnalysis` into a TID 1500 Measurement
Report (Comprehensive 3D SR) in the study of the source series, in an SR series of its own.
Everything comes from the analysis: the model's records give the codes, the flags and their
values, and the headers the reader kept give the evidence, so no file is read again.

* one TID 1501 measurement group per body region found: tracking identifier, the region's
  CID 4031 SNOMED CT code as finding site, the source images of its slices, and the
  inferior/superior slice position (mm), the lowest/highest slice score and the slice count;
* one group for the whole series: the BodyPartExamined term as "Target Region" (when the
  model gives one), whether any region was found, and one Yes/No/Undetermined flag per
  sanity check of the model, with the model's concept for it.

UIDs are derived, not random, so that re-sending an unchanged series reproduces the SR
(receivers treat it as the same instance) and new instances of the series give a new SR
instance in the same SR series.

Concepts without a standard code use the model's private coding scheme :data:`SCHEME`
(declared in the Coding Scheme Identification Sequence).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_node.config import SRConfig
from model.api import Coded, SeriesAnalysis, VolumeRecord, private_coding_scheme

ALGORITHM_NAME = "bpr-node body part regression"
#: Private coding scheme of the concepts below that have no standard code (the model's,
#: which also codes its sanity flags).
SCHEME = private_coding_scheme()
#: Fixed first entropy source of every derived UID, so that ours never collide with UIDs
#: derived the same way by other software from the same source UIDs.
_UID_NAMESPACE = "bpr-node structured report"

#: Measurements of a region group.
INFERIOR_Z = Code("BPR0001", SCHEME, "Inferior slice position of region")
SUPERIOR_Z = Code("BPR0002", SCHEME, "Superior slice position of region")
MIN_SCORE = Code("BPR0003", SCHEME, "Lowest slice score in region")
MAX_SCORE = Code("BPR0004", SCHEME, "Highest slice score in region")
SLICE_COUNT = Code("BPR0005", SCHEME, "Number of slices in region")
#: Qualitative evaluation of the series group: was any region found.
REGION_FOUND = Code("BPR0010", SCHEME, "Body region found")
MM = Code("mm", "UCUM", "mm")
SCORE = Code("{score}", "UCUM", "score")
SLICES = Code("{slices}", "UCUM", "slices")
YES, NO, UNDETERMINED = codes.SCT.Yes, codes.SCT.No, codes.SCT.Undetermined
#: Value of each model flag state.
FLAG_VALUES: dict[str, Code] = {"yes": YES, "no": NO, "undetermined": UNDETERMINED}

# highdicom warns about one-component patient names and quotes the name; warnings may be
# routed into the node's logs, which must hold no PHI.
warnings.filterwarnings("ignore", message=r".*unlikely to represent the intended person name",
                        category=UserWarning)


def build_sr(analysis: SeriesAnalysis, settings: SRConfig) -> Dataset:
    """Measurement Report of one analyzed series.

    Parameters
    ----------
    analysis : SeriesAnalysis
        :func:`model.api.analyze_series` of the series' files; its headers are the SR's
        evidence and give its patient and study attributes.
    settings : SRConfig
        Series number and description, manufacturer and institution of the SR.

    Returns
    -------
    pydicom.Dataset
        A Comprehensive 3D SR instance with file meta, ready for ``dcmwrite``.

    Raises
    ------
    ValueError
        If the analysis has no volume or no header, if the headers span several series or
        lack the study UID, or if a volume references an instance not among the headers.
    """
    if not analysis.volumes:
        raise ValueError("the analysis has no result to report")
    series_uid, study_uid = _source_series(analysis.headers)
    headers = sorted(analysis.headers, key=lambda h: str(h.SOPInstanceUID))
    sop_classes = {str(h.SOPInstanceUID): str(h.SOPClassUID) for h in headers}
    sop_uids = sorted(sop_classes)  # an instance stored twice counts once
    version = analysis.volumes[0].model_version
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=version)
    several = len(analysis.volumes) > 1
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations] = []
    for number, volume in enumerate(analysis.volumes, start=1):
        missing = set(volume.slice_sop_instance_uids) - set(sop_classes)
        if missing:
            raise ValueError(f"{len(missing)} analyzed instance(s) are not among the headers")
        references = [(sop_classes[u], u) for u in volume.slice_sop_instance_uids]
        groups += _groups(volume, references, algorithm, series_uid,
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


def _groups(volume: VolumeRecord, references: Sequence[tuple[str, str]],
            algorithm: hd.sr.AlgorithmIdentification, series_uid: str, label: str
            ) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """Region groups and the whole-series group of one volume.

    ``references`` holds (SOP Class UID, SOP Instance UID) per slice of the volume.
    """

    def images(indices: Iterable[int]) -> list[hd.sr.SourceImageForMeasurementGroup]:
        # A multi-frame instance holds many slices; it is referenced once.
        unique = dict.fromkeys(references[i] for i in indices)
        return [hd.sr.SourceImageForMeasurementGroup(c, u) for c, u in unique]

    groups = []
    for region in volume.regions:
        values = [(INFERIOR_Z, region.z_min_mm, MM), (SUPERIOR_Z, region.z_max_mm, MM),
                  (MIN_SCORE, region.min_score, SCORE), (MAX_SCORE, region.max_score, SCORE),
                  (SLICE_COUNT, len(region.slice_indices), SLICES)]
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(series_uid, label + region.label),
            algorithm_id=algorithm,
            finding_sites=[hd.sr.FindingSite(_code(region.code))],
            measurements=[hd.sr.Measurement(name=n, value=v, unit=u)
                          for n, v, u in values if v is not None],
            source_images=images(region.slice_indices)))

    evaluations = [] if volume.body_part_code is None else [
        hd.sr.QualitativeEvaluation(codes.DCM.TargetRegion, _code(volume.body_part_code))]
    evaluations.append(hd.sr.QualitativeEvaluation(REGION_FOUND,
                                                   YES if volume.regions else NO))
    evaluations += [hd.sr.QualitativeEvaluation(_code(flag.concept), FLAG_VALUES[flag.state])
                    for flag in volume.flags]
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(series_uid, label + "whole series"),
        algorithm_id=algorithm, qualitative_evaluations=evaluations,
        source_images=images(range(len(references)))))
    return groups


def _code(coded: Coded) -> Code:
    return Code(coded.value, coded.scheme, coded.meaning)


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
