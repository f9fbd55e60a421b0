"""Limb crops are out of scope by what the image shows; whole cross-sections are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from model.interpretation.image_content import (
    enclosed_background,
    image_content,
    limb_crop_anomaly,
)
from model.interpretation.postprocess import BODY_HU
from model.interpretation.sanity import AnomalyCode, Severity
from model.reading.nifti import read_nifti
from model.reading.volume import ContentSample


@pytest.mark.parametrize("name", ["ibsi_sts_001", "ibsi_sts_037", "ibsi_sts_049"])
def test_tumour_centred_limb_crops_are_out_of_scope(shared_data: Path, name: str) -> None:
    volume = read_nifti(shared_data / "ct" / f"{name}.nii.gz")
    anomaly = limb_crop_anomaly(image_content(volume.hu, volume.pixel_spacing_mm))
    assert anomaly is not None
    assert (anomaly.code, anomaly.severity) == (AnomalyCode.OUT_OF_SCOPE, Severity.ERROR)


@pytest.mark.parametrize("name", ["lidc_0003", "pyradiomics_lung2", "pelvicref_002",
                                  "openkbp_pt_227"])
def test_trunk_head_and_neck_series_are_not_limb_crops(shared_data: Path, name: str) -> None:
    # pyradiomics_lung2 is cut in-plane too, but its lungs hold air
    volume = read_nifti(shared_data / "ct" / f"{name}.nii.gz")
    content = image_content(volume.hu, volume.pixel_spacing_mm)
    assert not content.limb_crop, content


@pytest.mark.parametrize("name", ["openkbp_pt_2", "ibsi_sts_001", "pelvicref_002"])
def test_enclosed_air_equals_scipy_fill_holes(shared_data: Path, name: str) -> None:
    volume = read_nifti(shared_data / "ct" / f"{name}.nii.gz")
    sample = ContentSample.of(volume.hu, volume.pixel_spacing_mm)
    masks = np.asarray(sample.hu) > BODY_HU
    expected = np.stack([ndimage.binary_fill_holes(m) & ~m for m in masks])
    assert expected.any()  # the check is not vacuous
    np.testing.assert_array_equal(enclosed_background(masks), expected)


def test_a_hole_opened_to_the_edge_is_no_hole() -> None:
    ring = np.ones((1, 5, 5), bool)
    ring[0, 1:4, 1:4] = False
    ring[0, 2, 2] = True  # background: a ring around one body pixel, closed on all sides
    assert enclosed_background(ring).sum() == 8
    ring[0, 0, 1] = False  # opened to the edge through the top row
    assert not enclosed_background(ring).any()
