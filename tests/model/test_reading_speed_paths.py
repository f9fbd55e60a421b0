"""The fast reading paths give exactly what pydicom and the whole-volume reader give.

Headers are parsed from a prefix of each file, native pixels are read at their offset by
threads, and ``bpr predict`` / the node stream a series chunk by chunk. Each shortcut is
checked here against the plain way on series written from a real volume.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from model.interpretation.analysis import analyze, analyze_plan, default_regressor
from model.reading import dicom as dicom_reader
from model.reading.dicom import cycle_collection_paused, read_dicom_series, scan_dicom_series
from model.reading.header_values import header_value, unique_value
from model.reading.nifti import read_nifti
from model.reading.volume import CTVolume
from model.scoring import streaming
from tests.dicom_factory import shrink, write_ct_series


@pytest.fixture(scope="module")
def volume(shared_data: Path) -> CTVolume:
    """35 chest slices of LIDC-IDRI-0003 at 6 mm pixels (70 × 70)."""
    return shrink(read_nifti(shared_data / "ct" / "lidc_0003.nii.gz"), slices=slice(40, 75),
                  pixel_step=2)


def pydicom_hu(path: Path) -> np.ndarray:
    """HU of a single-frame file as pydicom decodes it, rescaled in float32."""
    ds = pydicom.dcmread(path)
    return (ds.pixel_array.astype(np.float32) * np.float32(ds.RescaleSlope)
            + np.float32(ds.RescaleIntercept))


def only_volume(paths: list[Path]) -> CTVolume:
    read = read_dicom_series(paths)
    assert not read.errors, read.errors
    assert len(read.volumes) == 1
    return read.volumes[0]


def test_native_pixels_equal_pydicom_decoding(volume: CTVolume, tmp_path: Path) -> None:
    paths = write_ct_series(volume, tmp_path)
    read = only_volume(paths)
    for i, path in enumerate(paths):  # head-first supine: stored as the canonical layout
        np.testing.assert_array_equal(read.hu[i], pydicom_hu(path))


def test_native_and_compressed_copies_read_identically(volume: CTVolume,
                                                       tmp_path: Path) -> None:
    native = only_volume(write_ct_series(volume, tmp_path / "native"))
    rle = only_volume(write_ct_series(volume, tmp_path / "rle", transfer_syntax=RLELossless))
    np.testing.assert_array_equal(native.hu, rle.hu)


@pytest.mark.parametrize("signed", [0, 1])
def test_unused_high_bits_are_cleared_as_pydicom_does(volume: CTVolume, tmp_path: Path,
                                                      signed: int) -> None:
    paths = write_ct_series(shrink(volume, slices=slice(0, 4)), tmp_path)
    for path in paths:
        ds = pydicom.dcmread(path)
        stored = np.frombuffer(ds.PixelData, "<u2").copy()
        stored[::2] |= 0xA000  # garbage above BitsStored, as some writers leave it
        ds.PixelData = stored.tobytes()
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, signed
        ds.save_as(path)
    read = only_volume(paths)
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(read.hu[i], pydicom_hu(path))


def test_header_beyond_the_prefix_and_icon_pixels_before_the_image(volume: CTVolume,
                                                                   tmp_path: Path) -> None:
    small = shrink(volume, slices=slice(0, 5))
    plain = only_volume(write_ct_series(small, tmp_path / "plain"))
    paths = write_ct_series(small, tmp_path / "odd")
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        if k % 2:  # a header longer than the prefix the reader looks at first
            block = ds.private_block(0x0029, "BPR TEST", create=True)
            block.add_new(0x10, "OB", bytes(dicom_reader.HEADER_PREFIX_BYTES + 1000))
        icon = Dataset()  # a nested PixelData element before the image's own
        icon.Rows, icon.Columns, icon.BitsAllocated, icon.BitsStored = 4, 4, 8, 8
        icon.HighBit, icon.PixelRepresentation, icon.SamplesPerPixel = 7, 0, 1
        icon.PhotometricInterpretation = "MONOCHROME2"
        icon.PixelData = bytes(range(16))
        ds.IconImageSequence = [icon]
        ds.save_as(path)
    odd = only_volume(paths)
    np.testing.assert_array_equal(odd.hu, plain.hu)
    np.testing.assert_array_equal(odd.z_mm, plain.z_mm)


def _odd_series(volume: CTVolume, folder: Path) -> list[Path]:
    """Scanner padding below air in the corners, and one file cut inside its pixels."""
    padded = CTVolume(hu=volume.hu.copy(), z_mm=volume.z_mm,
                      pixel_spacing_mm=volume.pixel_spacing_mm, source=volume.source)
    padded.hu[:, :40, :40] = -3024.0
    paths = write_ct_series(padded, folder)
    cut = paths[17].read_bytes()
    paths[17].write_bytes(cut[: len(cut) // 2])
    return paths


def test_streamed_analysis_equals_whole_volume_analysis(volume: CTVolume, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    paths = _odd_series(volume, tmp_path)
    monkeypatch.setattr(streaming, "CHUNK_SLICES", 8)  # several chunks, a partial last one
    regressor = default_regressor()
    whole = read_dicom_series(paths)
    expected = analyze(whole.volumes[0], regressor)
    scan = scan_dicom_series(paths)
    errors = list(scan.errors)
    result, series = analyze_plan(scan.plans[0], errors, regressor)
    assert errors == whole.errors and len(errors) == 1 and "could not be decoded" in errors[0]
    assert series.sop_instance_uids == whole.volumes[0].sop_instance_uids
    assert any("padding" in w for w in series.warnings)
    assert result.to_json_dict() == expected.to_json_dict()


def test_streaming_never_holds_the_full_volume(volume: CTVolume, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # a clinical matrix (350²), where the full volume dwarfs the network input
    fine = CTVolume(hu=volume.hu[:24].repeat(5, axis=1).repeat(5, axis=2), z_mm=volume.z_mm[:24],
                    pixel_spacing_mm=(volume.pixel_spacing_mm[0] / 5,
                                      volume.pixel_spacing_mm[1] / 5), source=volume.source)
    plan = scan_dicom_series(write_ct_series(fine, tmp_path)).plans[0]
    full_bytes = fine.hu.size * 4
    monkeypatch.setattr(streaming, "CHUNK_SLICES", 4)
    tracemalloc.start()
    try:
        streamed = streaming.stream_series(plan, [])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert streamed.slices.shape[0] == fine.n_slices
    assert peak < 0.6 * full_bytes, f"peak {peak / 1e6:.1f} MB, volume {full_bytes / 1e6:.1f} MB"


def test_header_values_are_converted_once_per_distinct_encoding(volume: CTVolume,
                                                                tmp_path: Path) -> None:
    first, second = write_ct_series(shrink(volume, slices=slice(0, 2)), tmp_path)
    a = pydicom.dcmread(first, stop_before_pixels=True)
    b = pydicom.dcmread(second, stop_before_pixels=True)
    assert header_value(a, "PixelSpacing") is header_value(b, "PixelSpacing")  # same bytes
    b = pydicom.dcmread(second, stop_before_pixels=True)
    b.PixelSpacing = [0.5, 0.5]  # no longer raw: read as set
    assert [float(v) for v in header_value(b, "PixelSpacing")] == [0.5, 0.5]
    assert header_value(b, "NoSuchKeyword", "default") == "default"
    assert header_value(a, "ImagePositionPatient") == a.ImagePositionPatient


def _raw(keyword: str, vr: str | None, value: bytes) -> Dataset:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    return Dataset({tag: RawDataElement(tag, vr, len(value), value, 0, vr is None, True)})


@pytest.mark.parametrize(("keyword", "vr", "value"), [
    ("ImagePositionPatient", "DS", b"-12.5\\3\\1e2 "),
    ("ImagePositionPatient", None, b"-12.5\\3\\100"),  # implicit VR
    ("ImagePositionPatient", "DS", b"2.5 "),
    ("ImagePositionPatient", "DS", b"1\\x\\3"),  # malformed: pydicom's answer
    ("ImagePositionPatient", "FD", b"\0" * 24),  # binary under another VR
    ("InstanceNumber", "IS", b" 12 "),
    ("InstanceNumber", "IS", b"12.0"),
    ("InstanceNumber", "IS", b"1\\2"),
    ("SOPInstanceUID", "UI", b"1.2.840.5\0"),
    ("SOPInstanceUID", "UI", b"1.2\\3.4"),
    ("SOPInstanceUID", "UI", b"1.2.\xe9"),
])
def test_values_unique_to_each_file_read_from_bytes_equal_pydicom(keyword: str, vr: str | None,
                                                                   value: bytes) -> None:
    fast_vr = {"ImagePositionPatient": "DS", "InstanceNumber": "IS"}.get(keyword, "UI")
    got = unique_value(_raw(keyword, vr, value), keyword, fast_vr)
    want = _raw(keyword, vr, value).get(keyword)
    assert got == want
    assert unique_value(Dataset(), keyword, fast_vr) is None


def test_the_header_scan_pauses_the_cycle_collector_and_restores_it() -> None:
    seen: list[bool] = []
    with cycle_collection_paused():
        seen.append(gc.isenabled())
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        with cycle_collection_paused():
            pass
        assert not gc.isenabled()  # someone else's choice stands
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), cycle_collection_paused():
        raise RuntimeError("a failing scan")
    assert gc.isenabled()
