"""Landmark evaluation of a body part regressor (thesis §4.2).

Pipeline: score every slice of every volume, read each volume's landmarks
(:mod:`model.evaluation.landmarks`), take the score at each landmark by linear interpolation of the
slice scores at the landmark's z, average those over the training volumes into the
reference table (eq. 4.11), calibrate the score scale on the lungs, and measure on the
validation volumes:

* the landmark mean square error (LMSE, eq. 4.12-4.15) with its standard error and a
  z-test between two models (eq. 4.16);
* the 5-class accuracy (pelvis / abdomen / chest / neck / head, table 4.5) with the
  published bpreg class boundaries;
* monotonicity: Spearman ρ and R² of a straight-line fit of score against z per volume.

All scores in the report are on the calibrated scale: bpreg's published 0-100 scale
(pelvis start 0, eyes end 100), pinned by the reference lung landmarks.

Slice scores are the network's unsmoothed output; slices without image content (padding
of OpenKBP volumes) are left out of the per-slice metrics.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from model.evaluation.landmarks import (
    IMAGE_LUNG_RULE,
    LANDMARK_NAMES,
    LANDMARK_RULES,
    landmarks_for_volume,
    lung_profile,
    read_label_map,
)
from model.interpretation.bodypart import PUBLISHED_REFERENCE
from model.interpretation.strict_json import jsonable
from model.reading.nifti import read_nifti
from model.reading.volume import CTVolume
from model.scoring.inference import BodyPartRegressor, ModelMeta, SliceScores

log = logging.getLogger(__name__)

FloatVector = npt.NDArray[np.float64]
IntVector = npt.NDArray[np.int64]
BoolVector = npt.NDArray[np.bool_]

#: Calibration anchors: our lung landmarks are bpreg's lung_start / lung_end.
CALIBRATION_ANCHORS: dict[str, str] = {"lung_bottom": "lung_start", "lung_top": "lung_end"}
#: Our landmarks that correspond (exactly or roughly) to a published one, for comparison.
PUBLISHED_EQUIVALENT: dict[str, str] = {
    "femoral_head_top": "femur_end",  # top of the femoral head ≈ bpreg's femur end
    "lung_bottom": "lung_start",
    "lung_top": "lung_end",
    "brainstem_bottom": "C1",  # foramen magnum, ≈ 1-2 cm above C1's arch
}

#: Accuracy classes, feet → head, and the published scores between them.
CLASS_NAMES: tuple[str, ...] = ("pelvis", "abdomen", "chest", "neck", "head")
CLASS_BOUNDARY_LANDMARKS: tuple[str, ...] = ("pelvis_end", "lung_start", "lung_end", "C1")
CLASS_BOUNDARIES: tuple[float, ...] = tuple(
    PUBLISHED_REFERENCE[n] for n in CLASS_BOUNDARY_LANDMARKS
)

#: Ground truth per class: (class, landmarks, how, rule text). "span": from the lowest to
#: the highest of the landmarks present (at least two), both ends included; "between":
#: from the first landmark (included) up to the second (excluded), matching the half-open
#: published classes (a score equal to a boundary belongs to the class above).
CLASS_TRUTH: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("pelvis", ("prostate_centre", "femoral_head_top", "bladder_top"), "span",
     "from the lowest to the highest of prostate_centre, femoral_head_top and bladder_top "
     "(at least two present): all lie inside the bony pelvis, so this is a subset of the "
     "pelvis class (pelvis_start..pelvis_end)"),
    ("abdomen", ("liver_bottom", "lung_bottom"), "between",
     "liver_bottom ≤ z < lung_bottom: the liver's lower tip (≈ L2-L3) lies above the iliac "
     "crest (pelvis_end), so a subset of the abdomen class"),
    ("chest", ("lung_bottom", "lung_top"), "between",
     "lung_bottom ≤ z < lung_top: exactly the published chest class (lung_start..lung_end)"),
    ("neck", ("lung_top", "brainstem_bottom"), "between",
     "lung_top ≤ z < brainstem_bottom: the brainstem's lower end (foramen magnum) stands in "
     "for C1, about 1-2 cm lower, so a few head slices just above C1 count as neck"),
    ("head", ("brainstem_bottom", "brainstem_top"), "span",
     "brainstem_bottom ≤ z ≤ brainstem_top: inside the skull, a subset of the head class"),
)
#: Class rules for the model card.
CLASS_RULES: dict[str, str] = {c: rule for c, _, _, rule in CLASS_TRUTH}

#: Region groups of the per-group LMSE.
REGION_GROUPS: tuple[str, ...] = ("head-neck", "chest", "abdomen-pelvis", "limbs", "other")
REGION_GROUP_RULE = (
    "From the manifest body_regions, first match wins: HEAD → head-neck; CHEST without both "
    "ABDOMEN and PELVIS → chest (neck-chest, chest and chest-abdomen scans, whose "
    "landmarks are the lungs); ABDOMEN → abdomen-pelvis; LEG or ARM → limbs (IBSI "
    "crops, also those reaching the hip); PELVIS → abdomen-pelvis; else other."
)
LMSE_RULE = (
    "LMSE per volume φ_i = mean over its landmarks of ((reference − score) / d)², eq. 4.13, "
    "with d = (reference lung_top − reference lung_bottom) / (75.4 − 44.1): on the "
    "calibrated scale d = 1 score unit (1/100 of pelvis start → eyes end, ≈ 8.5 mm). Only "
    "landmarks with a reference value count; volumes without such landmarks are left out."
)


class SliceScorer(Protocol):
    """What evaluation needs of a model (:class:`model.scoring.inference.BodyPartRegressor`)."""

    meta: ModelMeta

    def score_volume(self, volume: CTVolume) -> SliceScores: ...


# --- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalItem:
    """One volume to evaluate."""

    name: str
    split: str
    ct_path: Path
    label_path: Path | None
    body_regions: tuple[str, ...]


def read_manifest(manifest: Path) -> list[EvalItem]:
    """Items of the shared data's ``manifest.csv``.

    Parameters
    ----------
    manifest : Path
        CSV with columns ``id``, ``file`` (relative to the CSV's folder), ``split``,
        ``has_labels`` and ``body_regions``; label maps are ``labels/<id>.nii.gz`` beside it.

    Returns
    -------
    list of EvalItem
        One per row, in file order.
    """
    base = manifest.parent
    items = []
    with manifest.open(newline="") as fh:
        for row in csv.DictReader(fh):
            label = base / "labels" / f"{row['id']}.nii.gz"
            has_labels = row.get("has_labels", "").strip().lower() == "true"
            regions = tuple(r for r in row.get("body_regions", "").split(";") if r)
            items.append(EvalItem(
                name=row["id"], split=row.get("split") or "train", ct_path=base / row["file"],
                label_path=label if has_labels else None, body_regions=regions,
            ))
    return items


def region_group(body_regions: Iterable[str]) -> str:
    """Region group of a volume (rule: :data:`REGION_GROUP_RULE`)."""
    r = {x.strip().upper() for x in body_regions}
    if "HEAD" in r:
        return "head-neck"
    if "CHEST" in r and not {"ABDOMEN", "PELVIS"} <= r:
        return "chest"
    if "ABDOMEN" in r:
        return "abdomen-pelvis"
    if r & {"LEG", "ARM"}:
        return "limbs"
    if "PELVIS" in r:
        return "abdomen-pelvis"
    return "other"


# --- scoring ------------------------------------------------------------------------------


@dataclass
class VolumeScores:
    """Raw slice scores and landmarks of one volume."""

    name: str
    split: str
    group: str
    z_mm: FloatVector
    raw: FloatVector
    occupied: BoolVector  # slices with image content
    landmarks: dict[str, float]  # name → z in mm

    def landmark_scores(self, scale: float = 1.0, offset: float = 0.0) -> dict[str, float]:
        """Score at each landmark (linear interpolation at its z), as ``scale·raw + offset``."""
        return {
            name: scale * float(np.interp(z, self.z_mm, self.raw)) + offset
            for name, z in self.landmarks.items()
        }


def score_item(model: SliceScorer, item: EvalItem) -> VolumeScores:
    """Read one volume once and return its raw scores and landmarks.

    Parameters
    ----------
    model : SliceScorer
        Anything with ``score_volume`` and ``meta`` (a :class:`BodyPartRegressor`).
    item : EvalItem
        The volume; its label map, when given, adds label landmarks.

    Returns
    -------
    VolumeScores
        Raw network output per slice (the model's own scale is not applied), landmarks
        and the slices with image content.
    """
    volume = read_nifti(item.ct_path)
    profile = lung_profile(volume)
    if item.label_path is not None:
        labels, names = read_label_map(item.label_path)
        landmarks = landmarks_for_volume(volume, labels, names, profile=profile)
    else:
        landmarks = landmarks_for_volume(volume, profile=profile)
    scores = model.score_volume(volume)
    return VolumeScores(
        name=item.name, split=item.split, group=region_group(item.body_regions),
        z_mm=np.asarray(volume.z_mm, dtype=np.float64),
        raw=np.asarray(scores.raw, dtype=np.float64),
        occupied=profile.occupied, landmarks=landmarks,
    )


def score_items(model: SliceScorer, items: Sequence[EvalItem]) -> list[VolumeScores]:
    """:func:`score_item` for every item, in order."""
    out = []
    for i, item in enumerate(items, 1):
        out.append(score_item(model, item))
        log.info("scored %d/%d %s (%d landmarks)", i, len(items), item.name,
                 len(out[-1].landmarks))
    return out


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
    for name in _landmark_order(values):
        v = np.asarray(values[name])
        sd = float(v.std(ddof=1)) if v.size > 1 else None
        table[name] = LandmarkReference(n=int(v.size), mean=float(v.mean()), sd=sd)
    return table


def _landmark_order(names: Iterable[str]) -> list[str]:
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

NO_CLASS = -1


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

    Rules: :data:`CLASS_RULES`. A slice that two rules claim (inconsistent landmarks) gets
    no class.
    """
    z = np.asarray(z_mm, dtype=np.float64)
    truth = np.full(z.shape, NO_CLASS, dtype=np.int64)
    claims = np.zeros(z.shape, dtype=np.int64)
    for cls, names, how, _ in CLASS_TRUTH:
        inside = _class_mask(z, names, how, landmarks)
        if inside is None:
            continue
        truth[inside] = CLASS_NAMES.index(cls)
        claims += inside
    truth[claims > 1] = NO_CLASS
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
    # Imported here: scipy.stats costs ~0.4 s, and this module is on the CLI's start path.
    from scipy import stats

    rho = float(stats.spearmanr(z, s).statistic)
    r = float(np.corrcoef(z, s)[0, 1])
    slope = float(np.polyfit(z, s, 1)[0])
    return _finite(rho), _finite(r * r), _finite(slope)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# --- report -------------------------------------------------------------------------------


@dataclass
class LandmarkRow:
    """Per-landmark line of the report (calibrated scale)."""

    name: str
    n_train: int
    reference_mean: float | None
    reference_sd: float | None
    published: str | None  # equivalent published landmark and its score
    n_val: int
    val_rmse: float | None  # √ mean squared (reference − score) over validation volumes


@dataclass
class VolumeRow:
    """Per-volume line of the report."""

    name: str
    split: str
    group: str
    n_slices: int
    landmarks: dict[str, float]  # calibrated score at each landmark
    lmse: float | None
    spearman: float | None
    r2: float | None
    slope_per_mm: float | None
    accuracy_n: int
    accuracy: float | None


@dataclass
class MonotonicitySummary:
    """Means over validation volumes of the per-volume monotonicity measures."""

    n: int
    spearman_mean: float | None
    spearman_min: float | None
    r2_mean: float | None
    slope_per_mm_mean: float | None


@dataclass
class EvaluationReport:
    """Everything the evaluation measured, for JSON output and the model card."""

    model_version: str
    score_scale: float
    score_offset: float
    calibrated: bool
    eval_split: str
    reference_split: str
    n_volumes: dict[str, int]
    normalization_d: float
    landmarks: list[LandmarkRow]
    lmse: LmseSummary
    lmse_by_group: dict[str, LmseSummary]
    accuracy: AccuracySummary
    monotonicity: MonotonicitySummary
    volumes: list[VolumeRow]
    seconds: float = 0.0
    rules: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain, strict-JSON data (no NaN or infinity: those become None)."""
        acc = self.accuracy
        out = {
            "model_version": self.model_version,
            "score_scale": self.score_scale,
            "score_offset": self.score_offset,
            "calibrated": self.calibrated,
            "eval_split": self.eval_split,
            "reference_split": self.reference_split,
            "n_volumes": self.n_volumes,
            "normalization_d": self.normalization_d,
            "reference_table": {r.name: {"n": r.n_train, "mean": r.reference_mean,
                                         "sd": r.reference_sd}
                                for r in self.landmarks if r.n_train},
            "landmarks": [vars(r) for r in self.landmarks],
            "lmse": vars(self.lmse),
            "lmse_by_group": {g: vars(s) for g, s in self.lmse_by_group.items()},
            "accuracy": {
                "accuracy": acc.accuracy, "n": acc.n, "correct": acc.correct,
                "per_class": {c: {"n": acc.per_class_n[c], "accuracy": acc.class_accuracy(c)}
                              for c in CLASS_NAMES},
                "classes": list(CLASS_NAMES), "confusion": acc.confusion,
                "boundaries": dict(zip(CLASS_BOUNDARY_LANDMARKS, CLASS_BOUNDARIES,
                                       strict=True)),
            },
            "monotonicity": vars(self.monotonicity),
            "volumes": [vars(v) for v in self.volumes],
            "seconds": self.seconds,
            "rules": self.rules,
        }
        clean: dict[str, Any] = jsonable(out)
        return clean

    def to_markdown(self) -> str:
        """Markdown tables for the model card."""
        return "\n".join(_markdown_sections(self)) + "\n"


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _lmse_text(s: LmseSummary) -> str:
    if s.mean is None:
        return "–"
    return f"{s.mean:.2f} ± {_fmt(s.se)}"


def _markdown_sections(r: EvaluationReport) -> list[str]:
    counts = ", ".join(f"{n} {split}" for split, n in r.n_volumes.items())
    lines = [
        f"### Evaluation of model {r.model_version}",
        "",
        f"Volumes: {counts}. Reference table from `{r.reference_split}`, metrics on "
        f"`{r.eval_split}`. Score = {r.score_scale:.4g} · raw + {r.score_offset:.4g}"
        f" ({'calibrated here on the lungs' if r.calibrated else 'from the model metadata'});"
        f" normalisation constant d = {r.normalization_d:.3g}.",
        "",
        "| landmark | n train | reference | sd | published | n val | val RMSE |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for row in r.landmarks:
        lines.append(
            f"| {row.name} | {row.n_train} | {_fmt(row.reference_mean)} | "
            f"{_fmt(row.reference_sd)} | {row.published or ''} | {row.n_val} | "
            f"{_fmt(row.val_rmse)} |"
        )
    lines += ["", "| group | n | LMSE ± SE |", "| --- | ---: | ---: |",
              f"| **all** | {r.lmse.n} | **{_lmse_text(r.lmse)}** |"]
    lines += [f"| {g} | {s.n} | {_lmse_text(s)} |" for g, s in r.lmse_by_group.items()]
    acc = r.accuracy
    lines += ["", "| class | n slices | accuracy |", "| --- | ---: | ---: |",
              f"| **all** | {acc.n} | **{_pct(acc.accuracy)}** |"]
    lines += [f"| {c} | {acc.per_class_n[c]} | {_pct(acc.class_accuracy(c))} |"
              for c in CLASS_NAMES]
    m = r.monotonicity
    lines += ["", f"Monotonicity over {m.n} volumes: Spearman ρ mean {_fmt(m.spearman_mean, 3)}"
              f" (min {_fmt(m.spearman_min, 3)}), R² mean {_fmt(m.r2_mean, 3)}, slope "
              f"{_fmt(m.slope_per_mm_mean, 3)} per mm (bpreg: 0.118).", ""]
    lines += ["| volume | group | slices | landmarks | LMSE | ρ | R² | accuracy |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [
        f"| {v.name} | {v.group} | {v.n_slices} | {len(v.landmarks)} | {_fmt(v.lmse)} | "
        f"{_fmt(v.spearman, 3)} | {_fmt(v.r2, 3)} | "
        f"{_pct(v.accuracy)}{f' ({v.accuracy_n})' if v.accuracy_n else ''} |"
        for v in r.volumes if v.split == r.eval_split
    ]
    return lines


# --- putting it together ------------------------------------------------------------------


def _landmark_rows(reference: ReferenceTable, val_scores: Sequence[Mapping[str, float]]
                   ) -> list[LandmarkRow]:
    names = _landmark_order(set(reference) | {n for s in val_scores for n in s})
    rows = []
    for name in names:
        ref = reference.get(name)
        sq = [(ref.mean - s[name]) ** 2 for s in val_scores if name in s] if ref else []
        pub = PUBLISHED_EQUIVALENT.get(name)
        rows.append(LandmarkRow(
            name=name, n_train=ref.n if ref else 0, reference_mean=ref.mean if ref else None,
            reference_sd=ref.sd if ref else None,
            published=f"{pub} {PUBLISHED_REFERENCE[pub]:g}" if pub else None,
            n_val=sum(name in s for s in val_scores),
            val_rmse=math.sqrt(float(np.mean(sq))) if sq else None,
        ))
    return rows


def _volume_row(v: VolumeScores, scale: float, offset: float,
                reference: ReferenceTable, d: float) -> tuple[VolumeRow, IntVector, IntVector]:
    scores = scale * v.raw + offset
    lm_scores = v.landmark_scores(scale, offset)
    keep = v.occupied if v.occupied.any() else np.ones_like(v.occupied)
    rho, r2, slope = monotonicity(v.z_mm[keep], scores[keep])
    pred = score_classes(scores[keep])
    truth = truth_classes(v.z_mm[keep], v.landmarks)
    n_acc = int((truth != NO_CLASS).sum())
    acc = float((pred == truth)[truth != NO_CLASS].mean()) if n_acc else None
    row = VolumeRow(
        name=v.name, split=v.split, group=v.group, n_slices=int(v.z_mm.size),
        landmarks=lm_scores, lmse=volume_lmse(lm_scores, reference, d), spearman=rho, r2=r2,
        slope_per_mm=slope, accuracy_n=n_acc, accuracy=acc,
    )
    return row, pred, truth


def _mean(values: Iterable[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def evaluate_scores(
    volumes: Sequence[VolumeScores],
    *,
    model_version: str = "unknown",
    scale_offset: tuple[float, float] | None = None,
    eval_split: str = "val",
    reference_split: str = "train",
    min_reference_n: int = 1,
) -> EvaluationReport:
    """Metrics from already scored volumes.

    Parameters
    ----------
    volumes : sequence of VolumeScores
        Raw scores and landmarks of every volume (all splits).
    scale_offset : (float, float), optional
        Score scale and offset to use; default: fitted with :func:`calibrate` on the
        reference split.
    eval_split, reference_split : str
        Split whose volumes are measured, and split the reference table comes from.
    min_reference_n : int
        Landmarks seen in fewer reference volumes are left out of the LMSE.

    Raises
    ------
    CalibrationError
        If calibration or the normalisation constant needs a lung landmark that no
        reference volume shows.
    """
    ref_volumes = [v for v in volumes if v.split == reference_split]
    calibrated = scale_offset is None
    if scale_offset is None:
        scale_offset = calibrate(reference_table(v.landmark_scores() for v in ref_volumes))
    scale, offset = scale_offset
    full_reference = reference_table(v.landmark_scores(scale, offset) for v in ref_volumes)
    reference = {n: r for n, r in full_reference.items() if r.n >= min_reference_n}
    d = normalization_constant(full_reference)
    rows, pairs = [], []
    for v in volumes:
        row, pred, truth = _volume_row(v, scale, offset, reference, d)
        rows.append(row)
        if v.split == eval_split:
            pairs.append((pred, truth))
    evals = [r for r in rows if r.split == eval_split]
    measured = [r for r in evals if r.lmse is not None]
    by_group = {g: summarize_lmse([r.lmse for r in measured if r.group == g and r.lmse is not None])
                for g in REGION_GROUPS if any(r.group == g for r in evals)}
    spearman = [r.spearman for r in evals if r.spearman is not None]
    n_volumes: dict[str, int] = {}
    for v in volumes:
        n_volumes[v.split] = n_volumes.get(v.split, 0) + 1
    return EvaluationReport(
        model_version=model_version, score_scale=scale, score_offset=offset,
        calibrated=calibrated, eval_split=eval_split, reference_split=reference_split,
        n_volumes=n_volumes, normalization_d=d,
        landmarks=_landmark_rows(full_reference, [r.landmarks for r in evals]),
        lmse=summarize_lmse([r.lmse for r in measured if r.lmse is not None]),
        lmse_by_group=by_group, accuracy=accuracy_summary(pairs),
        monotonicity=MonotonicitySummary(
            n=len(spearman), spearman_mean=_mean(spearman),
            spearman_min=min(spearman) if spearman else None,
            r2_mean=_mean(r.r2 for r in evals),
            slope_per_mm_mean=_mean(r.slope_per_mm for r in evals),
        ),
        volumes=rows,
        rules={"landmarks": LANDMARK_RULES, "image_lungs": IMAGE_LUNG_RULE,
               "classes": CLASS_RULES,
               "region_groups": REGION_GROUP_RULE, "lmse": LMSE_RULE},
    )


def evaluate(
    model: SliceScorer,
    items: Sequence[EvalItem],
    *,
    calibrate_scale: bool = True,
    eval_split: str = "val",
    reference_split: str = "train",
    min_reference_n: int = 1,
) -> EvaluationReport:
    """Score ``items`` with ``model`` and measure it (see :func:`evaluate_scores`).

    With ``calibrate_scale`` the score scale is fitted on the reference split
    (:func:`calibrate`); otherwise the model's ``meta.score_scale``/``score_offset`` are used.
    """
    start = time.perf_counter()
    volumes = score_items(model, items)
    report = evaluate_scores(
        volumes, model_version=model.meta.version,
        scale_offset=None if calibrate_scale else (model.meta.score_scale,
                                                   model.meta.score_offset),
        eval_split=eval_split, reference_split=reference_split, min_reference_n=min_reference_n,
    )
    report.seconds = time.perf_counter() - start
    return report


# --- command line -------------------------------------------------------------------------


def load_regressor(weights: Path) -> BodyPartRegressor:
    """A regressor from shipped weights (with their JSON) or a training checkpoint.

    A checkpoint (``runs/<name>/last.pt``) has no metadata file; its network channels come
    from the checkpoint's ``config`` and the score scale is the identity.
    """
    import torch

    from model.scoring.network import SliceScoreNet

    if weights.with_suffix(".json").exists():
        return BodyPartRegressor.load(weights)
    ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{weights}: no metadata JSON beside it and not a training checkpoint")
    channels = list(ckpt["config"]["channels"])
    net = SliceScoreNet(tuple(channels))
    net.load_state_dict(ckpt["model"])
    version = f"{weights.parent.name}-epoch{ckpt.get('epoch', '?')}"
    return BodyPartRegressor(net, ModelMeta(version=version, channels=channels))
