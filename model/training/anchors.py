"""Weak anatomical anchors: landmarks the image itself shows, pulled to bpreg's published scores.

Self-supervised order training fixes the direction of the score but not how many score units a
millimetre is worth in each region; with few torso volumes the pelvis and abdomen end up
compressed (the femoral head top scored 36 where bpreg's scale puts it at 13.6). The rules of
:mod:`model.evaluation.lung_landmarks` and :mod:`model.evaluation.bone_landmarks` find the
lung ends, iliac crests, femoral heads and pelvis bottom from HU alone, with no manual label;
training pulls the score of those slices towards the landmark's score on bpreg's published
scale (:data:`ANCHOR_LANDMARKS`). The same rules run on every volume, so the anchors also pull
the same landmark in different volumes to the same score.

Moving the pelvis down the scale must move the thighs below it too, or a fine-tuned model
reverses them (seen: Pelvic-Ref-003's thighs scored above its pelvis bottom). Where both the
pelvis bottom and the femoral heads are found, slices :data:`THIGH_OFFSETS_MM` below the
pelvis bottom are anchored on the volume's own pelvic scale continued downwards.

Landmarks alone leave the stretches between them free (runs p16-p22 scored the pelvis as a
step and the abdomen twice too steep or flat): :func:`with_scale_anchors` adds anchors every
few mm between consecutive landmarks on the volume's own scale, and
:func:`with_abdomen_extension` continues the abdomen from the one end that a chest or pelvic
scan shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from model.evaluation.bone_landmarks import bone_landmarks
from model.evaluation.lung_landmarks import (
    content_extent,
    lung_landmarks_from_profile,
    lung_profile,
)
from model.interpretation.bodypart import PUBLISHED_REFERENCE
from model.reading.volume import CTVolume

#: Image landmark → its name in bpreg's published reference table
#: (``model/data/published_reference.csv``); the score there is the anchor's target.
ANCHOR_LANDMARKS: dict[str, str] = {
    "pelvis_bottom": "pelvis_start",
    "femoral_head_top": "femur_end",
    "iliac_crest_top": "pelvis_end",
    "lung_bottom": "lung_start",
    "lung_top": "lung_end",
}

#: Landmarks below the lung top: a volume with one of them shows the torso.
TORSO_LANDMARKS: frozenset[str] = frozenset(ANCHOR_LANDMARKS) - {"lung_top"}
#: Distances below the pelvis bottom of the thigh anchors (inside the scan's content only).
THIGH_OFFSETS_MM: tuple[float, ...] = (50.0, 100.0, 150.0)
#: Name prefix of the anchors :func:`with_scale_anchors` interpolates between landmarks.
SCALE_ANCHOR_PREFIX = "scale_"


@dataclass(frozen=True)
class Anchors:
    """Image landmarks of one training volume: names, z in mm, nearest slice index and
    target score on bpreg's published scale."""

    names: tuple[str, ...]
    z_mm: npt.NDArray[np.float64]
    slice_index: npt.NDArray[np.int64]
    score: npt.NDArray[np.float64]

    def z_of(self, name: str) -> float | None:
        """z in mm of the landmark ``name``; None when the image rules did not find it."""
        return float(self.z_mm[self.names.index(name)]) if name in self.names else None

    @property
    def landmark_count(self) -> int:
        """How many anchors are landmarks, not interpolated by :func:`with_scale_anchors`."""
        return sum(not n.startswith(SCALE_ANCHOR_PREFIX) for n in self.names)

    @property
    def shows_torso(self) -> bool:
        """Whether a landmark below the lung top is visible."""
        return bool(TORSO_LANDMARKS.intersection(self.names))

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[np.generic]] | np.lib.npyio.NpzFile
                    ) -> Anchors:
        """Anchors from the ``anchor_*`` arrays of a training cache entry."""
        return cls(tuple(str(n) for n in arrays["anchor_names"]),
                   np.asarray(arrays["anchor_z_mm"], dtype=np.float64),
                   np.asarray(arrays["anchor_index"], dtype=np.int64),
                   np.asarray(arrays["anchor_score"], dtype=np.float64))


NO_ANCHORS = Anchors((), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0))


def _thighs(found: dict[str, float], z_lowest: float) -> dict[str, tuple[float, float]]:
    """Thigh anchors: name → (z, score) on the pelvis's own scale continued downwards."""
    if "pelvis_bottom" not in found or "femoral_head_top" not in found:
        return {}
    bottom, head = found["pelvis_bottom"], found["femoral_head_top"]
    start, end = PUBLISHED_REFERENCE["pelvis_start"], PUBLISHED_REFERENCE["femur_end"]
    per_mm = (end - start) / (head - bottom)
    return {f"thigh_{d:g}mm": (bottom - d, start - d * per_mm)
            for d in THIGH_OFFSETS_MM if bottom - d >= z_lowest}


#: Landmarks, feet → head, between which :func:`with_scale_anchors` interpolates: the pelvis
#: (pelvis bottom to iliac crest) and the abdomen (iliac crest to lung bottom).
PELVIC_SPAN: tuple[str, ...] = ("pelvis_bottom", "femoral_head_top", "iliac_crest_top")
ABDOMEN_SPAN: tuple[str, ...] = ("iliac_crest_top", "lung_bottom")


def with_scale_anchors(anchors: Anchors, z_axis: npt.NDArray[np.float64], step_mm: float,
                       span: tuple[str, ...]) -> Anchors:
    """``anchors`` plus one anchor every ``step_mm`` between consecutive landmarks of
    ``span``, its target interpolated linearly on bpreg's scale between theirs: the
    volume's own scale.

    The landmark anchors alone leave the model free to score a region as a step: runs
    p4 and p16 score the slices 20-120 mm above the pelvis bottom of Pelvic-Ref-003, one of
    their anchored training volumes, at 11-20 where its own scale puts 2-14, and p20, whose
    pelvis follows its own scale, compresses the abdomen to twice bpreg's score per mm.
    ``z_axis`` is the volume's slice positions (the anchors' slice indices point into it); a
    volume without two landmarks of ``span`` is returned unchanged.
    """
    if step_mm <= 0:
        raise ValueError("the scale anchor step must be positive")
    at = [anchors.names.index(n) for n in span if n in anchors.names]
    ends, targets = anchors.z_mm[at], anchors.score[at]
    added = np.array([z0 + k * step_mm for z0, z1 in pairwise(ends)
                      for k in range(1, int((z1 - z0) // step_mm) + 1)
                      if z1 - (z0 + k * step_mm) >= step_mm / 2],  # none crowding the next
                     dtype=np.float64)
    if not added.size:
        return anchors
    return _with_added(anchors, z_axis, added, np.interp(added, ends, targets),
                       [f"{SCALE_ANCHOR_PREFIX}{span[0]}+{z - ends[0]:g}mm" for z in added])


def abdomen_length_mm(anchors: Iterable[Anchors]) -> float | None:
    """Median distance from the iliac crest top up to the lung bottom over the volumes that
    show both (None without one): the abdomen's length in the training set."""
    lengths = [lungs - crest for a in anchors
               if (crest := a.z_of("iliac_crest_top")) is not None
               and (lungs := a.z_of("lung_bottom")) is not None and lungs > crest]
    return float(np.median(lengths)) if lengths else None


def with_abdomen_extension(anchors: Anchors, z_axis: npt.NDArray[np.float64], step_mm: float,
                           reach_mm: float, length_mm: float) -> Anchors:
    """``anchors`` plus, for a volume that shows one end of the abdomen but not the other,
    one anchor every ``step_mm`` up to ``reach_mm`` into the abdomen from that end (inside
    the scan), its target on bpreg's abdominal scale stretched over ``length_mm``
    (:func:`abdomen_length_mm`).

    Most torso scans show only one end: a chest CT stops below its lung bottom, a pelvic CT
    above its iliac crest. Without anchors there the abdomen is free, and runs p16-p22
    score it twice as steep as bpreg (the OnkoDICOM thorax's lowest 120 mm fall from 44 to
    23, past the crest's 28.8) or flat (Pelvic-Ref-002's lowest 100 mm above its crest).
    """
    if step_mm <= 0 or reach_mm <= 0 or length_mm <= 0:
        raise ValueError("the abdomen extension needs a positive step, reach and length")
    crest, lungs = anchors.z_of("iliac_crest_top"), anchors.z_of("lung_bottom")
    if (crest is None) == (lungs is None):
        return anchors
    per_mm = (PUBLISHED_REFERENCE["lung_start"] - PUBLISHED_REFERENCE["pelvis_end"]) / length_mm
    distances = np.arange(step_mm, reach_mm + step_mm / 2, step_mm)
    # from the lung bottom downwards, or from the iliac crest upwards
    end, sign = ("lung_bottom", -1.0) if lungs is not None else ("iliac_crest_top", 1.0)
    start = anchors.z_of(end)
    assert start is not None
    z = start + sign * distances
    inside = (z >= z_axis.min()) & (z <= z_axis.max())
    if not inside.any():
        return anchors
    score = PUBLISHED_REFERENCE[ANCHOR_LANDMARKS[end]] + sign * distances[inside] * per_mm
    return _with_added(anchors, z_axis, z[inside], score,
                       [f"{SCALE_ANCHOR_PREFIX}{end}{sign * d:+g}mm" for d in distances[inside]])


def _with_added(anchors: Anchors, z_axis: npt.NDArray[np.float64], z: npt.NDArray[np.float64],
                score: npt.NDArray[np.float64], names: list[str]) -> Anchors:
    """``anchors`` and the anchors ``names`` at ``z`` with targets ``score``, feet → head."""
    all_names = (*anchors.names, *names)
    z_mm = np.concatenate([anchors.z_mm, z])
    index = np.concatenate([anchors.slice_index, _nearest_slices(z_axis, z)])
    scores = np.concatenate([anchors.score, score])
    order = np.argsort(z_mm, kind="stable")
    return Anchors(tuple(all_names[i] for i in order), z_mm[order], index[order], scores[order])


def _nearest_slices(z_axis: npt.NDArray[np.float64], z_mm: npt.NDArray[np.float64]
                    ) -> npt.NDArray[np.int64]:
    """Index of the slice of ``z_axis`` nearest to each of ``z_mm``."""
    nearest: npt.NDArray[np.int64] = np.abs(z_axis[None, :] - z_mm[:, None]).argmin(axis=1)
    return nearest.astype(np.int64)


def find_anchors(volume: CTVolume, bones: dict[str, float] | None = None) -> Anchors:
    """The anchor landmarks ``volume`` shows (rules of the two landmark modules), and its
    thigh anchors.

    Parameters
    ----------
    volume : CTVolume
        A CT in HU.
    bones : dict of str to float, optional
        The pelvic bone landmarks (name → z in mm) where they are known otherwise (the
        phantoms' organ labels); by default the HU rules find them.

    Returns
    -------
    Anchors
        Feet → head, each with the index of the slice nearest to it.
    """
    lungs = lung_profile(volume)
    found = lung_landmarks_from_profile(lungs, volume.z_mm)
    found.update(bone_landmarks(volume, lungs) if bones is None else bones)
    z_axis = np.asarray(volume.z_mm, dtype=np.float64)
    first, _ = content_extent(lungs.occupied, z_axis.size)
    points = {n: (z, PUBLISHED_REFERENCE[ANCHOR_LANDMARKS[n]])
              for n, z in found.items() if n in ANCHOR_LANDMARKS}
    if first < z_axis.size:
        points.update(_thighs(found, float(z_axis[first])))
    names = tuple(sorted(points, key=lambda n: points[n][0]))
    z = np.array([points[n][0] for n in names], dtype=np.float64)
    index = _nearest_slices(z_axis, z) if names else np.zeros(0, dtype=np.int64)
    return Anchors(names, z, index,
                   np.array([points[n][1] for n in names], dtype=np.float64))


def anchor_targets(anchors: Anchors, scale: float, offset: float) -> npt.NDArray[np.float32]:
    """Targets in the network's raw units: ``(target score − offset) / scale``.

    ``scale`` and ``offset`` map raw output to the calibrated score (``score = scale·raw +
    offset``); using the starting model's calibration keeps a fine-tuned model on its scale.
    """
    return ((anchors.score - offset) / scale).astype(np.float32)
