"""K-fold cross-validation over the torso volumes: folds, per-volume figures, fold summaries.

The ``val`` split holds three torso volumes, too few to choose between models. Here every
chest and abdomen-pelvis volume of the manifest (train and val; the out-of-scope limb crops
excluded) is dealt into one of k folds; a fold's model is trained without that fold's
volumes and measured on them (:mod:`benchmarks.torso_cv` runs it). The figures per held-out
volume are the ones issue 12 asks for: Spearman ρ, pelvis and abdomen slice accuracy,
the scores of the pelvic landmarks against bpreg's published scale, and the score per mm
below the lung bottom against that above it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from model.evaluation.crop_benchmark import OUT_OF_SCOPE_PREFIX
from model.evaluation.manifest import EvalItem, region_group
from model.evaluation.metrics import (
    CLASS_NAMES,
    monotonicity,
    score_classes,
    truth_classes,
)
from model.interpretation.bodypart import PUBLISHED_REFERENCE

FloatVector = npt.NDArray[np.float64]

#: Region groups (:func:`~model.evaluation.manifest.region_group`) that the folds hold.
TORSO_GROUPS: tuple[str, ...] = ("chest", "abdomen-pelvis")
#: A held-out volume counts as monotone above this Spearman ρ (issue 12).
MONOTONE_RHO = 0.98
#: Image bone landmarks and their published scores: bpreg's scale inside the pelvis, used
#: to place label landmarks (bladder top, prostate centre) that bpreg did not publish.
PELVIS_SCALE: dict[str, float] = {
    "pelvis_bottom": PUBLISHED_REFERENCE["pelvis_start"],
    "femoral_head_top": PUBLISHED_REFERENCE["femur_end"],
    "iliac_crest_top": PUBLISHED_REFERENCE["pelvis_end"],
}
#: Landmarks whose score is compared with bpreg's scale.
PELVIC_LANDMARKS: tuple[str, ...] = ("femoral_head_top", "bladder_top", "prostate_centre")
#: A slope needs at least this much of a volume on its side of the lung bottom.
MIN_SLOPE_EXTENT_MM = 80.0


def torso_items(items: Iterable[EvalItem]) -> list[EvalItem]:
    """Chest and abdomen-pelvis volumes; the tumour-centred limb crops are out of scope
    (never placed), whatever their group says."""
    return [i for i in items if region_group(i.body_regions) in TORSO_GROUPS
            and not i.name.startswith(OUT_OF_SCOPE_PREFIX)]


def assign_folds(items: Iterable[EvalItem], k: int) -> dict[str, int]:
    """Volume name → fold (0 … k−1) for the torso volumes.

    Sorted by group, then name, and dealt round-robin, so every fold gets its share of
    chest and of abdomen-pelvis volumes and the assignment does not depend on the
    manifest's row order.
    """
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    torso = sorted(torso_items(items), key=lambda i: (region_group(i.body_regions), i.name))
    return {item.name: n % k for n, item in enumerate(torso)}


def expected_pelvic_score(z_mm: float, landmarks: dict[str, float]) -> float | None:
    """Score of ``z_mm`` on bpreg's scale, from the volume's own bone landmarks.

    Piecewise linear through :data:`PELVIS_SCALE` (at least two of them visible),
    extended linearly beyond the outermost pair; None without two bone landmarks.
    """
    known = sorted((landmarks[n], s) for n, s in PELVIS_SCALE.items() if n in landmarks)
    if len(known) < 2:
        return None
    z = np.array([k[0] for k in known])
    s = np.array([k[1] for k in known])
    if z_mm < z[0] or z_mm > z[-1]:
        i = 0 if z_mm < z[0] else len(z) - 2
        slope = (s[i + 1] - s[i]) / (z[i + 1] - z[i])
        return float(s[i] + slope * (z_mm - z[i]))
    return float(np.interp(z_mm, z, s))


def _slope(z: FloatVector, scores: FloatVector) -> float | None:
    if z.size < 3 or z[-1] - z[0] < MIN_SLOPE_EXTENT_MM:
        return None
    return float(np.polyfit(z, scores, 1)[0])


@dataclass
class HeldOutVolume:
    """Figures of one held-out torso volume under its fold's model."""

    name: str
    group: str
    fold: int
    spearman: float | None
    #: class name → (slices of that true class, of them predicted right)
    class_counts: dict[str, tuple[int, int]]
    #: landmark → (score, expected score on bpreg's scale)
    pelvic: dict[str, tuple[float, float]]
    slope_below_lungs: float | None  # score per mm below the lung bottom
    slope_above_lungs: float | None  # score per mm from the lung bottom up


def held_out_volume(name: str, group: str, fold: int, z_mm: FloatVector,
                    scores: FloatVector, landmarks: dict[str, float]) -> HeldOutVolume:
    """Figures of one volume from its calibrated scores on the slices with image content."""
    rho = monotonicity(z_mm, scores)[0]
    pred, truth = score_classes(scores), truth_classes(z_mm, landmarks)
    counts = {}
    for c, cls in enumerate(CLASS_NAMES):
        mask = truth == c
        if mask.any():
            counts[cls] = (int(mask.sum()), int((pred[mask] == c).sum()))
    pelvic = {}
    for lm in PELVIC_LANDMARKS:
        if lm in landmarks:
            expected = (PUBLISHED_REFERENCE["femur_end"] if lm == "femoral_head_top"
                        else expected_pelvic_score(landmarks[lm], landmarks))
            if expected is not None:
                pelvic[lm] = (float(np.interp(landmarks[lm], z_mm, scores)), expected)
    below = above = None
    if "lung_bottom" in landmarks:
        cut = landmarks["lung_bottom"]
        below = _slope(z_mm[z_mm < cut], scores[z_mm < cut])
        above = _slope(z_mm[z_mm >= cut], scores[z_mm >= cut])
    elif any(n in landmarks for n in PELVIS_SCALE):
        below = _slope(z_mm, scores)  # a pelvis or abdomen scan without lungs
    return HeldOutVolume(name, group, fold, rho, counts, pelvic, below, above)


def _mean_se(values: Sequence[float]) -> tuple[float, float | None] | None:
    """Mean and standard error (None from a single fold: strict JSON has no NaN)."""
    if not values:
        return None
    se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return float(np.mean(values)), se


@dataclass
class FoldFigures:
    """The issue-12 figures of one fold (or of all held-out volumes pooled)."""

    n_volumes: int
    monotone_fraction: float | None
    class_accuracy: dict[str, float] = field(default_factory=dict)
    pelvic_error: dict[str, float] = field(default_factory=dict)  # mean |score − expected|
    slope_ratio: float | None = None  # mean slope below ÷ mean slope above the lung bottom


def fold_figures(volumes: Sequence[HeldOutVolume]) -> FoldFigures:
    """Pool the held-out volumes of one fold."""
    rhos = [v.spearman for v in volumes if v.spearman is not None]
    acc = {}
    for cls in CLASS_NAMES:
        n = sum(v.class_counts[cls][0] for v in volumes if cls in v.class_counts)
        if n:
            acc[cls] = sum(v.class_counts[cls][1] for v in volumes if cls in v.class_counts) / n
    errors: dict[str, list[float]] = {}
    for v in volumes:
        for lm, (score, expected) in v.pelvic.items():
            errors.setdefault(lm, []).append(abs(score - expected))
    below = [v.slope_below_lungs for v in volumes if v.slope_below_lungs is not None]
    above = [v.slope_above_lungs for v in volumes if v.slope_above_lungs is not None]
    ratio = float(np.mean(below) / np.mean(above)) if below and above else None
    return FoldFigures(
        n_volumes=len(volumes),
        monotone_fraction=(float(np.mean([r > MONOTONE_RHO for r in rhos])) if rhos else None),
        class_accuracy=acc, pelvic_error={k: float(np.mean(e)) for k, e in errors.items()},
        slope_ratio=ratio)


def across_folds(folds: Sequence[FoldFigures]
                 ) -> dict[str, tuple[float, float | None] | None]:
    """Mean ± SE over folds of every figure (folds without the figure left out)."""
    out: dict[str, tuple[float, float | None] | None] = {
        "monotone_fraction": _mean_se([f.monotone_fraction for f in folds
                                       if f.monotone_fraction is not None]),
        "slope_ratio": _mean_se([f.slope_ratio for f in folds if f.slope_ratio is not None]),
    }
    for cls in CLASS_NAMES:
        out[f"accuracy_{cls}"] = _mean_se([f.class_accuracy[cls] for f in folds
                                           if cls in f.class_accuracy])
    for lm in PELVIC_LANDMARKS:
        out[f"error_{lm}"] = _mean_se([f.pelvic_error[lm] for f in folds
                                       if lm in f.pelvic_error])
    return out
