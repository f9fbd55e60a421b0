"""``bpr evaluate``: calibration written into the model metadata, z-test between reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.cli import main
from model.scoring.inference import BodyPartRegressor
from model.scoring.network import SliceScoreNet
from model.training.export import export_model


@pytest.fixture()
def exported(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return export_model(SliceScoreNet(), {"note": "random weights for a CLI test"}, tmp_path)


@pytest.fixture()
def manifest(shared_data: Path, tmp_path: Path) -> Path:
    rows = [("lidc_0002", "train"), ("lungx_ct004", "train"), ("lidc_0003", "val"),
            ("nsclc_radiogenomics_r006", "val")]
    csv = tmp_path / "manifest.csv"
    csv.write_text("id,file,split,has_labels,body_regions\n" + "".join(
        f"{i},{shared_data / 'ct' / (i + '.nii.gz')},{s},false,CHEST\n" for i, s in rows))
    return csv


def test_write_meta_stores_scale_reference_and_statistics(exported: Path, manifest: Path,
                                                          tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    assert main(["evaluate", str(exported), "--manifest", str(manifest), "--write-meta",
                 "--json", str(report), "--threads", "2"]) == 0
    meta = json.loads(exported.with_suffix(".json").read_text())
    assert meta["reference_table"]["lung_bottom"] == pytest.approx(44.1, abs=1e-3)
    assert meta["reference_table"]["lung_top"] == pytest.approx(75.4, abs=1e-3)
    stats = meta["statistics"]
    # The stored scale is what inference applies from now on.
    regressor = BodyPartRegressor.load(exported)
    assert regressor.meta.score_scale == pytest.approx(meta["score_scale"])
    from model.evaluation.calibration import empty_slice_raw_score
    expected = meta["score_scale"] * empty_slice_raw_score(regressor) + meta["score_offset"]
    assert stats["empty_slice_score"] == pytest.approx(expected, abs=1e-3)
    document = json.loads(report.read_text())
    assert document["n_volumes"] == {"train": 2, "val": 2}

    compared = tmp_path / "again.json"
    assert main(["evaluate", str(exported), "--manifest", str(manifest), "--no-calibrate",
                 "--compare", str(report), "--json", str(compared)]) == 0
    comparison = json.loads(compared.read_text())["comparison"]
    assert comparison["z"] == pytest.approx(0.0, abs=1e-6)  # same model, same scale


def test_a_model_trained_with_anchors_keeps_their_units(manifest: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    training = {"anchor_weight": 1.0, "anchor_scale": 12.0, "anchor_offset": 67.0}
    weights = export_model(SliceScoreNet(), training, tmp_path / "anchored")
    kept, fitted = tmp_path / "kept.json", tmp_path / "fitted.json"
    assert main(["evaluate", str(weights), "--manifest", str(manifest), "--json", str(kept),
                 "--write-meta"]) == 0
    document = json.loads(kept.read_text())
    assert document["scale_source"] == "anchors" and not document["calibrated"]
    assert (document["score_scale"], document["score_offset"]) == (12.0, 67.0)
    assert BodyPartRegressor.load(weights).meta.score_scale == 12.0
    # the lung fit stays available, and is what a model without anchors gets
    assert main(["evaluate", str(weights), "--manifest", str(manifest), "--json", str(fitted),
                 "--calibrate-on-lungs"]) == 0
    refit = json.loads(fitted.read_text())
    assert refit["scale_source"] == "lungs" and refit["score_scale"] != 12.0
    assert refit["reference_table"]["lung_top"]["mean"] == pytest.approx(75.4, abs=1e-3)
