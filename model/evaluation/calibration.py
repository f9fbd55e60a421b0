"""Store what evaluation measured in the model's metadata, for inference and post-processing.

``bpr evaluate --write-meta`` fits the score scale on the training split's landmarks and
records the reference table and the statistics that score post-processing needs, so no
model constant lives in code (bpreg hard-codes e.g. its empty-slice score).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
