"""One adaptation run: choose the series, fine-tune, judge the candidate, write the report.

:func:`adapt` fine-tunes the active model on the qualifying series of a site (the anchored,
retaining recipe of the shipped model, :mod:`model.training.train`), keeps the active model's
calibration (the anchors and the retention hold the candidate on that scale), measures both
models on the patient hold-out (:mod:`model.adaptation.guards`) and, where
``../shared/data`` is present, compares their validation LMSE (z-test, eq. 4.16). The
candidate's weights, its JSON and ``report.json`` are written to the run folder whether or
not it is promoted; the caller decides what promotion means (the node activates it).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model.adaptation.corpus import (
    PreparedSeries,
    one_per_patient_and_term,
    prepare,
    split_by_patient,
)
from model.adaptation.guards import (
    Decision,
    MetricDelta,
    Scorer,
    compare,
    decide,
    measure_all,
)
from model.adaptation.records import (
    AdaptError,
    AdaptReport,
    AdaptSeries,
    AdaptSettings,
    patient_hash,
)
from model.paths import DEFAULT_WEIGHTS, shared_data_dir
from model.scoring.inference import BodyPartRegressor, ModelMeta
from model.training.dataset import TrainVolume
from model.training.export import export_model
from model.training.train import TrainConfig, train

log = logging.getLogger(__name__)

#: Name of the run's report in its folder.
REPORT_NAME = "report.json"


def adapt(series: Sequence[AdaptSeries], out_dir: Path, *, base_weights: Path | None = None,
          settings: AdaptSettings | None = None, progress: bool = False) -> AdaptReport:
    """Fine-tune the active model on ``series`` and judge the candidate on a patient hold-out.

    Parameters
    ----------
    series : sequence of AdaptSeries
        Offered series, most wanted first (at most ``settings.max_series`` are read).
    out_dir : Path
        Run folder: ``bpr_model.pt``/``.json`` of the candidate, ``report.json``, and the
        training checkpoint and history under ``training/``.
    base_weights : Path, optional
        The active model (default: the shipped one).
    settings : AdaptSettings, optional

    Raises
    ------
    AdaptError
        When fewer than ``settings.min_patients`` patients have a qualifying series.
    """
    settings = settings or AdaptSettings()
    base_path = base_weights or DEFAULT_WEIGHTS
    started = time.time()
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    active = BodyPartRegressor.load(base_path)
    prepared, refused = _prepare_all(series[:settings.max_series], active)
    chosen = one_per_patient_and_term(prepared)
    patients = {s.patient for s in chosen}
    if len(patients) < settings.min_patients:
        raise AdaptError(f"{len(patients)} patient(s) with a qualifying series; at least "
                         f"{settings.min_patients} are needed ({len(prepared)} of "
                         f"{len(series)} series qualified)")
    training, holdout = split_by_patient(chosen, settings.holdout_fraction)
    log.info("adapting on %d series of %d patients; %d series held out", len(training),
             len({s.patient for s in training}), len(holdout))
    cfg = _train_config(active.meta, base_path, settings)
    net = train([s.volume for s in training], [], cfg, out_dir / "training", progress=progress)
    weights = export_model(net, asdict(cfg), out_dir)
    version = _write_candidate_meta(weights, active.meta, cfg)
    candidate = BodyPartRegressor.load(weights)
    judged = judge(active, candidate, [s.volume for s in holdout],
                   validate=settings.validate_on_shared_data)
    deltas, validation, decision = judged.deltas, judged.validation, judged.decision
    document: dict[str, Any] = {
        "candidate_version": version, "parent_version": active.meta.version,
        "promoted": decision.promoted, "reason": decision.reason,
        "series_offered": len(series), "series_qualified": len(prepared),
        "series_used": len(chosen), "patients": len(patients),
        "training": {"series": len(training), "patients": len({s.patient for s in training})},
        "holdout": {"series": len(holdout), "patients": len({s.patient for s in holdout}),
                    "series_keys": [s.key for s in holdout],
                    "patient_hashes": sorted({patient_hash(s.patient) for s in holdout})},
        "refused": dict(Counter(refused)),
        "guards": {d.name: d.to_dict() for d in deltas},
        "validation": validation,
        "settings": asdict(settings),
        "seconds": round(time.time() - started, 1),
    }
    _write_json_atomic(out_dir / REPORT_NAME, document)
    log.info("candidate %s: %s (%s)", version, "promoted" if decision.promoted else "kept out",
             decision.reason)
    return AdaptReport(out_dir, weights, version, active.meta.version, decision.promoted,
                       decision.reason, len(chosen), len(patients), document)


@dataclass(frozen=True)
class Judgement:
    """Guard metrics of both models on the hold-out, the validation comparison (None when
    not run) and the decision."""

    deltas: list[MetricDelta]
    validation: dict[str, Any] | None
    decision: Decision


def judge(active: BodyPartRegressor, candidate: BodyPartRegressor,
          holdout: Sequence[TrainVolume], *, validate: bool) -> Judgement:
    """Measure both models on the same hold-out series and decide on promotion.

    With ``validate``, a significantly worse validation LMSE on ``../shared/data`` (when
    present) also keeps the candidate out.
    """
    deltas = compare(measure_all(holdout, _scorer(active)),
                     measure_all(holdout, _scorer(candidate)))
    validation = _validation(active, candidate) if validate else None
    extra = ["validation LMSE"] if validation and validation["significantly_worse"] else []
    return Judgement(deltas, validation, decide(deltas, extra))


def _prepare_all(series: Sequence[AdaptSeries], active: BodyPartRegressor
                 ) -> tuple[list[PreparedSeries], list[str]]:
    prepared: list[PreparedSeries] = []
    refused: list[str] = []
    for s in series:
        outcome = prepare(s, active)
        if isinstance(outcome, str):
            # the reason's kind only: messages may quote values from the files
            refused.append(outcome.split(":")[0])
        else:
            prepared.append(outcome)
    return prepared, refused


def _train_config(meta: ModelMeta, base: Path, settings: AdaptSettings) -> TrainConfig:
    return TrainConfig(
        epochs=1, steps_per_epoch=settings.steps, volumes_per_batch=settings.volumes_per_batch,
        lr=settings.lr, seed=settings.seed, threads=settings.threads,
        channels=tuple(meta.channels), anchor_weight=settings.anchor_weight,
        retain_weight=settings.retain_weight, alpha_distance=settings.alpha_distance,
        anchor_scale=meta.score_scale, anchor_offset=meta.score_offset, init_weights=str(base),
        extra={"adapted_from": meta.version})


def _write_candidate_meta(weights: Path, parent: ModelMeta, cfg: TrainConfig) -> str:
    """The candidate's JSON: its own version and training, the parent's calibration."""
    path = weights.with_suffix(".json")
    exported = ModelMeta.read(path)
    statistics = {k: v for k, v in parent.statistics.items() if k != "validation"}
    meta = ModelMeta(version=exported.version, channels=list(parent.channels),
                     score_scale=parent.score_scale, score_offset=parent.score_offset,
                     reference_table=dict(parent.reference_table), statistics=statistics,
                     training={**asdict(cfg), "parent_version": parent.version})
    meta.write(path)
    return meta.version


def _scorer(regressor: BodyPartRegressor) -> Scorer:
    def score(volume: TrainVolume) -> npt.NDArray[np.float64]:
        return regressor.to_reference_scale(regressor.raw_scores(volume.slices))
    return score


def _validation(active: BodyPartRegressor, candidate: BodyPartRegressor
                ) -> dict[str, Any] | None:
    """Validation LMSE of both models on ``../shared/data`` (None when it is absent)."""
    manifest = shared_data_dir() / "manifest.csv"
    if not manifest.is_file():
        return None
    from model.evaluation.evaluate import evaluate
    from model.evaluation.manifest import read_manifest
    from model.evaluation.metrics import z_test

    items = read_manifest(manifest)
    before, after = evaluate(active, items).lmse, evaluate(candidate, items).lmse
    document: dict[str, Any] = {"active_lmse": before.mean, "active_se": before.se,
                                "candidate_lmse": after.mean, "candidate_se": after.se,
                                "z": None, "p": None, "significantly_worse": False}
    try:
        z, p = z_test(after, before)
    except ValueError as exc:  # too few validation volumes with landmarks
        log.warning("validation LMSE not compared: %s", exc)
        return document
    worse = after.mean is not None and before.mean is not None and after.mean > before.mean
    document.update(z=z if math.isfinite(z) else None, p=p if math.isfinite(p) else None,
                    significantly_worse=bool(worse and p < 0.05))
    return document


def _write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(document, fh, indent=1, allow_nan=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
