"""Store what evaluation measured in the model's metadata, for inference and post-processing.

``bpr evaluate --write-meta`` records the score scale, the reference table and the
statistics that score post-processing needs, so no model constant lives in code (bpreg
hard-codes e.g. its empty-slice score). The scale of a model trained with anchors is the one
its anchors were trained in (:func:`anchor_units`); any other is fitted on the training
split's lungs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.evaluation.curve_statistics import postprocessing_statistics
from model.evaluation.evaluate import VolumeScores
from model.evaluation.report import EvaluationReport
from model.interpretation.postprocess import curves_from_volume_scores
from model.scoring import preprocess
from model.scoring.inference import BodyPartRegressor, ModelMeta

log = logging.getLogger(__name__)


def anchor_units(training: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(score_scale, score_offset)`` that a model's anchor targets were given in (its
    ``training`` metadata), or None for a model trained without anchors.

    Anchors pull five landmarks onto bpreg's published scores in these units, and retention
    holds the head and neck at the teacher's scores in them too, so they are the scale the
    model was trained to. Refitting on the lungs alone moves every other region by the
    lungs' residual: run p22's lung bottoms sit 2.2 low on average (one chest scan 11.7),
    and the lung fit lifted its femoral head top from 15.5 to 19.4 (bpreg: 13.6).
    """
    if float(training.get("anchor_weight", 0.0)) <= 0.0:
        return None
    scale, offset = training.get("anchor_scale"), training.get("anchor_offset")
    if not isinstance(scale, int | float) or not isinstance(offset, int | float):
        return None
    return float(scale), float(offset)


def empty_slice_raw_score(regressor: BodyPartRegressor) -> float:
    """Network output for a slice of pure air (what an empty or padded slice scores)."""
    air = np.full((1, preprocess.INPUT_SIZE, preprocess.INPUT_SIZE), preprocess.HU_MIN,
                  dtype=np.float32)
    slices = preprocess.preprocess_slices(air, (preprocess.PIXEL_SPACING_MM,) * 2)
    return float(regressor.raw_scores(slices)[0])


def model_statistics(regressor: BodyPartRegressor, report: EvaluationReport,
                     volumes: Sequence[VolumeScores]) -> dict[str, Any]:
    """Empty-slice score and post-processing statistics on the calibrated scale.

    Curve statistics (tangential-slope quantiles, mean slope, slope-ratio range) come from
    the reference split only, so validation volumes stay unseen by anything stored with
    the model, and only from curves that inference would try to name: a limb crop
    (:attr:`VolumeScores.limb_crop`) is withheld whatever its scores, so its steep
    flanks must not widen the tolerance of the series that are named.
    """
    empty = report.score_scale * empty_slice_raw_score(regressor) + report.score_offset
    stats: dict[str, Any] = {"empty_slice_score": round(empty, 4)}
    in_scope = [v for v in volumes if not v.limb_crop]
    curves = curves_from_volume_scores(in_scope, report.score_scale, report.score_offset,
                                       split=report.reference_split)
    try:
        stats.update(postprocessing_statistics(curves,
                                               empty_slice_score=stats["empty_slice_score"]))
    except ValueError as exc:
        # Too few usable training curves: analysis then falls back to documented defaults
        # and says so in every result's warnings.
        log.warning("no post-processing statistics stored: %s", exc)
    stats["validation"] = {"lmse_mean": report.lmse.mean, "lmse_se": report.lmse.se,
                           "lmse_n": report.lmse.n, "accuracy": report.accuracy.accuracy}
    return stats


def write_calibration(weights: Path, report: EvaluationReport, stats: dict[str, Any]) -> Path:
    """Update the JSON beside ``weights`` with scale, reference table and statistics."""
    meta_path = weights.with_suffix(".json")
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: export the model first (bpr train writes it)")
    meta = ModelMeta.read(meta_path)
    meta.score_scale = report.score_scale
    meta.score_offset = report.score_offset
    meta.reference_table = {r.name: round(r.reference_mean, 3) for r in report.landmarks
                            if r.n_train and r.reference_mean is not None}
    meta.statistics = stats
    meta.write(meta_path)
    return meta_path
