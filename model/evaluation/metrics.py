"""Landmark metrics of a body part regressor (thesis §4.2), on plain numbers and arrays.

* the slice score reference table (eq. 4.11) and the calibration of the score scale on
  the lungs onto bpreg's published 0-100 scale (:func:`reference_table`,
  :func:`calibrate`, :func:`normalization_constant`);
* the landmark mean square error (LMSE, eq. 4.12-4.15) with its standard error and a
  z-test between two models (eq. 4.16);
* the 5-class accuracy (pelvis / abdomen / chest / neck / head, table 4.5) with the
  published bpreg class boundaries (:func:`score_classes`, :func:`truth_classes`,
  :func:`accuracy_summary`);
* monotonicity: Spearman ρ and R² of a straight-line fit of score against z per volume.

Nothing here reads a file or runs a network: :mod:`model.evaluation.evaluate` scores the
volumes and :mod:`model.evaluation.report` assembles the results.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model.evaluation.landmarks import LANDMARK_NAMES
from model.interpretation.bodypart import PUBLISHED_REFERENCE

FloatVector = npt.NDArray[np.float64]
IntVector = npt.NDArray[np.int64]
BoolVector = npt.NDArray[np.bool_]

#: Calibration anchors: our lung landmarks are bpreg's lung_start / lung_end.
CALIBRATION_ANCHORS: dict[str, str] = {"lung_bottom": "lung_start", "lung_top": "lung_end"}
#: Accuracy classes, feet → head.
CLASS_NAMES: tuple[str, ...] = ("pelvis", "abdomen", "chest", "neck", "head")
#: Published landmarks between consecutive classes, feet → head.
CLASS_BOUNDARY_LANDMARKS: tuple[str, ...] = ("pelvis_end", "lung_start", "lung_end", "C1")
#: Published scores of :data:`CLASS_BOUNDARY_LANDMARKS`.
CLASS_BOUNDARIES: tuple[float, ...] = tuple(
    PUBLISHED_REFERENCE[n] for n in CLASS_BOUNDARY_LANDMARKS
)

#: Ground truth per class: (class, landmarks, how, rule text); a class may have several
#: rules. "span": from the lowest to the highest of the landmarks present (at least two),
#: both ends included; "between": from the first landmark (included) up to the second
#: (excluded), matching the half-open published classes (a score equal to a boundary
#: belongs to the class above).
CLASS_TRUTH: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("pelvis", ("prostate_centre", "femoral_head_top", "bladder_top"), "span",
     "from the lowest to the highest of prostate_centre, femoral_head_top and bladder_top "
     "(at least two present): all lie inside the bony pelvis, so this is a subset of the "
     "pelvis class (pelvis_start..pelvis_end)"),
    ("pelvis", ("pelvis_bottom", "iliac_crest_top"), "between",
     "pelvis_bottom ≤ z < iliac_crest_top (image bone rules): the published pelvis class"),
    ("abdomen", ("liver_bottom", "lung_bottom"), "between",
     "liver_bottom ≤ z < lung_bottom: the liver's lower tip (≈ L2-L3) lies above the iliac "
     "crest (pelvis_end), so a subset of the abdomen class"),
    ("abdomen", ("iliac_crest_top", "lung_bottom"), "between",
     "iliac_crest_top ≤ z < lung_bottom: the published abdomen class (pelvis_end..lung_start)"),
    ("chest", ("lung_bottom", "lung_top"), "between",
     "lung_bottom ≤ z < lung_top: exactly the published chest class (lung_start..lung_end)"),
    ("neck", ("lung_top", "brainstem_bottom"), "between",
     "lung_top ≤ z < brainstem_bottom: the brainstem's lower end (foramen magnum) stands in "
     "for C1, about 1-2 cm lower, so a few head slices just above C1 count as neck"),
    ("head", ("brainstem_bottom", "brainstem_top"), "span",
     "brainstem_bottom ≤ z ≤ brainstem_top: inside the skull, a subset of the head class"),
)
#: Class rules for the model card (a class's rules joined by "or").
CLASS_RULES: dict[str, str] = {
    c: "; or ".join(rule for c2, _, _, rule in CLASS_TRUTH if c2 == c)
    for c in dict.fromkeys(c for c, _, _, _ in CLASS_TRUTH)
}
#: Class index of slices that no ground-truth rule (or more than one) assigns.
NO_CLASS = -1
#: How the LMSE is computed, for the model card.
LMSE_RULE = (
    "LMSE per volume φ_i = mean over its landmarks of ((reference − score) / d)², eq. 4.13, "
    "with d = (reference lung_top − reference lung_bottom) / (75.4 − 44.1): on the "
    "calibrated scale d = 1 score unit (1/100 of pelvis start → eyes end, ≈ 8.5 mm). Only "
    "landmarks with a reference value count; volumes without such landmarks are left out."
)


# --- reference table and calibration ------------------------------------------------------


@dataclass(frozen=True)
class LandmarkReference:
    """One row of the reference table: mean landmark score over n volumes (eq. 4.11)."""

    n: int
    mean: float
    sd: float | None  # sample standard deviation, None for n < 2


ReferenceTable = dict[str, LandmarkReference]


def reference_table(landmark_scores: Iterable[Mapping[str, float]]) -> ReferenceTable:
    """Slice score reference table (eq. 4.11).

    Parameters
    ----------
    landmark_scores : iterable of mapping of str to float
        Landmark name → score, one mapping per volume; pass the training volumes only, so
        the table is independent of the volumes it is used to measure.

    Returns
    -------
    dict of str to LandmarkReference
        Per landmark seen at least once: n, mean and sample standard deviation, in
        feet → head order.
    """
    values: dict[str, list[float]] = {}
    for scores in landmark_scores:
        for name, s in scores.items():
            values.setdefault(name, []).append(float(s))
    table = {}
    for name in landmark_order(values):
        v = np.asarray(values[name])
        sd = float(v.std(ddof=1)) if v.size > 1 else None
        table[name] = LandmarkReference(n=int(v.size), mean=float(v.mean()), sd=sd)
    return table


def landmark_order(names: Iterable[str]) -> list[str]:
    """``names`` feet → head (order of :data:`LANDMARK_NAMES`), unknown names last by name."""
    rank = {n: i for i, n in enumerate(LANDMARK_NAMES)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


class CalibrationError(ValueError):
    """The reference table cannot fix the score scale."""


def calibrate(reference: Mapping[str, LandmarkReference]) -> tuple[float, float]:
    """``(score_scale, score_offset)`` mapping raw output onto bpreg's published scale.

    Chosen so that ``scale · reference + offset`` is 44.1 for ``lung_bottom`` (bpreg's
    lung_start) and 75.4 for ``lung_top`` (lung_end).

    Parameters
    ----------
    reference : mapping of str to LandmarkReference
        Reference table of raw network output (:func:`reference_table`).

    Raises
    ------
    CalibrationError
        If either lung landmark is missing or both have the same reference score.
    """
    missing = [n for n in CALIBRATION_ANCHORS if n not in reference]
    if missing:
        raise CalibrationError(
            f"cannot calibrate: no reference score for {', '.join(missing)} "
            "(no training volume shows that landmark)"
        )
    lo, hi = reference["lung_bottom"].mean, reference["lung_top"].mean
    if not math.isfinite(hi - lo) or hi == lo:
        raise CalibrationError(
            f"cannot calibrate: lung_bottom and lung_top have the same reference score {lo}"
        )
    target_lo = PUBLISHED_REFERENCE[CALIBRATION_ANCHORS["lung_bottom"]]
    target_hi = PUBLISHED_REFERENCE[CALIBRATION_ANCHORS["lung_top"]]
    scale = (target_hi - target_lo) / (hi - lo)
    return scale, target_lo - scale * lo


def normalization_constant(reference: Mapping[str, LandmarkReference]) -> float:
    """d of eq. 4.12 from the lung span of the reference table (1.0 when calibrated)."""
    target_span = (PUBLISHED_REFERENCE[CALIBRATION_ANCHORS["lung_top"]]
                   - PUBLISHED_REFERENCE[CALIBRATION_ANCHORS["lung_bottom"]])
    if "lung_bottom" not in reference or "lung_top" not in reference:
        raise CalibrationError("the normalisation constant needs reference lung landmarks")
    return (reference["lung_top"].mean - reference["lung_bottom"].mean) / target_span


# --- LMSE ---------------------------------------------------------------------------------


def volume_lmse(
    landmark_scores: Mapping[str, float],
    reference: Mapping[str, LandmarkReference],
    d: float = 1.0,
) -> float | None:
    """Landmark mean square error φ_i of one volume (eq. 4.13).

    Parameters
    ----------
    landmark_scores : mapping of str to float
        The volume's score at each of its landmarks.
    reference : mapping of str to LandmarkReference
        Reference table; landmarks missing from it are skipped.
    d : float
        Normalisation constant of eq. 4.12 (1 on the calibrated scale).

    Returns
    -------
    float or None
        Mean of ((reference − score) / d)² over the landmarks, None when none counts.
    """
    errors = [((reference[n].mean - s) / d) ** 2
              for n, s in landmark_scores.items() if n in reference]
    return float(np.mean(errors)) if errors else None


@dataclass(frozen=True)
class LmseSummary:
    """Mean LMSE over volumes with its standard error (eq. 4.14-4.15)."""

    mean: float | None
    se: float | None  # None for n < 2
    n: int


def summarize_lmse(values: Sequence[float]) -> LmseSummary:
    """φ̄ = mean of φ_i (eq. 4.14) and σ_φ̄ = sd(φ_i, ddof 1) / √N (eq. 4.15)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return LmseSummary(None, None, 0)
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else None
    return LmseSummary(float(v.mean()), se, int(v.size))


def z_test(a: LmseSummary | tuple[float, float], b: LmseSummary | tuple[float, float]
           ) -> tuple[float, float]:
    """Two-sided z-test of two LMSEs (eq. 4.16): ``(t, p)``.

    ``t = (φ̄_a − φ̄_b) / √(σ_a² + σ_b²)`` is standard normal under equal performance;
    |t| > 1.96 rejects it at 5 %.

    Parameters
    ----------
    a, b : LmseSummary or (mean, standard error)

    Raises
    ------
    ValueError
        If a mean or standard error is missing, or both standard errors are zero.
    """
    (ma, sa), (mb, sb) = _mean_se(a), _mean_se(b)
    denom = math.sqrt(sa * sa + sb * sb)
    if denom == 0:
        raise ValueError("z-test needs a non-zero standard error")
    t = (ma - mb) / denom
    return t, math.erfc(abs(t) / math.sqrt(2.0))


def _mean_se(x: LmseSummary | tuple[float, float]) -> tuple[float, float]:
    if isinstance(x, LmseSummary):
        if x.mean is None or x.se is None:
            raise ValueError(f"z-test needs a mean and a standard error, got {x}")
        return x.mean, x.se
    return float(x[0]), float(x[1])


# --- accuracy -----------------------------------------------------------------------------


def score_classes(scores: npt.ArrayLike) -> IntVector:
    """Predicted class index (into :data:`CLASS_NAMES`) of calibrated slice scores."""
    idx = np.searchsorted(np.asarray(CLASS_BOUNDARIES), np.asarray(scores, np.float64),
                          side="right")
    return idx.astype(np.int64)


def _class_mask(z: FloatVector, names: tuple[str, ...], how: str,
                landmarks: Mapping[str, float]) -> BoolVector | None:
    """Slices that one ground-truth rule assigns to its class; None if it does not apply."""
    present = [landmarks[n] for n in names if n in landmarks]
    if how == "span":
        if len(present) < 2:
            return None
        inside: BoolVector = (z >= min(present)) & (z <= max(present))
        return inside
    if len(present) < len(names):
        return None
    lo, hi = present
    inside = (z >= lo) & (z < hi)
    return inside


def truth_classes(z_mm: npt.ArrayLike, landmarks: Mapping[str, float]) -> IntVector:
    """Ground-truth class per slice from the volume's landmarks, :data:`NO_CLASS` elsewhere.

    Rules: :data:`CLASS_RULES`. A slice that rules of two classes claim (inconsistent
    landmarks) gets no class.
    """
    z = np.asarray(z_mm, dtype=np.float64)
    claimed = np.zeros((len(CLASS_NAMES), z.size), dtype=bool)
    for cls, names, how, _ in CLASS_TRUTH:
        inside = _class_mask(z, names, how, landmarks)
        if inside is not None:
            claimed[CLASS_NAMES.index(cls)] |= inside
    truth = np.full(z.shape, NO_CLASS, dtype=np.int64)
    single = claimed.sum(axis=0) == 1
    truth[single] = claimed.argmax(axis=0)[single]
    return truth


@dataclass
class AccuracySummary:
    """Slice-pooled 5-class accuracy with per-class counts and the confusion matrix."""

    n: int
    correct: int
    per_class_n: dict[str, int]
    per_class_correct: dict[str, int]
    confusion: list[list[int]]  # [truth][predicted], classes in CLASS_NAMES order

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    def class_accuracy(self, cls: str) -> float | None:
        n = self.per_class_n[cls]
        return self.per_class_correct[cls] / n if n else None


def accuracy_summary(pairs: Iterable[tuple[IntVector, IntVector]]) -> AccuracySummary:
    """Pool (predicted, truth) class arrays of several volumes; unlabelled slices skipped."""
    k = len(CLASS_NAMES)
    confusion = np.zeros((k, k), dtype=np.int64)
    for pred, truth in pairs:
        has = truth != NO_CLASS
        np.add.at(confusion, (truth[has], pred[has]), 1)
    per_n = confusion.sum(axis=1)
    diag = np.diag(confusion)
    return AccuracySummary(
        n=int(per_n.sum()), correct=int(diag.sum()),
        per_class_n={c: int(per_n[i]) for i, c in enumerate(CLASS_NAMES)},
        per_class_correct={c: int(diag[i]) for i, c in enumerate(CLASS_NAMES)},
        confusion=confusion.tolist(),
    )


# --- monotonicity -------------------------------------------------------------------------


def monotonicity(z_mm: npt.ArrayLike, scores: npt.ArrayLike
                 ) -> tuple[float | None, float | None, float | None]:
    """Spearman ρ, R² and slope (score per mm) of a straight-line fit of score against z.

    None where undefined (fewer than 3 slices or constant scores).
    """
    z = np.asarray(z_mm, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if z.size < 3 or np.ptp(s) == 0 or np.ptp(z) == 0:
        return None, None, None
    # Imported here: scipy.stats costs ~0.4 s, paid only when monotonicity is measured.
    from scipy import stats

    rho = float(stats.spearmanr(z, s).statistic)
    r = float(np.corrcoef(z, s)[0, 1])
    slope = float(np.polyfit(z, s, 1)[0])
    return _finite(rho), _finite(r * r), _finite(slope)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
