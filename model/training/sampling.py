"""Slice sampling for self-supervised training (thesis §4.1.3, eq. 4.1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SliceSample:
    """m equidistant slice indices of one volume and their physical spacing."""

    indices: np.ndarray
    delta_h_mm: float


def sample_equidistant(
    rng: np.random.Generator,
    n_slices: int,
    z_spacing_mm: float,
    m: int,
    delta_h_range_mm: tuple[float, float],
) -> SliceSample:
    """Draw Δh uniformly in mm, convert it to a slice step k = round(Δh / z) (eq. 4.1).

    The step is at least 1 and shrunk so that m slices fit into the volume; a random start
    index is drawn for the remaining room. ``delta_h_mm`` is the spacing actually used,
    ``k · z``, so the loss sees the true physical distance.

    Raises
    ------
    ValueError
        If the volume has fewer than ``m`` slices.
    """
    if n_slices < m:
        raise ValueError(f"volume has {n_slices} slices, need at least m={m}")
    lo, hi = delta_h_range_mm
    delta_h = rng.uniform(lo, hi)
    k = max(1, round(delta_h / z_spacing_mm))
    k = min(k, (n_slices - 1) // (m - 1))
    start = int(rng.integers(0, n_slices - k * (m - 1)))
    return SliceSample(indices=start + k * np.arange(m), delta_h_mm=k * z_spacing_mm)
