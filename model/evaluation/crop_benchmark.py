"""How well the DICOM term of :func:`~model.interpretation.analysis.interpret` matches crops
with a known clinical term (:mod:`model.evaluation.term_crops`).

Each volume is scored once; the network scores every slice on its own, so a crop's scores
are the volume's scores at the crop's slices, and each crop is only interpreted
(:func:`evaluate_item`). :func:`summarize` gives the figures a test can hold the term rule
to; :func:`markdown_report` the tables of ``python -m benchmarks.term_crops``. IBSI limb
volumes (ids ``ibsi_sts_*``) are out of scope: they get no crops, and
:func:`evaluate_out_of_scope` only records whether the whole volume gets a term.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from model.evaluation.landmarks import read_label_map
from model.evaluation.manifest import EvalItem
from model.evaluation.term_crops import (
    CROP_TERMS,
    TORSO_TERMS,
    Crop,
    crops_for_volume,
    volume_anatomy,
)
from model.interpretation.analysis import (
    AnalysisSettings,
    BodyPartResult,
    interpret,
    score_with_content,
)
from model.interpretation.postprocess import IntVector
from model.reading.nifti import read_nifti
from model.reading.volume import CTVolume
from model.scoring.inference import BodyPartRegressor, SliceScores

#: Volume ids of this prefix are tumour-centred limb crops: out of scope, never cropped.
OUT_OF_SCOPE_PREFIX = "ibsi_sts_"
#: A crop's curve is monotone when Spearman's ρ of its unprocessed scores against z
#: exceeds this: the network ordered its slices, so a withheld term is the rule's choice.
MONOTONE_RHO = 0.9
#: Column of the confusion matrix for a withheld term.
WITHHELD = "(withheld)"


@dataclass(frozen=True)
class CropOutcome:
    """What the analysis said about one crop."""

    split: str
    crop: Crop
    got: str | None  # body_part_examined; None when withheld
    rho: float | None  # Spearman ρ of the unprocessed scores vs z (None: undefined)

    @property
    def expected(self) -> str:
        """The clinical term the crop was cut for."""
        return self.crop.term


@dataclass(frozen=True)
class OutOfScopeOutcome:
    """The whole-volume result of an out-of-scope (limb) volume."""

    volume: str
    split: str
    got: str | None
    out_of_scope: bool  # an out_of_scope anomaly was raised


@dataclass(frozen=True)
class CropSummary:
    """The figures a test can hold the term rule to (percentages; None: no such crops)."""

    n_crops: int
    exact_pct: float | None
    torso_withheld_monotone_pct: float | None
    neck_named_neck_pct: float | None


def monotone_rho(result: BodyPartResult) -> float | None:
    """Spearman ρ of the finite unprocessed scores against z (None under 3 slices)."""
    z = np.asarray(result.patient_z_mm, dtype=np.float64)
    s = np.asarray(result.unprocessed_scores, dtype=np.float64)
    ok = np.isfinite(s)
    if ok.sum() < 3 or np.ptp(s[ok]) == 0.0:
        return None
    rho = float(stats.spearmanr(z[ok], s[ok]).statistic)
    return rho if math.isfinite(rho) else None


def interpret_crop(volume: CTVolume, scored: SliceScores, body_pixels: IntVector, crop: Crop,
                   regressor: BodyPartRegressor) -> BodyPartResult:
    """:func:`interpret` of the crop's slices, reusing the whole volume's scores."""
    part = slice(crop.start, crop.stop)
    z = volume.z_mm[part]
    cropped = CTVolume(volume.hu[part], z, volume.pixel_spacing_mm, volume.source)
    scores = SliceScores(z, scored.raw[part], scored.scores[part])
    return interpret(cropped, scores, np.asarray(body_pixels)[part], regressor,
                     AnalysisSettings())


def item_crops(item: EvalItem, volume: CTVolume) -> list[Crop]:
    """The crops of one manifest volume (none for out-of-scope volumes)."""
    if item.name.startswith(OUT_OF_SCOPE_PREFIX):
        return []
    labels, names = read_label_map(item.label_path) if item.label_path else (None, None)
    return crops_for_volume(volume_anatomy(item.name, volume, labels, names), volume.z_mm)


def evaluate_item(item: EvalItem, regressor: BodyPartRegressor) -> list[CropOutcome]:
    """Cut, score once and interpret every crop of one manifest volume."""
    volume = read_nifti(item.ct_path)
    crops = item_crops(item, volume)
    if not crops:
        return []
    scored, body = score_with_content(volume, regressor)
    outcomes = []
    for crop in crops:
        result = interpret_crop(volume, scored, body, crop, regressor)
        outcomes.append(CropOutcome(item.split, crop, result.body_part_examined,
                                    monotone_rho(result)))
    return outcomes


def evaluate_out_of_scope(item: EvalItem, regressor: BodyPartRegressor) -> OutOfScopeOutcome:
    """Whole-volume term and out_of_scope flag of a limb volume."""
    volume = read_nifti(item.ct_path)
    scored, body = score_with_content(volume, regressor)
    result = interpret(volume, scored, body, regressor, AnalysisSettings())
    flagged = any(a.code.value == "out_of_scope" for a in result.anomalies)
    return OutOfScopeOutcome(item.name, item.split, result.body_part_examined, flagged)


def _pct(hits: int, total: int) -> float | None:
    return 100.0 * hits / total if total else None


def summarize(outcomes: Iterable[CropOutcome]) -> CropSummary:
    """Exact %, withheld % of monotone torso crops and NECK → NECK % of some outcomes.

    Parameters
    ----------
    outcomes : iterable of CropOutcome
        Usually one split's.

    Returns
    -------
    CropSummary
        ``torso_withheld_monotone_pct`` counts crops of :data:`TORSO_TERMS` whose ρ exceeds
        :data:`MONOTONE_RHO`.
    """
    done = list(outcomes)
    torso = [o for o in done if o.expected in TORSO_TERMS
             and o.rho is not None and o.rho > MONOTONE_RHO]
    neck = [o for o in done if o.expected == "NECK"]
    return CropSummary(
        n_crops=len(done),
        exact_pct=_pct(sum(o.got == o.expected for o in done), len(done)),
        torso_withheld_monotone_pct=_pct(sum(o.got is None for o in torso), len(torso)),
        neck_named_neck_pct=_pct(sum(o.got == "NECK" for o in neck), len(neck)),
    )


def _fmt(pct: float | None) -> str:
    return "–" if pct is None else f"{pct:.0f} %"


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def term_table(outcomes: Sequence[CropOutcome]) -> list[str]:
    """Per expected term: crops, volumes, exact and withheld rates."""
    lines = [_row(["expected term", "crops", "volumes", "exact", "withheld"]),
             "|" + " --- |" * 5]
    for term in CROP_TERMS:
        mine = [o for o in outcomes if o.expected == term]
        if not mine:
            continue
        n = len(mine)
        lines.append(_row([term, n, len({o.crop.volume for o in mine}),
                           _fmt(_pct(sum(o.got == term for o in mine), n)),
                           _fmt(_pct(sum(o.got is None for o in mine), n))]))
    return lines


def confusion_table(outcomes: Sequence[CropOutcome]) -> list[str]:
    """Expected term (rows) → term got (columns, with :data:`WITHHELD`), crop counts."""
    counts = Counter((o.expected, o.got or WITHHELD) for o in outcomes)
    got_terms = sorted({g for _, g in counts if g != WITHHELD})
    columns = [*got_terms, WITHHELD]
    lines = [_row(["expected → got", *columns]), "|" + " --- |" * (len(columns) + 1)]
    for term in CROP_TERMS:
        if any(e == term for e, _ in counts):
            lines.append(_row([term, *(counts.get((term, c), 0) or "·" for c in columns)]))
    return lines


def summary_lines(label: str, summary: CropSummary) -> list[str]:
    """The summary of one split as Markdown bullet lines."""
    return [
        f"- {label}: {summary.n_crops} crops, exact {_fmt(summary.exact_pct)}",
        f"- {label}: torso crops withheld where the curve is monotone (ρ > {MONOTONE_RHO:g}): "
        f"{_fmt(summary.torso_withheld_monotone_pct)}",
        f"- {label}: NECK crops named NECK: {_fmt(summary.neck_named_neck_pct)}",
    ]


def markdown_report(outcomes: Sequence[CropOutcome], limbs: Sequence[OutOfScopeOutcome],
                    splits: Sequence[str]) -> str:
    """Tables and summaries per split, then the out-of-scope line."""
    lines: list[str] = []
    for split in splits:
        mine = [o for o in outcomes if o.split == split]
        if not mine:
            continue
        lines += [f"## {split}", "", *term_table(mine), "", *confusion_table(mine), "",
                  *summary_lines(split, summarize(mine)), ""]
    named = [o for o in limbs if o.got is not None]
    flagged = sum(o.out_of_scope for o in limbs)
    terms = ", ".join(f"{t} ×{n}" for t, n in sorted(Counter(o.got for o in named).items()))
    lines.append(f"- out of scope (IBSI limb volumes, not cropped): {len(named)} of "
                 f"{len(limbs)} get a term{f' ({terms})' if terms else ''}; {flagged} "
                 "flagged out_of_scope")
    return "\n".join(lines)
