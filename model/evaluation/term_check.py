"""Checks of what :func:`~model.interpretation.analysis.analyze` concludes, on volumes with
known anatomy.

Used by the tests and by ``python -m benchmarks.term_report``: does the DICOM term agree
with the regions a manifest lists for a volume, and are a reversed slice order and a
header z-spacing scaled by 2 or ½ caught? Variants reuse the scores of the original
(:func:`variant`), because flipping or rescaling z changes nothing the network sees.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from model.interpretation.analysis import AnalysisSettings, BodyPartResult, interpret
from model.interpretation.bodypart import dicom_terms
from model.interpretation.postprocess import IntVector
from model.reading.volume import CTVolume
from model.scoring.inference import BodyPartRegressor, SliceScores

#: Manifest region names (``body_regions`` of ``../shared/data/manifest.csv``) → our core
#: regions; ARM has no core region.
MANIFEST_REGION = {"HEAD": "head", "NECK": "neck", "CHEST": "chest", "ABDOMEN": "abdomen",
                   "PELVIS": "pelvis", "LEG": "legs"}
#: Core regions from feet to head.
REGION_ORDER = ("legs", "pelvis", "abdomen", "chest", "neck", "head")


def term_agrees_with_regions(term: str, manifest_regions: Iterable[str]) -> bool:
    """Whether a DICOM term fits the regions a manifest lists for a volume.

    The term must name a contiguous part of those regions, never an absent one, and may
    leave out at most one region at each end: a manifest lists a region a volume touches
    for a few slices, which the term rightly ignores.
    """
    listed = {MANIFEST_REGION[m] for m in manifest_regions if m in MANIFEST_REGION}
    truth = [r for r in REGION_ORDER if r in listed]
    named = dicom_terms()[term].regions if term in dicom_terms() else ()
    if not named or not set(named) <= set(truth):
        return False
    first, last = truth.index(named[0]), truth.index(named[-1])
    return first <= 1 and last >= len(truth) - 2


def stacked(first: CTVolume, first_scores: SliceScores, first_body: IntVector,
            second: CTVolume, second_scores: SliceScores, second_body: IntVector,
            regressor: BodyPartRegressor) -> BodyPartResult:
    """Interpret two series stacked into one: ``second`` continues ``first`` along z.

    The second series' positions continue the first's at its median spacing, as a
    mis-assembled series shows them; only the scores can reveal the stack.
    """
    step = float(np.median(np.diff(first.z_mm))) if first.n_slices > 1 else 1.0
    z = np.concatenate([first.z_mm, second.z_mm - second.z_mm[0] + first.z_mm[-1] + step])
    scores = SliceScores(z, np.concatenate([first_scores.raw, second_scores.raw]),
                         np.concatenate([first_scores.scores, second_scores.scores]))
    body = np.concatenate([np.asarray(first_body), np.asarray(second_body)])
    rows = max(first.hu.shape[1], second.hu.shape[1])
    cols = max(first.hu.shape[2], second.hu.shape[2])
    hu = np.full((z.size, rows, cols), -1024.0, dtype=np.float32)
    for offset, part in ((0, first), (first.n_slices, second)):
        hu[offset:offset + part.n_slices, :part.hu.shape[1], :part.hu.shape[2]] = part.hu
    moved = CTVolume(hu, z, first.pixel_spacing_mm, "stacked")
    return interpret(moved, scores, body, regressor, AnalysisSettings(check_content=False))


def variant(volume: CTVolume, scored: SliceScores, body_pixels: IntVector,
            regressor: BodyPartRegressor, *, z_factor: float = 1.0,
            reverse: bool = False) -> BodyPartResult:
    """Interpret ``volume`` as if its header were wrong.

    Parameters
    ----------
    volume, scored, body_pixels
        The volume and what
        :func:`~model.interpretation.analysis.score_with_content` returned for it.
    regressor : BodyPartRegressor
    z_factor : float
        Scales every slice distance (a header z-spacing off by this factor).
    reverse : bool
        Slices in the opposite order under the same positions (a flipped z-ordering).
    """
    z = volume.z_mm[0] + (volume.z_mm - volume.z_mm[0]) * z_factor
    body = np.asarray(body_pixels)
    scores = SliceScores(z, scored.raw, scored.scores)
    if reverse:
        scores = SliceScores(z, scored.raw[::-1], scored.scores[::-1])
        body = body[::-1]
    moved = CTVolume(volume.hu, z, volume.pixel_spacing_mm, volume.source)
    return interpret(moved, scores, body, regressor, AnalysisSettings(check_content=False))
