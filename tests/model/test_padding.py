"""Scanner padding is air, not "not CT" (model.reading.padding and the content check).

Real CT from the shared data, read in place: the raw TCIA series with PixelPaddingValue
−2000, and three NIfTI volumes (chest, head-neck, abdomen-pelvis) rewritten with −2048,
−3024 or −2000 HU outside an inscribed circle, as DICOM with a correct, an absent, an
unsigned-written or a range padding value, and as NIfTI. The reference for the scores is the
same volume with the same circle filled with air (−1024 HU): outside the circle the
padding replaces whatever was there (table, arms), so comparing with the original would
measure the lost anatomy, not the padding handling.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from model.api import analyze_series
from model.interpretation.analysis import BodyPartResult, analyze
from model.interpretation.sanity import AnomalyCode, ct_content_anomaly
from model.reading.load import load_volumes
from model.reading.nifti import read_nifti
from model.reading.padding import (
    BELOW_AIR_HU,
    PADDING_HU,
    as_representation,
    header_padding_range,
    pad_below_air,
)
from model.reading.volume import CTVolume
from model.scoring.inference import BodyPartRegressor
from tests.dicom_factory import shrink, write_ct_series
from tests.figures import Report

#: Largest score difference allowed between a padded volume and its air-filled reference.
MAX_SCORE_DIFF = 0.5

#: name → manifest id of the volumes rewritten with padding (every other slice is kept).
VOLUMES = {
    "chest": "lidc_0003",
    "head_neck": "openkbp_pt_2",
    "abdomen_pelvis": "pelvicref_002",
}

#: case → (volume, padding HU, RescaleIntercept, header mode). Header modes: "value" (a
#: correct PixelPaddingValue), "none" (absent), "unsigned" (the signed stored value written
#: as its unsigned bit pattern, 63536 for −2000), "range" (padding spread over a range
#: given by PixelPaddingValue and a lower PixelPaddingRangeLimit).
CASES = {
    "chest-2048-value": ("chest", -2048.0, -1024.0, "value"),
    "chest-2048-none": ("chest", -2048.0, -1024.0, "none"),
    "head_neck-3024-value": ("head_neck", -3024.0, -1024.0, "value"),
    "head_neck-3024-none": ("head_neck", -3024.0, -1024.0, "none"),
    "abdomen_pelvis-2000-unsigned": ("abdomen_pelvis", -2000.0, 0.0, "unsigned"),
    "abdomen_pelvis-2000-none": ("abdomen_pelvis", -2000.0, 0.0, "none"),
    "abdomen_pelvis-3024-range": ("abdomen_pelvis", -3024.0, -1024.0, "range"),
}


def _outside_circle(shape: tuple[int, ...]) -> np.ndarray:
    """In-plane mask of the pixels outside the circle inscribed in a (rows, cols) slice."""
    rows, cols = shape[-2:]
    r, c = np.ogrid[:rows, :cols]
    radius = min(rows, cols) / 2
    return ((r - (rows - 1) / 2) ** 2 + (c - (cols - 1) / 2) ** 2) > radius**2


def _filled(volume: CTVolume, hu: float | np.ndarray) -> CTVolume:
    """``volume`` with every slice's outside-circle pixels set to ``hu``."""
    out = volume.hu.copy()
    mask = np.broadcast_to(_outside_circle(out.shape), out.shape)
    out[mask] = hu if np.isscalar(hu) else np.asarray(hu)[mask]
    return replace(volume, hu=out, warnings=[])


def _not_ct(result: BodyPartResult) -> list[str]:
    return [a.message for a in result.anomalies if a.code is AnomalyCode.NOT_CT]


def _max_score_diff(a: BodyPartResult, b: BodyPartResult) -> tuple[float, float]:
    """Largest |Δ| of the unprocessed and of the cleaned scores (slices both kept)."""
    raw = float(np.nanmax(np.abs(np.subtract(a.unprocessed_scores, b.unprocessed_scores))))
    both = [(x, y) for x, y in zip(a.cleaned_scores, b.cleaned_scores, strict=True)
            if x is not None and y is not None]
    assert len(both) >= 0.8 * sum(x is not None for x in b.cleaned_scores)
    cleaned = max(abs(x - y) for x, y in both)
    return raw, cleaned


@pytest.fixture(scope="module")
def originals(shared_data: Path) -> dict[str, CTVolume]:
    """The three volumes as stored, every other slice."""
    return {name: shrink(read_nifti(shared_data / "ct" / f"{vid}.nii.gz"),
                         slices=slice(None, None, 2)) for name, vid in VOLUMES.items()}


@pytest.fixture(scope="module")
def volumes(originals: dict[str, CTVolume]) -> dict[str, CTVolume]:
    """The three volumes with their circles' outsides filled with air: the references."""
    return {name: _filled(v, PADDING_HU) for name, v in originals.items()}


@pytest.fixture(scope="module")
def references(volumes: dict[str, CTVolume], regressor: BodyPartRegressor
               ) -> dict[str, BodyPartResult]:
    return {name: analyze(v, regressor) for name, v in volumes.items()}


# --- the rules --------------------------------------------------------------------------


def test_padding_value_is_read_in_the_pixels_representation() -> None:
    assert as_representation(63536, signed=True, bits_stored=16, bits_allocated=16) == -2000
    assert as_representation(-2000, signed=True, bits_stored=16, bits_allocated=16) == -2000
    assert as_representation(-2000, signed=False, bits_stored=16, bits_allocated=16) == 63536
    assert as_representation(2096, signed=True, bits_stored=12, bits_allocated=16) == -2000
    assert as_representation(0, signed=False, bits_stored=12, bits_allocated=16) == 0


def test_padding_range_either_order_and_unusable_values() -> None:
    def signed16(value: object, limit: object) -> tuple[int, int] | None:
        return header_padding_range(value, limit, signed=True, bits_stored=16,
                                    bits_allocated=16)

    assert signed16(-2000, None) == (-2000, -2000)
    assert signed16(-2000, -3000) == (-3000, -2000)
    assert signed16(63536, -1100) == (-2000, -1100)
    assert signed16(None, -3000) is None
    assert signed16(b"\x30\xf8", None) is None


def test_below_air_rule_leaves_shifted_volumes_alone() -> None:
    hu = np.full((2, 8, 8), -1000.0, np.float32)
    hu[:, :2] = -3024.0
    assert pad_below_air(hu) == (32, False)
    assert hu.min() == PADDING_HU
    shifted = np.full((2, 8, 8), -2500.0, np.float32)  # a wrong intercept, not padding
    assert pad_below_air(shifted) == (0, True)
    assert shifted.min() == -2500.0


# --- real series ------------------------------------------------------------------------


def test_tcia_series_padding_is_air(shared_data: Path, regressor: BodyPartRegressor,
                                    report: Report) -> None:
    loaded = load_volumes(shared_data / "dicom" / "tcia_9328_50_1_0109_three_acquisitions")
    (volume,) = loaded.volumes
    assert volume.hu.min() >= PADDING_HU
    (warning,) = [w for w in volume.warnings if "padding" in w]
    assert "PixelPaddingValue -2000" in warning
    result = analyze(shrink(volume, pixel_step=4), regressor)
    assert not _not_ct(result)
    # whether a term follows is the model's matter: the issue-12 model withholds this series
    # as invalid_z_spacing (slope ratio 1.48, model card), never for its padding
    assert all(a.code.value in ("invalid_z_spacing", "discontinuity") for a in result.anomalies)
    report("padding", f"tcia_9328_50_1_0109 DICOM: {warning}; term "
           f"{result.body_part_examined}")


def test_hu_offset_series_is_not_ct_with_its_cause(shared_data: Path,
                                                   regressor: BodyPartRegressor) -> None:
    (volume,) = load_volumes(shared_data / "dicom" / "brt_needle_hu_offset").volumes
    result = analyze(shrink(volume, slices=slice(None, None, 2), pixel_step=2), regressor)
    (message,) = _not_ct(result)
    assert "HU + 1024 with RescaleIntercept 0" in message
    assert "air reads ≈ 0 instead of −1000" in message
    assert result.body_part_examined is None


def test_mr_like_intensities_stay_not_ct(volumes: dict[str, CTVolume],
                                         regressor: BodyPartRegressor) -> None:
    """A T1-like contrast of real anatomy: dark air and bone, bright fat, no negative values."""
    hu = volumes["abdomen_pelvis"].hu
    rng = np.random.default_rng(0)
    contrast = np.interp(hu, [-1024, -500, -100, 40, 300, 1500], [10, 60, 900, 500, 150, 80])
    mr = np.asarray(contrast + np.abs(rng.normal(0, 15, hu.shape)), dtype=np.float32)
    result = analyze(replace(volumes["abdomen_pelvis"], hu=mr), regressor)
    (message,) = _not_ct(result)
    assert "no air" in message and "HU + 1024" not in message
    assert result.body_part_examined is None
    anomaly = ct_content_anomaly(mr)
    assert anomaly is not None and anomaly.details is not None
    assert anomaly.details["likely_hu_offset"] is None


# --- padded rewrites of real volumes ------------------------------------------------------


def test_circle_mask_alone_changes_little(originals: dict[str, CTVolume],
                                          references: dict[str, BodyPartResult],
                                          regressor: BodyPartRegressor, report: Report) -> None:
    """Figures only: what cutting to the circle (anatomy outside it lost) costs the scores,
    the part of a padded scan's difference from the full image no reader can undo."""
    for name, volume in originals.items():
        raw, cleaned = _max_score_diff(references[name], analyze(volume, regressor))
        report("padding", f"{VOLUMES[name]}: circle filled with air vs original: max |Δ score| "
               f"unprocessed {raw:.3f}, cleaned {cleaned:.3f}")


def _write_padded_dicom(volume: CTVolume, folder: Path, pad_hu: float, intercept: float,
                        mode: str) -> None:
    """``volume`` with ``pad_hu`` outside the circle as DICOM, padding tags per ``mode``."""
    fill: float | np.ndarray = pad_hu
    if mode == "range":  # padding spread between pad_hu and −2048 HU, as some scanners do
        fill = np.random.default_rng(1).uniform(pad_hu, -2048.0, volume.hu.shape).round()
    paths = write_ct_series(_filled(volume, fill), folder, rescale=(1.0, intercept))
    stored = round(pad_hu - intercept)
    vr, value = {"value": ("SS", stored), "unsigned": ("US", stored + 65536),
                 "range": ("SS", round(-2048.0 - intercept))}.get(mode, ("", 0))
    for path in paths if vr else []:
        ds = pydicom.dcmread(path)
        assert ds.PixelRepresentation == 1
        ds.add_new(0x00280120, vr, value)  # PixelPaddingValue
        if mode == "range":  # a limit below the value: the range runs either way
            ds.add_new(0x00280121, "SS", stored)
        ds.save_as(path)


@pytest.mark.parametrize("case", list(CASES))
def test_padded_dicom_reads_as_air(case: str, tmp_path: Path, volumes: dict[str, CTVolume],
                                   references: dict[str, BodyPartResult],
                                   regressor: BodyPartRegressor, report: Report) -> None:
    name, pad_hu, intercept, mode = CASES[case]
    _write_padded_dicom(volumes[name], tmp_path, pad_hu, intercept, mode)
    (volume,) = load_volumes(tmp_path).volumes
    (warning,) = [w for w in volume.warnings if "padding" in w]
    assert ("PixelPaddingValue" in warning) == (mode != "none")
    assert (f"below {BELOW_AIR_HU:g} HU" in warning) == (mode == "none")
    np.testing.assert_array_equal(volume.hu, volumes[name].hu)
    result = analyze(volume, regressor)
    assert not _not_ct(result)
    # the same pixels unread by the padding rules are what the content check used to refuse
    assert _not_ct(analyze(_filled(volumes[name], pad_hu), regressor))
    raw, cleaned = _max_score_diff(result, references[name])
    report("padding", f"{case}: max |Δ score| vs air-filled reference: unprocessed {raw:.3f}, "
           f"cleaned {cleaned:.3f}; term {result.body_part_examined}")
    assert raw <= MAX_SCORE_DIFF and cleaned <= MAX_SCORE_DIFF
    assert result.body_part_examined == references[name].body_part_examined


def test_padded_nifti_reads_as_air(shared_data: Path, tmp_path: Path,
                                   regressor: BodyPartRegressor, report: Report) -> None:
    """The head-neck volume (square matrix, so the circle survives reorientation) with
    −3024 HU outside the circle, written and read as NIfTI."""
    original = nib.load(shared_data / "ct" / "openkbp_pt_2.nii.gz")
    assert isinstance(original, nib.Nifti1Image)
    data = np.asarray(original.dataobj, dtype=np.int16)
    padded = np.where(_outside_circle(data.shape[:2])[..., None], -3024, data).astype(np.int16)
    image = nib.Nifti1Image(padded, original.affine)  # type: ignore[no-untyped-call]
    nib.save(image, tmp_path / "p.nii.gz")
    volume = read_nifti(tmp_path / "p.nii.gz")
    reference = _filled(read_nifti(shared_data / "ct" / "openkbp_pt_2.nii.gz"), PADDING_HU)
    (warning,) = [w for w in volume.warnings if "padding" in w]
    np.testing.assert_array_equal(volume.hu, reference.hu)
    result = analyze(volume, regressor)
    assert not _not_ct(result)
    raw, cleaned = _max_score_diff(result, analyze(reference, regressor))
    report("padding", f"openkbp_pt_2 NIfTI -3024: {warning}; max |Δ score| {raw:.3f}")
    assert raw <= MAX_SCORE_DIFF and cleaned <= MAX_SCORE_DIFF


def test_no_padding_no_warning(shared_data: Path) -> None:
    """The shared volumes hold air as −1024 already: nothing is padding, nothing is said."""
    volume = read_nifti(shared_data / "ct" / "lidc_0003.nii.gz")
    assert not [w for w in volume.warnings if "padding" in w]


@pytest.mark.parametrize(("series", "term"), [("dcm_qa_ct_ge_head_tilt", True),
                                              ("brt_needle_hu_offset", False)])
def test_node_door_gives_a_term_only_for_real_hu(series: str, term: bool, shared_data: Path,
                                                 regressor: BodyPartRegressor) -> None:
    """Through :func:`model.api.analyze_series`, as the node calls it."""
    files = sorted((shared_data / "dicom" / series).iterdir())
    record = analyze_series(files, regressor).main_volume
    not_ct = [a for a in record.document["anomalies"] if a["code"] == "not_ct_like"]
    assert (record.body_part_examined is not None) == term
    assert bool(not_ct) != term
    assert term or "HU + 1024 with RescaleIntercept 0" in not_ct[0]["message"]
