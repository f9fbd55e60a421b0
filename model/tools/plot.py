"""PNG plot of one series' slice scores along the patient axis.

Raw scores are drawn as dots, cleaned scores as a line (removed slices leave gaps),
body regions as shaded z spans and landmarks as labelled horizontal score lines. The
figure is drawn with matplotlib's Agg canvas directly, so no global backend or pyplot
state is touched (safe inside a server process).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: Shading per region name (bpreg's classes); other names cycle through :data:`_EXTRA`.
REGION_COLOURS: dict[str, str] = {
    "pelvis": "#8dd3c7", "abdomen": "#ffffb3", "chest": "#bebada", "neck": "#fb8072",
    "head": "#80b1d3", "legs": "#b3de69", "arms": "#fccde5",
}
_EXTRA = ("#d9d9d9", "#bc80bd", "#ccebc5", "#ffed6f")
#: Landmark lines further than this (score units) outside the curve are left out: the
#: plot is about this series, not the whole reference table.
LANDMARK_MARGIN = 5.0
#: Smallest vertical distance between landmark labels, as a fraction of the score axis.
LABEL_GAP = 0.03


def _finite_range(*arrays: npt.NDArray[np.float64]) -> tuple[float, float]:
    values = np.concatenate([a[np.isfinite(a)] for a in arrays])
    if values.size == 0:
        return 0.0, 1.0
    return float(values.min()), float(values.max())


def _region_colour(name: str, index: int) -> str:
    return REGION_COLOURS.get(name.lower(), _EXTRA[index % len(_EXTRA)])


def plot_scores(
    out: Path | BinaryIO,
    z_mm: npt.ArrayLike,
    raw: npt.ArrayLike,
    cleaned: npt.ArrayLike | None = None,
    *,
    title: str,
    regions: Mapping[str, tuple[float, float]] | None = None,
    landmarks: Mapping[str, float] | None = None,
    dpi: int = 110,
) -> None:
    """Write a PNG of a series' score curve.

    Parameters
    ----------
    out : Path or binary file
        PNG file to write (its folder is created), or a stream.
    z_mm : array_like, shape (n,)
        Patient z of every slice in mm (superior positive).
    raw : array_like, shape (n,)
        Unprocessed scores; NaN slices are not drawn.
    cleaned : array_like, shape (n,), optional
        Cleaned scores; NaN for removed slices.
    title : str
        Usually the series identity (SeriesInstanceUID or file).
    regions : mapping of str to (float, float), optional
        Region name → (z_min, z_max) in mm, shaded.
    landmarks : mapping of str to float, optional
        Landmark name → expected score, drawn as labelled horizontal lines when within
        :data:`LANDMARK_MARGIN` of the plotted scores.
    dpi : int
        Resolution; the figure is 10 × 5.5 inches.
    """
    z = np.asarray(z_mm, dtype=np.float64)
    s_raw = np.asarray(raw, dtype=np.float64)
    s_clean = None if cleaned is None else np.asarray(cleaned, dtype=np.float64)
    if s_raw.shape != z.shape or (s_clean is not None and s_clean.shape != z.shape):
        raise ValueError("z_mm, raw and cleaned must have one value per slice")
    fig = Figure(figsize=(10, 5.5), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lo, hi = _finite_range(s_raw, *([] if s_clean is None else [s_clean]))
    shown = {n: float(s) for n, s in (landmarks or {}).items()
             if lo - LANDMARK_MARGIN <= s <= hi + LANDMARK_MARGIN}
    if shown:
        lo, hi = min(lo, *shown.values()), max(hi, *shown.values())
    pad = 0.05 * max(hi - lo, 1.0)
    ax.set_ylim(lo - pad, hi + pad)
    _shade_regions(ax, regions or {})
    ax.plot(z, s_raw, ".", color="0.45", markersize=3, label="raw score")
    if s_clean is not None:
        ax.plot(z, s_clean, "-", color="tab:blue", linewidth=2, label="cleaned score")
    _draw_landmarks(ax, shown, min_gap=LABEL_GAP * (hi - lo + 2 * pad))
    if z.size:
        ax.set_xlim(float(z.min()), float(z.max()))
    ax.set_xlabel("patient z (mm, feet → head)")
    ax.set_ylabel("slice score (reference scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    # fixed margins instead of tight_layout: the landmark labels sit outside the axes
    fig.subplots_adjust(left=0.08, right=0.78, top=0.93, bottom=0.1)
    if isinstance(out, Path):
        out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")


def document_png(document: Mapping[str, Any]) -> bytes:
    """PNG of the curve of a result's strict-JSON document (what the node's index keeps).

    The title names the DICOM term only: no source path or identifier is drawn.
    """
    def floats(values: Any) -> list[float]:
        return [math.nan if v is None else float(v) for v in values or []]

    regions = {name: (float(r["z_min_mm"]), float(r["z_max_mm"]))
               for name, r in (document.get("regions") or {}).items() if r}
    landmarks = {name: float(entry["mean"])
                 for name, entry in (document.get("look-up table") or {}).items()}
    buffer = io.BytesIO()
    plot_scores(buffer, floats(document.get("patient_z_mm")),
                floats(document.get("unprocessed slice scores")),
                floats(document.get("cleaned slice scores")),
                title=f"BodyPartExamined: {document.get('body_part_examined') or 'withheld'}",
                regions=regions, landmarks=landmarks)
    return buffer.getvalue()


def _shade_regions(ax: Axes, regions: Mapping[str, tuple[float, float]]) -> None:
    for i, (name, (z0, z1)) in enumerate(regions.items()):
        ax.axvspan(min(z0, z1), max(z0, z1), color=_region_colour(name, i), alpha=0.45,
                   linewidth=0)
        ax.text(0.5 * (z0 + z1), 0.98, name, transform=ax.get_xaxis_transform(),
                ha="center", va="top", fontsize=8, color="0.2")


def _label_positions(scores: list[float], min_gap: float) -> list[float]:
    """Label heights for sorted scores, at least ``min_gap`` apart and centred on their lines.

    Close labels merge into clusters that are spaced evenly around the mean of their
    scores, so a crowd of labels stays next to its lines instead of drifting one way.
    """
    clusters: list[list[float]] = []

    def bottom(c: list[float]) -> float:
        return sum(c) / len(c) - 0.5 * (len(c) - 1) * min_gap

    for score in scores:
        clusters.append([score])
        while len(clusters) > 1 and (bottom(clusters[-1]) - bottom(clusters[-2])
                                     < len(clusters[-2]) * min_gap):
            clusters[-2:] = [clusters[-2] + clusters[-1]]
    return [bottom(c) + i * min_gap for c in clusters for i in range(len(c))]


def _draw_landmarks(ax: Axes, landmarks: Mapping[str, float], min_gap: float) -> None:
    """Landmark lines at their scores, labelled at the right edge without overlaps."""
    ordered = sorted(landmarks.items(), key=lambda kv: kv[1])
    heights = _label_positions([s for _, s in ordered], min_gap)
    for (name, score), y in zip(ordered, heights, strict=True):
        ax.axhline(score, color="tab:red", linestyle="--", linewidth=0.8, alpha=0.7)
        # a leader from the line's end to its (possibly shifted) label
        ax.plot([1.0, 1.03], [score, y], transform=ax.get_yaxis_transform(),
                color="tab:red", linewidth=0.6, alpha=0.7, clip_on=False)
        ax.text(1.035, y, f"{name} ({score:.1f})", transform=ax.get_yaxis_transform(),
                va="center", ha="left", fontsize=7, color="tab:red", clip_on=False)
