"""DICOM reader: real series from ../shared/data/dicom and series generated from a NIfTI volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    JPEG2000Lossless,
    LegacyConvertedEnhancedCTImageStorage,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from model.api import ERRORS_QUOTED, analyze_series
from model.reading.dicom import DicomReadResult, read_dicom_folder, read_dicom_series
from model.reading.nifti import read_nifti
from model.reading.volume import CTInputError, CTVolume
from tests.dicom_factory import shrink, write_ct_series, write_enhanced_ct, write_localizer


@pytest.fixture(scope="module")
def volume(shared_data: Path) -> CTVolume:
    """30 chest slices of LIDC-IDRI-0003 at 6 mm pixels (70 × 70), int HU."""
    return shrink(read_nifti(shared_data / "ct" / "lidc_0003.nii.gz"), slices=slice(50, 80),
                  pixel_step=2)


def only_volume(result: DicomReadResult) -> CTVolume:
    assert not result.errors, result.errors
    assert len(result.volumes) == 1
    return result.volumes[0]


def assert_same(read: CTVolume, expected: CTVolume, hu_atol: float = 0.5) -> None:
    assert read.hu.dtype == np.float32
    assert read.hu.shape == expected.hu.shape
    np.testing.assert_allclose(read.hu, expected.hu, atol=hu_atol)
    np.testing.assert_allclose(read.z_mm, expected.z_mm, atol=1e-3)
    np.testing.assert_allclose(read.pixel_spacing_mm, expected.pixel_spacing_mm)


# --- real series ---------------------------------------------------------------------------


def test_real_jpeg2000_series(shared_data: Path) -> None:
    vol = only_volume(read_dicom_folder(shared_data / "dicom" / "totalseg_example_ct_dicom"))
    assert vol.hu.shape == (20, 512, 512)
    np.testing.assert_allclose(np.diff(vol.z_mm), 2.0, atol=1e-3)
    np.testing.assert_allclose(vol.pixel_spacing_mm, (0.9765625, 0.9765625))
    assert vol.hu.min() >= -1024 and vol.hu.max() > 300
    assert np.mean(np.abs(vol.hu + 1000) < 50) > 0.1  # plenty of air around the body
    # This anonymised series has blank UIDs in the data set; the file meta still names each file.
    assert vol.series_instance_uid is None
    assert len(set(vol.sop_instance_uids)) == 20 and all(vol.sop_instance_uids)
    assert vol.warnings == []


def test_real_ge_tilted_variable_spacing_series(shared_data: Path) -> None:
    vol = only_volume(read_dicom_folder(shared_data / "dicom" / "dcm_qa_ct_ge_head_tilt"))
    assert vol.hu.shape == (28, 512, 512)
    steps = np.diff(vol.z_mm)
    assert np.all(steps > 0)
    np.testing.assert_allclose(steps[:13], 4.22, atol=0.01)
    np.testing.assert_allclose(steps[13], 1.14, atol=0.01)
    np.testing.assert_allclose(steps[14:], 7.38, atol=0.01)
    assert vol.hu.min() == -1024  # PixelPaddingValue (-1500) read as air
    assert vol.hu.max() > 1000  # skull
    assert np.mean(np.abs(vol.hu + 1000) < 50) > 0.1
    text = " ".join(vol.warnings)
    assert "tilt" in text and "18.5°" in text
    assert "gap" in text and "non-uniform" in text


# --- generated series ----------------------------------------------------------------------


def test_plain_axial_round_trip(volume: CTVolume, tmp_path: Path) -> None:
    uid = generate_uid()
    paths = write_ct_series(volume, tmp_path, series_uid=uid)
    vol = only_volume(read_dicom_series(paths))
    assert_same(vol, volume)
    assert vol.series_instance_uid == uid
    assert vol.sop_instance_uids == [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths]
    assert vol.source == str(tmp_path)
    assert vol.warnings == []


@pytest.mark.parametrize(
    ("position", "reverse"),
    [("HFS", True), ("FFS", False), ("FFS", True), ("HFP", False), ("FFP", True)],
)
def test_orientation_and_order_are_canonicalised(
    volume: CTVolume, tmp_path: Path, position: str, reverse: bool
) -> None:
    write_ct_series(volume, tmp_path, patient_position=position, reverse=reverse)
    vol = only_volume(read_dicom_folder(tmp_path))
    assert_same(vol, volume)
    assert vol.warnings == []


def test_transposed_storage_is_canonicalised(volume: CTVolume, tmp_path: Path) -> None:
    """Columns along y and rows along x (IOP 0\\1\\0\\1\\0\\0): the reader transposes back."""
    wide = shrink(volume, slices=slice(0, 6))
    wide.hu = np.ascontiguousarray(wide.hu[:, :50, :])  # non-square, so a missed transpose fails
    wide.pixel_spacing_mm = (3.0, 6.0)
    for path in write_ct_series(wide, tmp_path):
        ds = pydicom.dcmread(path)
        transposed = np.ascontiguousarray(ds.pixel_array.T)
        ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
        ds.PixelSpacing = [6.0, 3.0]
        ds.Rows, ds.Columns = transposed.shape
        ds.PixelData = transposed.tobytes()
        ds.save_as(path)
    vol = only_volume(read_dicom_folder(tmp_path))
    assert_same(vol, wide)
    assert vol.warnings == []


def test_rescale_slope_is_applied(volume: CTVolume, tmp_path: Path) -> None:
    write_ct_series(volume, tmp_path, rescale=(2.0, -2048.0))
    assert_same(only_volume(read_dicom_folder(tmp_path)), volume, hu_atol=1.0)


def test_gaps_keep_true_positions(volume: CTVolume, tmp_path: Path) -> None:
    kept = [k for k in range(volume.n_slices) if k not in (10, 11, 12, 20)]
    gapped = shrink(volume, slices=kept)
    write_ct_series(gapped, tmp_path)
    vol = only_volume(read_dicom_folder(tmp_path))
    assert_same(vol, gapped)
    assert any("2 gap(s)" in w for w in vol.warnings), vol.warnings


def test_duplicates_keep_lowest_instance_number(volume: CTVolume, tmp_path: Path) -> None:
    write_ct_series(volume, tmp_path, duplicate=(3, 7, 29))
    vol = only_volume(read_dicom_folder(tmp_path))
    assert_same(vol, volume)  # the +100 HU copies were dropped
    assert any("dropped 3 slice(s) duplicating" in w for w in vol.warnings), vol.warnings


@pytest.mark.parametrize("position", ["HFS", "FFS"])
def test_gantry_tilt(volume: CTVolume, tmp_path: Path, position: str) -> None:
    write_ct_series(volume, tmp_path, tilt_deg=15.0, patient_position=position, reverse=True)
    vol = only_volume(read_dicom_folder(tmp_path))
    assert_same(vol, volume)  # slices as acquired, z_mm of each slice centre
    assert any("15.0°" in w for w in vol.warnings), vol.warnings


@pytest.mark.parametrize("reverse", [False, True])
def test_enhanced_ct_multiframe(volume: CTVolume, tmp_path: Path, reverse: bool) -> None:
    path = write_enhanced_ct(volume, tmp_path / "enhanced.dcm", reverse=reverse)
    vol = only_volume(read_dicom_series([path]))
    assert_same(vol, volume)  # per-frame RescaleIntercept varies
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert vol.sop_instance_uids == [ds.SOPInstanceUID] * volume.n_slices
    assert vol.source == str(path)


def test_legacy_converted_enhanced_ct(volume: CTVolume, tmp_path: Path) -> None:
    path = write_enhanced_ct(volume, tmp_path / "legacy.dcm")
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = LegacyConvertedEnhancedCTImageStorage
    ds.save_as(path)
    assert_same(only_volume(read_dicom_series([path])), volume)


def test_enhanced_ct_tilted_feet_first(volume: CTVolume, tmp_path: Path) -> None:
    path = write_enhanced_ct(volume, tmp_path / "e.dcm", patient_position="FFS", tilt_deg=-10.0)
    vol = only_volume(read_dicom_series([path]))
    assert_same(vol, volume)
    assert any("10.0°" in w for w in vol.warnings)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless])
def test_compressed_transfer_syntaxes(volume: CTVolume, tmp_path: Path, syntax: str) -> None:
    small = shrink(volume, slices=slice(0, 8))
    paths = write_ct_series(small, tmp_path, transfer_syntax=syntax)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    assert_same(only_volume(read_dicom_series(paths)), small)


def test_mixed_folder_with_bad_files(volume: CTVolume, tmp_path: Path) -> None:
    study = generate_uid()
    uid_a, uid_b = generate_uid(), generate_uid()
    a = shrink(volume, slices=slice(0, 12))
    b = shrink(volume, slices=slice(12, 30), pixel_step=2)
    write_ct_series(a, tmp_path / "x", series_uid=uid_a, study_uid=study, prefix="A")
    paths_b = write_ct_series(
        b, tmp_path / "x" / "deeper", series_uid=uid_b, study_uid=study, prefix="B"
    )
    write_localizer(volume, tmp_path / "x" / "scout_in_a", series_uid=uid_a, study_uid=study)
    write_localizer(volume, tmp_path / "scout_series", study_uid=study)
    (tmp_path / "x" / "notes.txt").write_text("not DICOM\n")
    data = paths_b[5].read_bytes()
    paths_b[5].write_bytes(data[: len(data) - 1000])  # inside the pixel data
    header_cut = tmp_path / "x" / "header_cut"
    header_cut.write_bytes(data[:300])
    (tmp_path / "DICOMDIR").write_bytes(b"ignored by name")

    result = read_dicom_folder(tmp_path)

    by_uid = {v.series_instance_uid: v for v in result.volumes}
    assert set(by_uid) == {uid_a, uid_b}
    assert_same(by_uid[uid_a], a)
    assert any("dropped 1 localizer" in w for w in by_uid[uid_a].warnings)
    assert_same(by_uid[uid_b], shrink(b, slices=[k for k in range(b.n_slices) if k != 5]))
    assert any("gap" in w for w in by_uid[uid_b].warnings)
    assert len(result.errors) == 4, result.errors
    errors = "\n".join(result.errors)
    assert f"{tmp_path / 'x' / 'notes.txt'}: not a readable DICOM file" in errors
    assert f"{paths_b[5]}: pixel data could not be decoded" in errors
    assert f"{header_cut}: missing Rows, Columns (incomplete or truncated header)" in errors
    assert "only localizer images" in errors


def test_non_ct_and_non_axial_series_are_errors(volume: CTVolume, tmp_path: Path) -> None:
    mr = write_ct_series(shrink(volume, slices=slice(0, 3)), tmp_path / "mr")
    for path in mr:
        ds = pydicom.dcmread(path)
        ds.Modality, ds.SOPClassUID = "MR", MRImageStorage
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.save_as(path)
    sagittal = write_ct_series(shrink(volume, slices=slice(0, 5)), tmp_path / "sag")
    for k, path in enumerate(sagittal):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [10.0 * k, -100, 100]
        ds.save_as(path)

    result = read_dicom_folder(tmp_path)

    assert result.volumes == []
    assert len(result.errors) == 4, result.errors
    assert (
        sum(
            f"{p}: not CT (Modality 'MR', SOP class 'MR Image Storage')" in e
            for p in mr
            for e in result.errors
        )
        == 3
    )
    assert "not an axial series" in result.errors[-1]


def test_outlier_orientation_and_matrix_are_dropped(volume: CTVolume, tmp_path: Path) -> None:
    uid = generate_uid()
    paths = write_ct_series(volume, tmp_path, series_uid=uid)
    ds = pydicom.dcmread(paths[4])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9, -0.43589]
    ds.save_as(paths[4])
    write_ct_series(shrink(volume, slices=[9], pixel_step=2), tmp_path / "odd", series_uid=uid)
    vol = only_volume(read_dicom_folder(tmp_path))
    assert_same(vol, shrink(volume, slices=[k for k in range(volume.n_slices) if k != 4]))
    text = " ".join(vol.warnings)
    assert "1 slice(s) whose orientation" in text and "1 slice(s) whose matrix size" in text


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    result = read_dicom_folder(tmp_path / "absent")
    assert result.volumes == [] and result.errors == [f"{tmp_path / 'absent'}: not a folder"]


@pytest.mark.parametrize(("keyword", "value", "reason"), [
    # Beyond MAX_POSITION_MM the slice spacing drowns in float rounding (1e300 + 5 == 1e300):
    # the series must be refused, not collapsed into one "duplicate" slice.
    ("ImagePositionPatient", [0.0, 0.0, 1e300], "implausible ImagePositionPatient"),
    # These overflow float32 HU into inf and NaN.
    ("RescaleSlope", 1e30, "implausible RescaleSlope"),
    ("RescaleSlope", 0, "implausible RescaleSlope"),
    ("RescaleIntercept", -1e39, "implausible RescaleSlope 1.0 or RescaleIntercept"),
])
def test_implausible_geometry_or_rescale_is_an_error(
        volume: CTVolume, tmp_path: Path, keyword: str, value: object, reason: str) -> None:
    paths = write_ct_series(shrink(volume, slices=slice(0, 5)), tmp_path)
    for path in paths:
        ds = pydicom.dcmread(path)
        setattr(ds, keyword, value)
        ds.save_as(path)
    result = read_dicom_series(paths)
    assert result.volumes == []
    assert len(result.errors) == 5
    assert all(reason in e for e in result.errors), result.errors[0]


def test_a_series_failing_in_every_file_gives_a_short_error(volume: CTVolume,
                                                           tmp_path: Path) -> None:
    paths = write_ct_series(volume, tmp_path)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PixelSpacing = [0, 0]
        ds.save_as(path)
    with pytest.raises(CTInputError) as raised:
        analyze_series(paths)
    message = str(raised.value)
    assert message.count("implausible PixelSpacing") == ERRORS_QUOTED
    assert message.endswith(f"; and {len(paths) - ERRORS_QUOTED} more")
