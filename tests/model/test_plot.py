"""PNG score plot: written, sized as documented, and robust to removed slices."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from model.interpretation.analysis import analyze
from model.interpretation.bodypart import landmark_table
from model.reading.nifti import read_nifti
from model.scoring.inference import BodyPartRegressor
from model.tools.plot import plot_scores

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which follows the 8-byte signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def test_plot_of_synthetic_scores_with_gaps(tmp_path: Path) -> None:
    z = np.arange(-200.0, 200.0, 2.5)
    raw = 60.0 + 0.1 * z + np.random.default_rng(0).normal(0.0, 1.0, z.size)
    cleaned = np.where((z < -180) | ((z > 0) & (z < 20)), np.nan, 60.0 + 0.1 * z)
    out = tmp_path / "sub" / "plot.png"
    plot_scores(out, z, raw, cleaned, title="synthetic",
                regions={"chest": (-200.0, 100.0), "neck": (100.0, 200.0)},
                landmarks={"lung_start": 44.1, "lung_end": 75.4, "nose": 92.6})
    assert _png_size(out) == (1100, 605)  # 10 × 5.5 in at 110 dpi


def test_plot_rejects_mismatched_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one value per slice"):
        plot_scores(tmp_path / "x.png", np.arange(3.0), np.arange(4.0), title="bad")


def test_plot_of_a_real_series(shared_data: Path, tmp_path: Path,
                               regressor: BodyPartRegressor) -> None:
    volume = read_nifti(shared_data / "ct" / "openkbp_pt_2.nii.gz")
    result = analyze(volume, regressor)
    regions = {name: (r.z_min_mm, r.z_max_mm) for name, r in result.regions.items()
               if r is not None}
    table = landmark_table(regressor.meta.reference_table)
    out = tmp_path / "openkbp_pt_2.png"
    plot_scores(out, result.patient_z_mm, result.unprocessed_scores,
                [np.nan if s is None else s for s in result.cleaned_scores],
                title=f"{volume.identity} ({result.body_part_examined_tag})",
                regions=regions, landmarks={n: lm.score for n, lm in table.items()})
    assert regions and out.stat().st_size > 20_000  # a drawn figure, not an empty canvas
