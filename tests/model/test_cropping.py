"""Known region cropping (thesis §4.3.2): range sources, crop range, writers and ``bpr crop``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from model.cli.crop import add_crop_command
from model.evaluation.landmarks import landmarks_for_volume, read_label_map
from model.interpretation.bodypart import PUBLISHED_REFERENCE
from model.interpretation.postprocess import CleanedScores
from model.reading.load import load_volumes
from model.reading.nifti import read_nifti
from model.reading.volume import CTVolume
from model.scoring.inference import BodyPartRegressor, ModelMeta
from model.tools.crop_outputs import filter_mask, uids_in_range, write_cropped_nifti
from model.tools.cropping import (
    CropRange,
    crop_range,
    known_range_from_landmarks,
    known_range_from_scores,
    known_range_from_training,
    score_and_clean,
)

#: Score units the landmark range is widened by before checking that the anatomy is kept:
#: a landmark's score scatters around its reference value by a few units between patients
#: (the LMSE), so an unwidened range may cut the last lung slices.
LANDMARK_MARGIN = 4.0
#: The crop of a neck-chest scan ends within this distance above the lung tops.
NECK_CUT_MM = 60.0
#: OpenKBP training volumes that stand in for a head-and-neck algorithm's training set.
HEAD_NECK_TRAINING = ("openkbp_pt_2", "openkbp_pt_3", "openkbp_pt_4", "openkbp_pt_7",
                      "openkbp_pt_13", "openkbp_pt_17")


def _nifti(path: Path) -> nib.Nifti1Image:
    img = nib.load(str(path))
    assert isinstance(img, nib.Nifti1Image)
    return img


def _flip_stored(src: Path, dst: Path, axes: tuple[int, ...]) -> Path:
    """Save ``src`` with its array flipped along ``axes`` and the affine compensating."""
    img = _nifti(src)
    data = np.asarray(img.dataobj)
    affine = img.affine.copy()
    for ax in axes:
        data = np.flip(data, axis=ax)
        flip = np.eye(4)
        flip[ax, ax] = -1
        flip[ax, 3] = data.shape[ax] - 1
        affine = affine @ flip
    flipped = nib.Nifti1Image(np.ascontiguousarray(data), affine)  # type: ignore[no-untyped-call]
    nib.save(flipped, str(dst))
    return dst


# --- pure functions ------------------------------------------------------------------------


def test_crop_range_bridges_removed_slices_and_never_keeps_removed_ends() -> None:
    z = np.arange(0.0, 400.0, 2.5)
    rng = np.random.default_rng(0)
    scores: list[float | None] = list(0.1 * z + rng.normal(0.0, 0.8, z.size))
    for k in range(70, 74):  # removed slices inside the kept run
        scores[k] = None
    for k in range(150, z.size):  # a removed tail whose neighbours are inside the range
        scores[k] = float("nan")
    crop = crop_range(scores, z, 15.0, 40.0)
    assert crop.z_min_mm == pytest.approx(150.0, abs=10.0)
    assert crop.stop == 150  # the run ends at the removed tail, not beyond
    assert crop.mask()[70:74].all()
    assert None not in (crop.lower_mm, crop.upper_mm, crop.z_min_mm, crop.z_max_mm)
    assert crop.lower_mm < crop.z_min_mm and crop.upper_mm > crop.z_max_mm  # type: ignore[operator]


def test_crop_range_keeps_the_longest_run_not_a_stray_bump() -> None:
    z = np.arange(0.0, 600.0, 3.0)
    s = 0.1 * z
    s[(z > 50) & (z < 80)] = 45.0  # noise far from the anatomy touches the range
    crop = crop_range(s, z, 40.0, 50.0, sigma_mm=0.0)
    assert crop.z_min_mm == pytest.approx(400.0, abs=3.0)
    assert crop.z_max_mm == pytest.approx(500.0, abs=3.0)


def test_crop_range_outside_the_volume_is_empty() -> None:
    z = np.arange(0.0, 100.0, 5.0)
    crop = crop_range(0.1 * z, z, 50.0, 60.0)
    assert crop.is_empty and crop.n_kept == 0 and not crop.mask().any()
    assert crop.z_min_mm is None and "no slice" in crop.describe()


def test_known_range_from_training_uses_quantiles_of_minima_and_maxima() -> None:
    curves = [np.array([lo, np.nan, lo + 40.0]) for lo in (0.0, 10.0, 20.0, 30.0, 40.0)]
    known = known_range_from_training(curves, (0.25, 0.75))
    assert (known.s_min, known.s_max) == pytest.approx((10.0, 70.0))
    with pytest.raises(ValueError, match="quantiles"):
        known_range_from_training(curves, (0.25, 1.5))
    with pytest.raises(ValueError, match="finite"):
        known_range_from_training([np.full(3, np.nan)])


def test_landmark_range_prefers_the_model_table() -> None:
    meta = ModelMeta(version="test", channels=[8], reference_table={"L3": 30.0,
                                                                    "lung_bottom": 43.0})
    assert known_range_from_landmarks("L3", "L1", meta).s_min == 30.0
    assert known_range_from_landmarks("L3", "L1").s_min == PUBLISHED_REFERENCE["L3"]
    known = known_range_from_landmarks("lung_end", "lung_bottom", meta)
    assert (known.s_min, known.s_max) == (43.0, PUBLISHED_REFERENCE["lung_end"])
    assert known.widened(2.0).s_min == 41.0
    with pytest.raises(KeyError, match="unknown landmark"):
        known_range_from_landmarks("appendix", "L1")
    assert known_range_from_scores(9.0, 3.0).s_min == 3.0


def test_uids_in_range_once_per_instance_in_slice_order() -> None:
    uids = ["1.2.1", "1.2.2", "1.2.3", "1.2.3", "1.2.4"]  # 1.2.3: a multi-frame instance
    volume = CTVolume(hu=np.zeros((5, 2, 2), np.float32), z_mm=np.arange(5.0),
                      pixel_spacing_mm=(1.0, 1.0), source="test", sop_instance_uids=uids)
    crop = crop_range(np.arange(5.0), volume.z_mm, 1.0, 3.0, sigma_mm=0.0)
    assert uids_in_range(volume, crop) == ["1.2.2", "1.2.3"]


# --- writers on real volumes ---------------------------------------------------------------


@pytest.mark.parametrize("flip_axes", [(), (2,), (0, 2)])
def test_cropped_nifti_keeps_world_positions(shared_data: Path, tmp_path: Path,
                                             flip_axes: tuple[int, ...]) -> None:
    src = _flip_stored(shared_data / "ct" / "openkbp_pt_2.nii.gz", tmp_path / "src.nii.gz",
                       flip_axes)
    whole = read_nifti(src)
    crop = crop_range(np.arange(whole.n_slices, dtype=float), whole.z_mm, 30.0, 79.0,
                      sigma_mm=0.0)
    out = write_cropped_nifti(src, crop, tmp_path / "crop.nii.gz")
    part = read_nifti(out)
    assert np.allclose(part.z_mm, whole.z_mm[30:80])
    assert np.array_equal(part.hu, whole.hu[30:80])
    assert _nifti(out).header["datatype"] == _nifti(src).header["datatype"]


def test_mask_is_zeroed_outside_the_slab_in_any_storage(shared_data: Path,
                                                        tmp_path: Path) -> None:
    labels = shared_data / "labels" / "openkbp_pt_2.nii.gz"
    flipped = _flip_stored(labels, tmp_path / "flipped.nii.gz", (2,))
    z = read_nifti(shared_data / "ct" / "openkbp_pt_2.nii.gz").z_mm
    crop = crop_range(np.arange(z.size, dtype=float), z, 60.0, 99.0, sigma_mm=0.0)
    original, _ = read_label_map(labels)  # feet → head slice order, as the crop
    for path in (labels, flipped):
        result = filter_mask(path, crop, tmp_path / "out.nii.gz")
        data = nib.as_closest_canonical(  # type: ignore[no-untyped-call]
            _nifti(tmp_path / "out.nii.gz")).get_fdata()
        per_slice = (data != 0).sum(axis=(0, 1))
        assert not per_slice[:60].any() and not per_slice[100:].any()
        assert np.array_equal(per_slice[60:100], (original[60:100] != 0).sum(axis=(1, 2)))
        assert result.kept_voxels == int(per_slice.sum())
        assert result.removed_voxels == int((original != 0).sum()) - result.kept_voxels


def test_empty_crop_writes_no_volume_and_clears_the_mask(shared_data: Path,
                                                         tmp_path: Path) -> None:
    empty = CropRange(0, 0, 128, None, None, None, None, 0.0, 1.0)
    with pytest.raises(ValueError, match="nothing to write"):
        write_cropped_nifti(shared_data / "ct" / "openkbp_pt_2.nii.gz", empty,
                            tmp_path / "x.nii.gz")
    result = filter_mask(shared_data / "labels" / "openkbp_pt_2.nii.gz", empty,
                         tmp_path / "m.nii.gz")
    assert result.kept_voxels == 0 and result.removed_voxels > 0


def test_uids_of_a_dicom_series_inside_the_range(shared_data: Path) -> None:
    (volume,) = load_volumes(shared_data / "dicom" / "totalseg_example_ct_dicom").volumes
    # scores equal to z make the kept slices known: 5..14
    crop = crop_range(volume.z_mm, volume.z_mm, volume.z_mm[5], volume.z_mm[14], sigma_mm=0.0)
    uids = uids_in_range(volume, crop)
    assert (crop.start, crop.stop) == (5, 15)
    assert uids == volume.sop_instance_uids[5:15] and len(set(uids)) == 10


# --- with the shipped model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def cleaned(shared_data: Path, regressor: BodyPartRegressor) -> dict[str, CleanedScores]:
    """Cleaned scores of every volume these tests use, each scored once."""
    names = ("onkodicom_rt_thorax", "lidc_0003", "openkbp_pt_60", "pelvicref_002",
             *HEAD_NECK_TRAINING)
    return {n: score_and_clean(read_nifti(shared_data / "ct" / f"{n}.nii.gz"), regressor)
            for n in names}


@pytest.mark.parametrize("name", ["onkodicom_rt_thorax", "lidc_0003"])
def test_landmark_range_keeps_the_lungs(shared_data: Path, regressor: BodyPartRegressor,
                                        cleaned: dict[str, CleanedScores], name: str) -> None:
    volume = read_nifti(shared_data / "ct" / f"{name}.nii.gz")
    truth = landmarks_for_volume(volume)  # image-derived lungs
    known = known_range_from_landmarks("lung_bottom", "lung_top",
                                       regressor.meta).widened(LANDMARK_MARGIN)
    crop = crop_range(cleaned[name].scores, volume.z_mm, known.s_min, known.s_max,
                      sigma_mm=0.0)
    assert crop.z_min_mm is not None and crop.z_max_mm is not None
    assert crop.z_min_mm <= truth["lung_bottom"] and truth["lung_top"] <= crop.z_max_mm
    if name == "onkodicom_rt_thorax":  # the scan reaches 100 mm above the lungs: neck goes
        assert crop.z_max_mm < truth["lung_top"] + NECK_CUT_MM


def test_training_range_filters_false_positives(shared_data: Path,
                                                cleaned: dict[str, CleanedScores],
                                                tmp_path: Path) -> None:
    """Table 5.17: a head-and-neck algorithm's output outside its known region is removed."""
    known = known_range_from_training([cleaned[n].scores for n in HEAD_NECK_TRAINING])
    ct = read_nifti(shared_data / "ct" / "openkbp_pt_60.nii.gz")
    crop = crop_range(cleaned["openkbp_pt_60"].scores, ct.z_mm, known.s_min, known.s_max,
                      sigma_mm=0.0)
    labels, names = read_label_map(shared_data / "labels" / "openkbp_pt_60.nii.gz")
    mandible = next(v for v, n in names.items() if n == "mandible")
    mandible_slices = np.flatnonzero((labels == mandible).any(axis=(1, 2)))
    assert crop.start <= mandible_slices[0] and mandible_slices[-1] < crop.stop
    # pelvis labels stand in for a head-and-neck model's false positives on a pelvis scan
    pelvis = read_nifti(shared_data / "ct" / "pelvicref_002.nii.gz")
    off = crop_range(cleaned["pelvicref_002"].scores, pelvis.z_mm, known.s_min, known.s_max,
                     sigma_mm=0.0)
    result = filter_mask(shared_data / "labels" / "pelvicref_002.nii.gz", off,
                         tmp_path / "filtered.nii.gz")
    assert result.kept_voxels == 0 and result.removed_voxels > 0


def _crop_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bpr")
    add_crop_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


@pytest.mark.usefixtures("regressor")  # the command loads the shipped model itself
def test_crop_command_writes_volume_mask_and_json(shared_data: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ct = shared_data / "ct" / "openkbp_pt_60.nii.gz"
    status = _crop_cli([
        "crop", str(ct), "--landmarks", "lung_end", "head_end",
        "--out-nifti", str(tmp_path / "crop.nii.gz"),
        "--mask", str(shared_data / "labels" / "openkbp_pt_60.nii.gz"),
        "--out-mask", str(tmp_path / "mask.nii.gz"), "--json", str(tmp_path / "crop.json"),
    ])
    assert status == 0
    assert "slices" in capsys.readouterr().out
    doc = json.loads((tmp_path / "crop.json").read_text())
    part = read_nifti(tmp_path / "crop.nii.gz")
    assert part.n_slices == doc["crop"]["n_kept"] > 0
    assert part.z_mm[0] == pytest.approx(doc["crop"]["z_min_mm"])
    assert doc["known_range"]["s_max"] == PUBLISHED_REFERENCE["head_end"]
    assert doc["mask"]["kept_voxels"] > 0


@pytest.mark.usefixtures("regressor")
def test_crop_command_rejects_uids_for_nifti(shared_data: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    status = _crop_cli(["crop", str(shared_data / "ct" / "lidc_0003.nii.gz"),
                        "--scores", "40", "80", "--out-uids", str(tmp_path / "u.txt")])
    assert status == 1
    assert "needs a DICOM series" in capsys.readouterr().err


def test_crop_command_takes_the_known_range_from_training_volumes(
        shared_data: Path, tmp_path: Path, regressor: BodyPartRegressor) -> None:
    names = ("openkbp_pt_60", "lidc_0003")
    training = tmp_path / "training.csv"
    training.write_text("file\n" + "".join(f"{shared_data / 'ct' / n}.nii.gz\n" for n in names))
    report = tmp_path / "crop.json"
    status = _crop_cli(["crop", str(shared_data / "ct" / "openkbp_pt_60.nii.gz"),
                        "--from-training", str(training), "--json", str(report)])
    assert status == 0
    # the thesis's quantiles (0.25, 0.75) when --quantiles is not given
    curves = [score_and_clean(read_nifti(shared_data / "ct" / f"{n}.nii.gz"), regressor).scores
              for n in names]
    expected = known_range_from_training(curves, (0.25, 0.75))
    known = json.loads(report.read_text())["known_range"]
    assert (known["s_min"], known["s_max"]) == pytest.approx((expected.s_min, expected.s_max))
