"""Limb crops are out of scope by what the image shows; whole cross-sections are not."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.interpretation.image_content import image_content, limb_crop_anomaly
from model.interpretation.sanity import AnomalyCode, Severity
from model.reading.nifti import read_nifti


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
