"""Preprocessing: HU window, anti-aliased resampling to 3.5 mm, centre crop/pad."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.reading.nifti import read_nifti
from model.scoring.preprocess import INPUT_SIZE, clip_slice, preprocess_slices


def test_hu_window_maps_to_unit_range() -> None:
    hu = np.array([[[-3000.0, -1000.0], [250.0, 4000.0]]], dtype=np.float32)
    out = preprocess_slices(hu, (3.5, 3.5), size=2)
    assert out[0].ravel().tolist() == pytest.approx([-1.0, -1.0, 0.0, 1.0])


def test_output_shape_and_padding_with_air() -> None:
    hu = np.zeros((3, 40, 60), dtype=np.float32)  # water, 140 × 210 mm
    out = preprocess_slices(hu, (3.5, 3.5))
    assert out.shape == (3, INPUT_SIZE, INPUT_SIZE) and out.dtype == np.float32
    water = (0.0 + 1000.0) / 2500.0 * 2 - 1
    assert np.allclose(out[:, 64, 64], water)
    assert np.all(out[:, 0, :] == -1.0) and np.all(out[:, :, 0] == -1.0)
    assert (np.isclose(out, water).sum(axis=(1, 2)) == 40 * 60).all()


def test_resampling_preserves_physical_size() -> None:
    # A 200 mm disc on a 0.8 mm grid must stay ~200 mm wide on the 3.5 mm grid.
    n = 600
    yy, xx = np.mgrid[:n, :n]
    disc = (((yy - n / 2) ** 2 + (xx - n / 2) ** 2) < (100 / 0.8) ** 2).astype(np.float32)
    hu = (disc * 1000 - 1000)[None]
    out = preprocess_slices(hu, (0.8, 0.8))
    width_px = (out[0, INPUT_SIZE // 2] > -0.6).sum()
    assert width_px * 3.5 == pytest.approx(200, abs=7)


def test_antialiasing_removes_fine_stripes() -> None:
    # 1-pixel stripes at 0.5 mm are far beyond the 3.5 mm grid's Nyquist limit: they must
    # average out to grey instead of aliasing into coarse stripes.
    stripes = np.tile(np.array([-1000.0, 1000.0], dtype=np.float32), 448)[None, None, :]
    hu = np.repeat(stripes, 896, axis=1)
    out = preprocess_slices(hu, (0.5, 0.5))
    centre = out[0, 32:96, 32:96]
    assert centre.std() < 0.02


def test_real_volume_is_centred_and_in_range(shared_data: Path) -> None:
    vol = read_nifti(shared_data / "ct" / "lidc_0003.nii.gz")
    out = preprocess_slices(vol.hu[::20], vol.pixel_spacing_mm)
    assert out.min() >= -1.0 and out.max() <= 1.0
    body = out > -0.6  # denser than -250 HU
    assert body[:, 44:84, 44:84].mean() > 0.5  # patient in the middle


@pytest.mark.parametrize("spacing", [(0.78, 0.78), (3.5, 3.5)])  # resampled, and not
def test_slices_clipped_by_the_reader_give_the_same_input(shared_data: Path,
                                                          spacing: tuple[float, float]) -> None:
    hu = read_nifti(shared_data / "ct" / "lidc_0003.nii.gz").hu[40:44].copy()
    hu[:, 200:210, 200:210] = 3000.0  # metal, so both ends of the window are clipped
    assert hu.min() < -1000.0
    expected = preprocess_slices(hu, spacing)
    clipped = hu.copy()
    for plane in clipped:
        clip_slice(plane)
    before = clipped.copy()
    np.testing.assert_array_equal(preprocess_slices(clipped, spacing, clipped=True), expected)
    np.testing.assert_array_equal(clipped, before)  # the input is only read
