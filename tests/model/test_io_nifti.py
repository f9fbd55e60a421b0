"""NIfTI reader: any stored orientation comes out axial, feet → head, DICOM display layout."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from model.reading.load import load_volumes
from model.reading.nifti import read_nifti
from model.reading.volume import CTInputError


@pytest.fixture(scope="module")
def original(shared_data: Path) -> Path:
    return shared_data / "ct" / "lidc_0003.nii.gz"


def test_positions_and_orientation_of_a_real_volume(original: Path) -> None:
    vol = read_nifti(original)
    img = nib.load(str(original))
    assert vol.n_slices == img.shape[2]
    assert np.allclose(np.diff(vol.z_mm), img.header.get_zooms()[2])
    # Rows run anterior → posterior: the CT table, under the patient's back, is in the last rows.
    mid = vol.hu[vol.n_slices // 2]
    assert (mid[-20:] > -500).mean() > (mid[:20] > -500).mean()


@pytest.mark.parametrize("flip_axes", [(2,), (0, 1, 2), (0,)])
def test_flipped_storage_reads_identically(original: Path, tmp_path: Path,
                                           flip_axes: tuple[int, ...]) -> None:
    img = nib.load(str(original))
    data = np.asarray(img.dataobj)
    affine = img.affine.copy()
    for ax in flip_axes:
        data = np.flip(data, axis=ax)
        flip = np.eye(4)
        flip[ax, ax] = -1
        flip[ax, 3] = data.shape[ax] - 1
        affine = affine @ flip
    path = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(path))
    a, b = read_nifti(original), read_nifti(path)
    assert np.array_equal(a.hu, b.hu)
    assert np.allclose(a.z_mm, b.z_mm)


def test_not_a_volume_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(CTInputError, match=r"broken\.nii\.gz"):
        read_nifti(bad)
    flat = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.int16), np.eye(4)), str(flat))
    with pytest.raises(CTInputError, match="3D"):
        read_nifti(flat)


def test_folder_mixes_good_and_bad_files(original: Path, tmp_path: Path) -> None:
    (tmp_path / "a.nii.gz").write_bytes(original.read_bytes())
    (tmp_path / "b.nii.gz").write_bytes(b"garbage")
    result = load_volumes(tmp_path)
    assert len(result.volumes) == 1 and len(result.errors) == 1
    assert "b.nii.gz" in result.errors[0]
    with pytest.raises(CTInputError, match="no such file"):
        load_volumes(tmp_path / "missing")
