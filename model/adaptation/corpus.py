"""Which received series a model may learn from, and the hold-out that judges it.

A series qualifies when the active model's analysis trusts it (:func:`refusal`): it is CT, the
model places it (a DICOM term, no error anomaly), its slices are not reversed and it is not a
stacked series. Thin and thick reconstructions of one scan, or a scan sent twice, would
weigh one patient several times, so each patient keeps one series per corrected term, the one
with the longest z extent (:func:`one_per_patient_and_term`). The hold-out is a fixed share
of the patients, chosen by a hash of the patient key (:func:`split_by_patient`), so the same
patient never trains and judges one run and repeated runs agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.adaptation.records import AdaptSeries, patient_hash
from model.interpretation.analysis import BodyPartResult, analyze
from model.reading.dicom import read_dicom_series
from model.reading.load import load_volumes
from model.reading.volume import CTInputError, CTVolume
from model.scoring import preprocess
from model.scoring.inference import BodyPartRegressor
from model.training.anchors import find_anchors
from model.training.dataset import TrainVolume

#: Thinner slices are decimated to about this spacing before they are kept in memory: order
#: training samples slices 5-100 mm apart, and a 0.6 mm series would otherwise hold 4× the
#: slices it needs (32 KiB each).
KEEP_SPACING_MM = 2.5


@dataclass
class PreparedSeries:
    """A qualifying series, preprocessed once for training and for the guard metrics."""

    key: str
    patient: str
    term: str
    volume: TrainVolume


def read_main_volume(series: AdaptSeries) -> CTVolume:
    """The CT volume with the most slices among the files of ``series``.

    Raises
    ------
    CTInputError
        When the files hold no readable CT volume.
    """
    if len(series.paths) == 1:
        loaded = load_volumes(series.paths[0])
        volumes, errors = loaded.volumes, loaded.errors
    else:
        read = read_dicom_series(list(series.paths))
        volumes, errors = read.volumes, read.errors
    if not volumes:
        raise CTInputError("; ".join(errors[:3]) or "no readable CT volume")
    return max(volumes, key=lambda v: len(v.z_mm))


def refusal(result: BodyPartResult) -> str | None:
    """Why the analysis ``result`` makes its series unfit for training (None: fit)."""
    errors = sorted({a.code.value for a in result.anomalies if a.severity.value == "error"})
    if errors:
        return "error anomaly: " + ", ".join(errors)
    if result.reverse_z_ordering:
        return "reversed slice order"
    if result.body_part_examined is None:
        return "no body part term"
    return None


def prepare(series: AdaptSeries, regressor: BodyPartRegressor) -> PreparedSeries | str:
    """Analyze ``series`` with the active model and preprocess it; the refusal reason when it
    does not qualify."""
    try:
        volume = read_main_volume(series)
    except CTInputError as exc:
        return f"unreadable: {exc}"
    result = analyze(volume, regressor)
    reason = refusal(result)
    if reason is not None:
        return reason
    keep = _decimation(volume.z_mm)
    thinned = CTVolume(volume.hu[keep], volume.z_mm[keep], volume.pixel_spacing_mm,
                       volume.source)
    slices = preprocess.preprocess_slices(thinned.hu, thinned.pixel_spacing_mm)
    train_volume = TrainVolume(series.key, slices.astype(np.float16), thinned.z_mm,
                               group=patient_hash(series.patient),
                               anchors=find_anchors(thinned))
    assert result.body_part_examined is not None  # refusal() checked it
    return PreparedSeries(series.key, series.patient, result.body_part_examined, train_volume)


def _decimation(z_mm: np.ndarray) -> np.ndarray:
    """Every k-th slice, with k the largest step that keeps the spacing ≤ the kept spacing."""
    spacing = float(np.median(np.diff(z_mm))) if len(z_mm) > 1 else KEEP_SPACING_MM
    step = max(1, int(KEEP_SPACING_MM // spacing)) if spacing > 0 else 1
    return np.arange(0, len(z_mm), step)


def one_per_patient_and_term(series: Sequence[PreparedSeries]) -> list[PreparedSeries]:
    """Per patient and corrected term, the series with the longest z extent (input order kept)."""
    best: dict[tuple[str, str], PreparedSeries] = {}
    for s in series:
        key = (s.patient, s.term)
        if key not in best or _extent(s) > _extent(best[key]):
            best[key] = s
    chosen = {id(s) for s in best.values()}
    return [s for s in series if id(s) in chosen]


def _extent(s: PreparedSeries) -> float:
    return float(s.volume.z_mm[-1] - s.volume.z_mm[0])


def split_by_patient(series: Sequence[PreparedSeries], holdout_fraction: float
                     ) -> tuple[list[PreparedSeries], list[PreparedSeries]]:
    """(train, hold-out): the first ⌈fraction · patients⌉ patients in hash order are held out.

    At least one patient goes to each side when there are two or more.
    """
    patients = sorted({s.patient for s in series}, key=patient_hash)
    n_holdout = math.ceil(holdout_fraction * len(patients))
    if len(patients) >= 2:
        n_holdout = min(max(n_holdout, 1), len(patients) - 1)
    held = set(patients[:n_holdout])
    return ([s for s in series if s.patient not in held],
            [s for s in series if s.patient in held])
