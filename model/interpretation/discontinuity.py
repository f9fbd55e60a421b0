"""Breaks in the score curve, and whether they prove a stacked or corrupt series.

A **candidate** break is a level shift of the unsmoothed scores between neighbouring slices
that the curve's own slope and slice-to-slice noise cannot explain and that persists (a
shift, not one odd slice): :func:`find_discontinuities`.

A candidate is **evidence** of two series stacked into one (or a corrupt one) only when the
curve on both sides of it is long and well ordered, so that each side is a placed piece of
anatomy, and the jump between them is one that a single body cannot make:

* **backward**: the score falls against the direction in which both sides rise, as when
  the second series starts lower than the first ended (duplicates, re-scans, a second
  acquisition appended), or
* **skip**: the score jumps forward by more than :attr:`DiscontinuitySettings.min_skip`,
  far more anatomy than a slice step can cover (the jump is measured beyond the curve's
  trend over the z distance, so a gap in the series explains its own share).

Everything else (a handful of odd slices at the vertex or at the end of a thin-slice series,
the model's own step at the thoracic inlet, a wiggle) is a warning, which never withholds
the body part term. Real single series of ``../shared/data`` raise no candidate with both
sides ordered; the model's largest forward step inside one body is about 10 score units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model.interpretation.rank_correlation import spearman_rho
from model.interpretation.sanity import Anomaly, AnomalyCode, Severity


@dataclass(frozen=True)
class DiscontinuitySettings:
    """Parameters of :func:`find_discontinuities` and :func:`judge_breaks`.

    Attributes
    ----------
    min_jump : float
        Smallest jump in score units that counts (8 ≈ 7 cm of anatomy). Single series of
        the shared data shift by at most 9.4 where their content is cut abruptly (OpenKBP
        boxes) and otherwise by less than 4.
    noise_factor : float
        A jump must also exceed this many robust standard deviations of the
        neighbour-to-neighbour score changes.
    window : int
        Slices on each side whose medians must confirm the jump as a level shift.
    min_support : int
        Fewest scored slices on each side for a candidate at all.
    min_side_slices, min_side_mm : int, float
        Each side of an error break needs this many scored slices spanning this many mm:
        a few slices at the vertex or at the end of a scan are not a second series.
    min_side_order : float
        Each side of an error break needs |Spearman ρ| of score against z of at least this,
        both with the same sign: the pieces must each be placed anatomy.
    min_skip : float
        A forward jump (along the sides' direction) must exceed this to prove a stack: the
        model steps by up to ~10 at the thoracic inlet inside one body.
    """

    min_jump: float = 8.0
    noise_factor: float = 6.0
    window: int = 5
    min_support: int = 3
    min_side_slices: int = 8
    min_side_mm: float = 40.0
    min_side_order: float = 0.9
    min_skip: float = 15.0


@dataclass(frozen=True)
class Break:
    """A candidate discontinuity between slice ``before`` and slice ``after``.

    ``evidence`` is "backward" or "skip" when the break proves a stacked or corrupt series,
    None otherwise; ``reason`` says in words why it does or does not.
    """

    before: int
    after: int
    z_before_mm: float
    z_after_mm: float
    jump: float  # level shift in score units, beyond the local trend
    evidence: str | None = None
    reason: str = ""


def find_discontinuities(z_mm: npt.ArrayLike, scores: npt.ArrayLike,
                         settings: DiscontinuitySettings | None = None) -> list[Break]:
    """Candidate level shifts of the unsmoothed scores between neighbouring slices.

    The trend is the median tangential slope of the raw curve (robust to the breaks it
    looks for); a neighbour step minus the trend is a candidate when it exceeds
    ``max(min_jump, noise_factor · σ)``, σ the robust spread of all such steps, and it is
    kept when the medians of ``window`` detrended slices on either side differ by at least
    half that threshold in the same direction, so one odd slice is not a break.

    Parameters
    ----------
    z_mm, scores : array_like, shape (n,)
        Patient z and unprocessed scores with NaN for empty slices.
    settings : DiscontinuitySettings, optional

    Returns
    -------
    list of Break
        Candidates, not yet judged (``evidence`` None); see :func:`judge_breaks`.
    """
    cfg = settings or DiscontinuitySettings()
    z = np.asarray(z_mm, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(s))
    if idx.size < 2 * cfg.min_support:
        return []
    zk, sk = z[idx], s[idx]
    trend = float(np.median(np.diff(sk) / np.diff(zk)))
    resid = sk - trend * zk
    steps = np.diff(resid)
    sigma = 1.4826 * float(np.median(np.abs(steps - np.median(steps))))
    limit = max(cfg.min_jump, cfg.noise_factor * sigma)
    breaks = []
    candidates = np.flatnonzero(np.abs(steps) > limit)
    support = cfg.min_support
    candidates = candidates[(candidates + 1 >= support) & (candidates + 1 <= idx.size - support)]
    for first, last in _runs(candidates, steps, cfg.window):
        before = resid[max(0, first + 1 - cfg.window): first + 1]
        after = resid[last + 1: last + 1 + cfg.window]
        shift = float(np.median(after) - np.median(before))
        if abs(shift) >= limit / 2 and np.sign(shift) == np.sign(steps[first]):
            breaks.append(Break(int(idx[first]), int(idx[last + 1]), float(zk[first]),
                                float(zk[last + 1]), shift))
    return breaks


def _runs(candidates: npt.NDArray[np.intp], steps: npt.NDArray[np.float64], window: int
          ) -> list[tuple[int, int]]:
    """Candidate steps of one sign within ``window`` of each other, as (first, last) step.

    A drop spread over a few slices (one with partial content between two series) is one
    break, not several with no slices between them.
    """
    runs: list[tuple[int, int]] = []
    for i in candidates.tolist():
        if runs and i - runs[-1][1] <= window and np.sign(steps[i]) == np.sign(steps[runs[-1][1]]):
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def judge_breaks(z_mm: npt.ArrayLike, scores: npt.ArrayLike, breaks: Sequence[Break],
                 settings: DiscontinuitySettings | None = None) -> list[Break]:
    """Candidates with ``evidence`` and ``reason`` filled in (see the module docstring).

    Parameters
    ----------
    z_mm, scores : array_like, shape (n,)
        As for :func:`find_discontinuities`.
    breaks : sequence of Break
        Its candidates, in slice order.
    settings : DiscontinuitySettings, optional
    """
    cfg = settings or DiscontinuitySettings()
    z = np.asarray(z_mm, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    judged = []
    for k, b in enumerate(breaks):
        first = breaks[k - 1].after if k > 0 else 0
        last = breaks[k + 1].before if k + 1 < len(breaks) else z.size - 1
        left, right = _side(z, s, first, b.before), _side(z, s, b.after, last)
        evidence, reason = _verdict(b, left, right, cfg)
        judged.append(Break(b.before, b.after, b.z_before_mm, b.z_after_mm, b.jump,
                            evidence, reason))
    return judged


@dataclass(frozen=True)
class _Side:
    n: int
    extent_mm: float
    rho: float


def _side(z: npt.NDArray[np.float64], s: npt.NDArray[np.float64], first: int, last: int
          ) -> _Side:
    part = slice(first, last + 1)
    keep = np.isfinite(s[part])
    zk, sk = z[part][keep], s[part][keep]
    if zk.size < 3 or np.ptp(sk) == 0:
        return _Side(int(zk.size), float(np.ptp(zk)) if zk.size else 0.0, 0.0)
    rho = spearman_rho(zk, sk)
    return _Side(int(zk.size), float(np.ptp(zk)), rho if np.isfinite(rho) else 0.0)


def _verdict(b: Break, left: _Side, right: _Side, cfg: DiscontinuitySettings
             ) -> tuple[str | None, str]:
    for name, side in (("before", left), ("after", right)):
        if side.n < cfg.min_side_slices or side.extent_mm < cfg.min_side_mm:
            return None, (f"only {side.n} scored slices ({side.extent_mm:.0f} mm) {name} it: "
                          "too few to be a second series")
        if abs(side.rho) < cfg.min_side_order:
            return None, (f"the curve {name} it is not ordered (Spearman ρ {side.rho:.2f}): "
                          "a placement wobble, not a second series")
    if np.sign(left.rho) != np.sign(right.rho):
        return None, "the curve turns at it: no stack of two series in one direction"
    direction = float(np.sign(left.rho))
    along = b.jump * direction
    if along < 0:
        return "backward", (f"the score falls by {abs(b.jump):.1f} against the direction of both "
                            "ordered sides: the anatomy starts again")
    if along >= cfg.min_skip:
        return "skip", (f"the score skips {along:.1f} ahead between two ordered sides: "
                        "more anatomy than the slice step covers")
    return None, (f"a step of {along:.1f} along the curve's direction: within what one body "
                  f"shows (skips below {cfg.min_skip:g} are not evidence)")


def discontinuity_anomalies(breaks: Sequence[Break]) -> list[Anomaly]:
    """One record per judged break: an error with evidence, a warning without."""
    out = []
    for b in breaks:
        where = (f"score jumps by {b.jump:+.1f} between slices {b.before} and {b.after} "
                 f"(z {b.z_before_mm:.1f} → {b.z_after_mm:.1f} mm)")
        if b.evidence is not None:
            severity, message = Severity.ERROR, f"{where}: stacked, duplicated or corrupt series; "
        else:
            severity, message = Severity.WARNING, f"{where}, not a stacked series: "
        out.append(Anomaly(AnomalyCode.DISCONTINUITY, severity, message + b.reason,
                           slices=(b.before, b.after), z_mm=(b.z_before_mm, b.z_after_mm),
                           details={"jump": b.jump, "evidence": b.evidence}))
    return out
