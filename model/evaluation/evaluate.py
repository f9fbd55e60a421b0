"""Landmark evaluation of a body part regressor (thesis §4.2): score the volumes, measure.

Pipeline: score every slice of every volume (:func:`score_items`), read each volume's
landmarks (:mod:`model.evaluation.landmarks`), take the score at each landmark by linear
interpolation of the slice scores at the landmark's z, average those over the training
volumes into the reference table (eq. 4.11), calibrate the score scale on the lungs, and
measure the validation volumes (:func:`evaluate_scores`): LMSE, 5-class accuracy and
monotonicity (:mod:`model.evaluation.metrics`), gathered in an
:class:`~model.evaluation.report.EvaluationReport`. :func:`evaluate` does both steps;
:func:`load_regressor` reads shipped weights or a training checkpoint.

All scores in the report are on the calibrated scale: bpreg's published 0-100 scale
(pelvis start 0, eyes end 100), pinned by the reference lung landmarks.

Slice scores are the network's unsmoothed output; slices without image content (padding
of OpenKBP volumes) are left out of the per-slice metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from model.evaluation.landmarks import (
    LANDMARK_RULES,
    landmarks_for_volume,
    read_label_map,
)
from model.evaluation.lung_landmarks import IMAGE_LUNG_RULE, LungProfile, lung_profile
from model.evaluation.manifest import REGION_GROUP_RULE, REGION_GROUPS, EvalItem, region_group
from model.evaluation.metrics import (
    CLASS_RULES,
    LMSE_RULE,
    NO_CLASS,
    ReferenceTable,
    accuracy_summary,
    calibrate,
    monotonicity,
    normalization_constant,
    reference_table,
    score_classes,
    summarize_lmse,
    truth_classes,
    volume_lmse,
)
from model.evaluation.report import (
    EvaluationReport,
    MonotonicitySummary,
    VolumeRow,
    landmark_rows,
)
from model.interpretation.image_content import image_content
from model.reading.nifti import read_nifti
from model.reading.volume import CTVolume
from model.scoring.inference import BodyPartRegressor, ModelMeta, SliceScores

log = logging.getLogger(__name__)

FloatVector = npt.NDArray[np.float64]
IntVector = npt.NDArray[np.int64]
BoolVector = npt.NDArray[np.bool_]


class SliceScorer(Protocol):
    """What evaluation needs of a model (:class:`model.scoring.inference.BodyPartRegressor`)."""

    meta: ModelMeta

    def score_volume(self, volume: CTVolume) -> SliceScores: ...


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
    #: The image rule of inference calls it a limb crop (out of the model's scope).
    limb_crop: bool = False

    def landmark_scores(self, scale: float = 1.0, offset: float = 0.0) -> dict[str, float]:
        """Score at each landmark (linear interpolation at its z), as ``scale·raw + offset``."""
        return {
            name: scale * float(np.interp(z, self.z_mm, self.raw)) + offset
            for name, z in self.landmarks.items()
        }


def item_anatomy(item: EvalItem) -> tuple[CTVolume, LungProfile, dict[str, float]]:
    """The volume of ``item``, its lung profile (slices with content) and its landmarks
    (image rules, with the label map's landmarks over them when the item has one)."""
    volume = read_nifti(item.ct_path)
    profile = lung_profile(volume)
    labels, names = read_label_map(item.label_path) if item.label_path else (None, None)
    return volume, profile, landmarks_for_volume(volume, labels, names, profile=profile)


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
    volume, profile, landmarks = item_anatomy(item)
    scores = model.score_volume(volume)
    return VolumeScores(
        name=item.name, split=item.split, group=region_group(item.body_regions),
        z_mm=np.asarray(volume.z_mm, dtype=np.float64),
        raw=np.asarray(scores.raw, dtype=np.float64),
        occupied=profile.occupied, landmarks=landmarks,
        limb_crop=image_content(volume.hu, volume.pixel_spacing_mm).limb_crop,
    )


def score_items(model: SliceScorer, items: Sequence[EvalItem]) -> list[VolumeScores]:
    """:func:`score_item` for every item, in order."""
    out = []
    for i, item in enumerate(items, 1):
        out.append(score_item(model, item))
        log.info("scored %d/%d %s (%d landmarks)", i, len(items), item.name,
                 len(out[-1].landmarks))
    return out


# --- putting it together ------------------------------------------------------------------


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
    scale_source: str = "metadata",
) -> EvaluationReport:
    """Metrics from already scored volumes.

    Parameters
    ----------
    volumes : sequence of VolumeScores
        Raw scores and landmarks of every volume (all splits).
    scale_offset : (float, float), optional
        Score scale and offset to use; default: fitted with
        :func:`~model.evaluation.metrics.calibrate` on the reference split.
    eval_split, reference_split : str
        Split whose volumes are measured, and split the reference table comes from.
    min_reference_n : int
        Landmarks seen in fewer reference volumes are left out of the LMSE.
    scale_source : str
        Where a given ``scale_offset`` came from, for the report (a key of
        :data:`~model.evaluation.report.SCALE_SOURCES`); "lungs" when it is fitted here.

    Raises
    ------
    CalibrationError
        If calibration or the normalisation constant needs a lung landmark that no
        reference volume shows.
    """
    ref_volumes = [v for v in volumes if v.split == reference_split]
    if scale_offset is None:
        scale_source = "lungs"
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
        scale_source=scale_source, eval_split=eval_split, reference_split=reference_split,
        n_volumes=n_volumes, normalization_d=d,
        landmarks=landmark_rows(full_reference, [r.landmarks for r in evals]),
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
    (:func:`~model.evaluation.metrics.calibrate`); otherwise the model's
    ``meta.score_scale``/``score_offset`` are used.
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


# --- models -------------------------------------------------------------------------------


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
