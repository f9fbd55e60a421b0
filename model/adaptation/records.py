"""What the node hands to an adaptation run and gets back (light: no torch, no training code).

:mod:`model.api` exports these; :mod:`model.adaptation.run` does the work.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class AdaptSeries:
    """One series offered for adaptation.

    Attributes
    ----------
    key : str
        What the report calls it (a SeriesInstanceUID, an index key or an input path).
    patient : str
        The patient it belongs to (PatientID or the input path); only its hash is written.
    paths : tuple of Path
        Its DICOM files, or one NIfTI file or folder.
    """

    key: str
    patient: str
    paths: tuple[Path, ...]


def patient_hash(patient: str) -> str:
    """A short, stable pseudonym of a patient key (reports never hold the key itself)."""
    return hashlib.sha256(patient.encode("utf-8")).hexdigest()[:12]


class AdaptError(ValueError):
    """The run cannot start: too few qualifying series or patients, or unusable weights."""


@dataclass(frozen=True)
class AdaptSettings:
    """How one run fine-tunes and judges (defaults: the shipped model's fine-tuning recipe).

    Attributes
    ----------
    steps : int
        Optimizer steps of the fine-tuning.
    threads : int
        torch CPU threads (0: torch's default).
    holdout_fraction : float
        Share of the patients held out to judge the candidate.
    min_patients : int
        Fewer qualifying patients stop the run (:class:`AdaptError`).
    max_series : int
        At most this many series are read (the first given: the caller orders them).
    volumes_per_batch : int
        Series per training step.
    lr, anchor_weight, retain_weight, alpha_distance : float
        As for ``bpr train`` (:class:`~model.training.train.TrainConfig`); the defaults are
        the shipped model's stage-2 recipe (model card, Reproduce), so a site's copy is
        trained as the model it adapts was; its scale anchors are left out (a site's series
        rarely show both ends of a region, and the abdomen extension needs the training
        set's abdomen length), so a site's copy is held by the landmark anchors alone.
    validate_on_shared_data : bool
        Also compare the validation LMSE on ``../shared/data`` when it is present.
    seed : int
    """

    steps: int = 400
    threads: int = 0
    holdout_fraction: float = 0.25
    min_patients: int = 4
    max_series: int = 500
    volumes_per_batch: int = 32
    lr: float = 1e-4
    anchor_weight: float = 1.0
    retain_weight: float = 2.0
    alpha_distance: float = 0.3
    validate_on_shared_data: bool = True
    seed: int = 0


@dataclass(frozen=True)
class AdaptReport:
    """What a run made and decided (the content of ``report.json`` is ``document``)."""

    run_dir: Path
    weights: Path
    version: str
    parent_version: str
    promoted: bool
    reason: str
    n_series: int
    n_patients: int
    document: dict[str, Any] = field(repr=False)
