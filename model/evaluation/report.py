"""The evaluation report: per-landmark and per-volume rows, summaries, JSON and Markdown.

:class:`EvaluationReport` holds everything :func:`model.evaluation.evaluate.evaluate_scores`
measured; :meth:`~EvaluationReport.to_dict` gives strict JSON and
:meth:`~EvaluationReport.to_markdown` the tables of the model card. All scores are on the
calibrated scale. :func:`landmark_rows` builds the per-landmark lines from the reference
table and the validation volumes' landmark scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.evaluation.metrics import (
    CLASS_BOUNDARIES,
    CLASS_BOUNDARY_LANDMARKS,
    CLASS_NAMES,
    AccuracySummary,
    LmseSummary,
    ReferenceTable,
    landmark_order,
)
from model.interpretation.bodypart import PUBLISHED_REFERENCE
from model.interpretation.strict_json import jsonable

#: Our landmarks that correspond (exactly or roughly) to a published one, for comparison.
PUBLISHED_EQUIVALENT: dict[str, str] = {
    "femoral_head_top": "femur_end",  # top of the femoral head ≈ bpreg's femur end
    "lung_bottom": "lung_start",
    "lung_top": "lung_end",
    "brainstem_bottom": "C1",  # foramen magnum, ≈ 1-2 cm above C1's arch
}


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


#: Where a report's score scale came from → how the Markdown report says it.
SCALE_SOURCES: dict[str, str] = {
    "lungs": "calibrated here on the lungs",
    "anchors": "the units the model's anchors were trained in",
    "metadata": "from the model metadata",
}


@dataclass
class EvaluationReport:
    """Everything the evaluation measured, for JSON output and the model card."""

    model_version: str
    score_scale: float
    score_offset: float
    scale_source: str  # "lungs" (fitted here), "anchors" or "metadata"
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
            "calibrated": self.scale_source == "lungs",
            "scale_source": self.scale_source,
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
        f" ({SCALE_SOURCES[r.scale_source]});"
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


def landmark_rows(reference: ReferenceTable, val_scores: Sequence[Mapping[str, float]]
                  ) -> list[LandmarkRow]:
    """Per-landmark lines: reference table row, published equivalent, validation RMSE.

    Parameters
    ----------
    reference : dict of str to LandmarkReference
        Reference table on the calibrated scale.
    val_scores : sequence of mapping of str to float
        Landmark name → calibrated score, one mapping per validation volume.

    Returns
    -------
    list of LandmarkRow
        One per landmark in the table or in a validation volume, feet → head.
    """
    names = landmark_order(set(reference) | {n for s in val_scores for n in s})
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
