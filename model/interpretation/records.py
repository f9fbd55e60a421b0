"""What the node needs of one analyzed volume, in plain values: :class:`VolumeRecord`.

The node writes its index rows and its Structured Report from these records alone, so the
rules that read a :class:`~model.interpretation.analysis.BodyPartResult` live here, once:
which code names a region (the one CID 4031 table, ``model/data/dicom_body_parts.csv``),
which concept and Yes/No/Undetermined value each sanity flag gets
(``model/data/sanity_flags.csv``), and that a check the model left undecided is
Undetermined, never No.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from model.interpretation.analysis import BodyPartResult
from model.interpretation.bodypart import REGIONS, dicom_terms
from model.interpretation.sanity import AnomalyCode

#: Value of a sanity flag: found, checked and not found, or not decidable on this curve.
FlagState = Literal["yes", "no", "undetermined"]


@dataclass(frozen=True)
class Coded:
    """A coded concept: (code value, coding scheme designator, code meaning)."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class RegionRecord:
    """One contiguous run of slices of a clinical region named by the corrected term.

    A region the series shows in several stretches (slices removed between them) gives one
    record per stretch, ``part`` 1, 2, … of ``parts``; never one min-max span.

    Attributes
    ----------
    name : str
        Region name (``legs``, ``pelvis``, ``abdomen``, ``chest``, ``neck``, ``head``).
    code : Coded
        Its CID 4031 SNOMED CT code.
    slice_indices : tuple of int
        Consecutive slices of the run, in the volume's slice order (feet → head).
    z_min_mm, z_max_mm : float
        Patient z range of those slices.
    min_score, max_score : float or None
        Lowest and highest cleaned score among them (None when none is left after cleaning).
    """

    name: str
    code: Coded
    slice_indices: tuple[int, ...]
    z_min_mm: float
    z_max_mm: float
    min_score: float | None
    max_score: float | None
    part: int = 1
    parts: int = 1

    @property
    def label(self) -> str:
        """The region name, with the part number when the region has several runs."""
        return self.name if self.parts == 1 else f"{self.name} part {self.part}"


@dataclass(frozen=True)
class FlagRecord:
    """One sanity check: its anomaly code, its report concept and its value."""

    name: str
    concept: Coded
    state: FlagState


@dataclass(frozen=True)
class VolumeRecord:
    """The node-facing result of one CT volume.

    Attributes
    ----------
    body_part_examined : str or None
        A DICOM BodyPartExamined defined term; None when a sanity check withholds it.
    body_part_code : Coded or None
        The term's SNOMED CT code.
    regions : tuple of RegionRecord
        Regions found, feet → head.
    flags : tuple of FlagRecord
        Every sanity check, in the order of ``model/data/sanity_flags.csv``.
    anomalies : tuple of str
        Codes of the anomalies raised (sorted, each once).
    model_version : str
    n_slices : int
    slice_sop_instance_uids : tuple of str
        SOP Instance UID of each slice, in slice order; a multi-frame instance repeats its
        UID once per frame.
    document : dict
        The full strict-JSON result (schema ``model/schema/bpr-result.schema.json``).
    """

    body_part_examined: str | None
    body_part_code: Coded | None
    regions: tuple[RegionRecord, ...]
    flags: tuple[FlagRecord, ...]
    anomalies: tuple[str, ...]
    model_version: str
    n_slices: int
    slice_sop_instance_uids: tuple[str, ...]
    document: dict[str, Any]


@dataclass(frozen=True)
class _FlagRule:
    concept: Coded
    #: BodyPartResult attribute that is None when the model could not decide this check.
    undecided_when: str


@lru_cache(maxsize=1)
def _flag_rules() -> dict[str, _FlagRule]:
    text = (resources.files("model") / "data" / "sanity_flags.csv").read_text(encoding="utf-8")
    rules = {r["anomaly"]: _FlagRule(Coded(r["code_value"], r["coding_scheme"], r["code_meaning"]),
                                     r["undecided_when"])
             for r in csv.DictReader(text.splitlines())}
    missing = {c.value for c in AnomalyCode} ^ set(rules)
    if missing:
        raise ValueError(f"sanity_flags.csv and AnomalyCode disagree on {sorted(missing)}")
    return rules


@lru_cache(maxsize=1)
def region_codes() -> dict[str, Coded]:
    """Model region → its CID 4031 code: the defined term that names that region alone."""
    codes = {term.regions[0]: Coded(term.snomed_code, term.scheme, term.snomed_meaning)
             for term in dicom_terms().values() if len(term.regions) == 1}
    return {region: codes[region] for region in REGIONS}


def private_coding_scheme() -> str:
    """Designator of the coding scheme of the flag concepts (one scheme for all of them)."""
    schemes = {rule.concept.scheme for rule in _flag_rules().values()}
    if len(schemes) != 1:
        raise ValueError(f"sanity_flags.csv must use one coding scheme, has {sorted(schemes)}")
    return schemes.pop()


def volume_record(result: BodyPartResult, slice_sop_instance_uids: tuple[str, ...]
                  ) -> VolumeRecord:
    """The node-facing record of one analyzed volume."""
    if len(slice_sop_instance_uids) != result.n_slices:
        raise ValueError(f"{len(slice_sop_instance_uids)} SOP Instance UIDs for "
                         f"{result.n_slices} slices")
    term = result.snomed
    return VolumeRecord(
        body_part_examined=result.body_part_examined,
        body_part_code=None if term is None else Coded(term.snomed_code, term.scheme,
                                                       term.snomed_meaning),
        regions=_regions(result), flags=_flags(result),
        anomalies=tuple(sorted({a.code.value for a in result.anomalies})),
        model_version=result.model_version, n_slices=result.n_slices,
        slice_sop_instance_uids=slice_sop_instance_uids, document=result.to_json_dict())


def _regions(result: BodyPartResult) -> tuple[RegionRecord, ...]:
    """Runs of the clinical regions the corrected term names (none when it is withheld)."""
    codes = region_codes()
    records = []
    for name in REGIONS:
        region = result.clinical_regions.get(name)
        if region is None or name not in result.term_regions or not region.runs:
            continue
        for part, run in enumerate(region.runs, start=1):
            indices = tuple(range(run.first, run.last + 1))
            scores = [s for s in (result.cleaned_scores[i] for i in indices) if s is not None]
            records.append(RegionRecord(
                name=name, code=codes[name], slice_indices=indices,
                z_min_mm=run.z_first_mm, z_max_mm=run.z_last_mm,
                min_score=min(scores, default=None), max_score=max(scores, default=None),
                part=part, parts=len(region.runs)))
    return tuple(records)


def _flags(result: BodyPartResult) -> tuple[FlagRecord, ...]:
    present = {a.code.value for a in result.anomalies}
    records = []
    for name, rule in _flag_rules().items():
        # "No" would claim a check that did not take place on a flat or too short curve.
        undecided = bool(rule.undecided_when) and getattr(result, rule.undecided_when) is None
        state: FlagState = "yes" if name in present else "undetermined" if undecided else "no"
        records.append(FlagRecord(name, rule.concept, state))
    return tuple(records)
