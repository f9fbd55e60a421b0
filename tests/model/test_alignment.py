"""z prealignment from score curves (Meine & Hering): shifts, small overlap, patient pairs."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from model.cli.align import add_align_command
from model.evaluation.landmarks import landmarks_for_volume, read_label_map
from model.reading.nifti import read_nifti
from model.reading.volume import CTVolume
from model.scoring.inference import BodyPartRegressor
from model.tools.alignment import (
    ScoreProfile,
    align_l1,
    align_three_slice,
    end_slope,
    has_body,
    prealign,
    score_profile,
    three_slice_indices,
    z_at_score,
)
from tests.figures import Report

#: The known shift of the moving copies (mm); not a multiple of any slice spacing.
SHIFT_MM = 137.5
#: Shift recovery tolerance of the ℓ1 method (the issue's done-when) and of the three-slice
#: method, whose three single-slice scores carry the network's slice-to-slice noise.
L1_TOLERANCE_MM = 5.0
THREE_SLICE_TOLERANCE_MM = 15.0
#: Landmarks compared between patients; their z differences are the reference offset.
PAIR_LANDMARKS = ("mandible_bottom", "brainstem_bottom")
PAIR_VOLUMES = ("openkbp_pt_2", "openkbp_pt_3", "openkbp_pt_4", "openkbp_pt_60",
                "openkbp_pt_96")
#: Between patients the anatomy itself differs (head flexion moves the mandible by
#: ±18 mm SD relative to the brainstem in OpenKBP), so the tolerance is anatomical.
PAIR_MEDIAN_TOLERANCE_MM = 15.0
PAIR_MAX_TOLERANCE_MM = 50.0


def _curve(z: np.ndarray) -> np.ndarray:
    """A non-linear score curve, steeper in the middle like the chest."""
    return 40.0 + 0.05 * z + 15.0 * np.tanh((z - 300.0) / 120.0)


def _sub(volume: CTVolume, lo: float, hi: float, shift_mm: float = 0.0) -> CTVolume:
    """Slices ``lo..hi`` (fractions) of a volume, with z moved by ``shift_mm``."""
    i0, i1 = int(lo * volume.n_slices), int(hi * volume.n_slices)
    return CTVolume(hu=volume.hu[i0:i1], z_mm=volume.z_mm[i0:i1] + shift_mm,
                    pixel_spacing_mm=volume.pixel_spacing_mm, source=f"{volume.source}[{i0}:{i1}]")


# --- pure functions ------------------------------------------------------------------------


def test_l1_recovers_a_shift_of_a_non_linear_curve() -> None:
    z = np.arange(0.0, 600.0, 3.0)
    fixed = ScoreProfile.of(z, _curve(z))
    zm = np.arange(200.0, 420.0, 2.0)  # another spacing, off the fixed grid
    moving = ScoreProfile.of(zm + SHIFT_MM, _curve(zm))
    result = align_l1(fixed, moving)
    assert result.offset_mm == pytest.approx(-SHIFT_MM, abs=1.0)
    assert result.overlap_mm == pytest.approx(zm[-1] - zm[0], abs=2.0)
    assert not result.extrapolated and result.cost < 0.05


def test_three_slice_looks_up_samples_in_the_fixed_curve() -> None:
    z = np.arange(0.0, 600.0, 3.0)
    fixed = ScoreProfile.of(z, _curve(z))
    zs = np.array([250.0, 300.0, 350.0])
    result = align_three_slice(fixed, zs - 40.0, _curve(zs))
    assert result.offset_mm == pytest.approx(40.0, abs=0.5)
    assert result.method == "three-slice" and not result.extrapolated


def test_disjoint_curves_are_placed_by_the_score_slope() -> None:
    z = np.arange(0.0, 300.0, 2.5)
    fixed = ScoreProfile.of(z, 0.1 * z)
    zm = np.arange(450.0, 700.0, 2.5)  # 150 mm gap, nothing to match
    moving = ScoreProfile.of(zm - SHIFT_MM, 0.1 * zm)
    for result in (align_l1(fixed, moving),
                   align_three_slice(fixed, zm[[20, 50, 80]] - SHIFT_MM, 0.1 * zm[[20, 50, 80]])):
        assert result.extrapolated
        assert result.offset_mm == pytest.approx(SHIFT_MM, abs=0.5)
    assert align_l1(fixed, moving).overlap_mm == pytest.approx(-(450.0 - z[-1]), abs=0.5)


def test_short_flat_curves_need_a_model_slope() -> None:
    z = np.arange(0.0, 40.0, 2.0)
    flat = ScoreProfile.of(z, np.full(z.size, 50.0))
    assert end_slope(flat, "top") is None
    assert end_slope(flat, "top", fallback=0.1) == 0.1
    assert z_at_score(flat, 70.0) is None
    assert z_at_score(flat, 70.0, fallback_slope=0.1) == pytest.approx(z[-1] + 200.0)
    with pytest.raises(ValueError, match="outside the fixed curve"):
        align_three_slice(flat, [0.0], [70.0])


def test_z_at_score_takes_the_median_crossing() -> None:
    z = np.arange(0.0, 100.0, 1.0)
    s = z.copy()
    s[48:53] = [50.0, 49.0, 50.5, 49.5, 51.0]  # a wobble crosses 50 several times
    assert z_at_score(ScoreProfile.of(z, s), 50.0) == pytest.approx(50.0, abs=2.0)


def test_three_slice_samples_skip_empty_slices() -> None:
    z = np.arange(20.0)
    occupied = np.zeros(20, dtype=bool)
    occupied[4:17] = True
    assert list(three_slice_indices(z, occupied)) == [7, 10, 13]


# --- with the shipped model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def thorax(shared_data: Path) -> CTVolume:
    return read_nifti(shared_data / "ct" / "onkodicom_rt_thorax.nii.gz")


@pytest.fixture(scope="module")
def thorax_profile(thorax: CTVolume, regressor: BodyPartRegressor) -> ScoreProfile:
    return score_profile(thorax, regressor)


@pytest.mark.parametrize("part", [
    (0.3, 0.8), (0.0, 0.4), (0.6, 1.0), (0.45, 0.6)])
def test_shift_of_a_cropped_copy_is_recovered(thorax: CTVolume, thorax_profile: ScoreProfile,
                                              regressor: BodyPartRegressor,
                                              part: tuple[float, float], report: Report) -> None:
    moving = _sub(thorax, *part, shift_mm=SHIFT_MM)
    l1 = prealign(thorax, moving, regressor, "l1", fixed_profile=thorax_profile)
    fast = prealign(thorax, moving, regressor, "three-slice", fixed_profile=thorax_profile)
    report("alignment", f"crop {part} shifted {SHIFT_MM} mm: ℓ1 error "
           f"{abs(l1.offset_mm + SHIFT_MM):.2f} mm, three-slice error "
           f"{abs(fast.offset_mm + SHIFT_MM):.2f} mm")
    assert l1.offset_mm == pytest.approx(-SHIFT_MM, abs=L1_TOLERANCE_MM)
    assert fast.offset_mm == pytest.approx(-SHIFT_MM, abs=THREE_SLICE_TOLERANCE_MM)
    assert l1.overlap_mm == pytest.approx(moving.z_mm[-1] - moving.z_mm[0], abs=5.0)


def test_pairs_of_patients_align_within_anatomical_tolerance(
        shared_data: Path, regressor: BodyPartRegressor, report: Report) -> None:
    profiles, landmarks = {}, {}
    for name in PAIR_VOLUMES:
        volume = read_nifti(shared_data / "ct" / f"{name}.nii.gz")
        labels, names = read_label_map(shared_data / "labels" / f"{name}.nii.gz")
        landmarks[name] = landmarks_for_volume(volume, labels, names)
        profiles[name] = score_profile(volume, regressor)
    errors = []
    for fixed, moving in itertools.permutations(PAIR_VOLUMES, 2):
        common = [k for k in PAIR_LANDMARKS if k in landmarks[fixed] and k in landmarks[moving]]
        assert common, f"{fixed}/{moving}: no common landmark"
        truth = np.mean([landmarks[fixed][k] - landmarks[moving][k] for k in common])
        errors.append(align_l1(profiles[fixed], profiles[moving]).offset_mm - truth)
    abs_err = np.abs(errors)
    report("alignment", f"patient pairs ({len(errors)} ordered pairs of {len(PAIR_VOLUMES)} "
           f"scans) ℓ1 offset error against landmarks: median {np.median(abs_err):.1f} mm, "
           f"90th percentile {np.quantile(abs_err, 0.9):.1f} mm, max {abs_err.max():.1f} mm")
    assert np.median(abs_err) < PAIR_MEDIAN_TOLERANCE_MM
    assert abs_err.max() < PAIR_MAX_TOLERANCE_MM


def test_body_check_finds_padding_slices(shared_data: Path) -> None:
    volume = read_nifti(shared_data / "ct" / "openkbp_pt_2.nii.gz")
    body = has_body(volume)
    assert not body[0] and body[volume.n_slices // 2]


def _align_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bpr")
    add_align_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


def test_align_command_on_a_shifted_nifti(shared_data: Path, tmp_path: Path,
                                          regressor: BodyPartRegressor,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    fixed = shared_data / "ct" / "onkodicom_rt_thorax.nii.gz"
    img = nib.load(str(fixed))
    assert isinstance(img, nib.Nifti1Image)
    part = img.slicer[:, :, 30:80]  # stored feet → head (RAS)
    shifted = part.affine.copy()
    shifted[2, 3] += SHIFT_MM
    moving = tmp_path / "moving.nii.gz"
    copy = nib.Nifti1Image(np.asarray(part.dataobj), shifted,  # type: ignore[no-untyped-call]
                           part.header)
    nib.save(copy, str(moving))
    out = tmp_path / "align.json"
    assert _align_cli(["align", str(fixed), str(moving), "--method", "both",
                       "--json", str(out)]) == 0
    assert "offset" in capsys.readouterr().out
    results = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert results["l1"]["offset_mm"] == pytest.approx(-SHIFT_MM, abs=L1_TOLERANCE_MM)
    assert results["three-slice"]["offset_mm"] == pytest.approx(
        -SHIFT_MM, abs=THREE_SLICE_TOLERANCE_MM)
