"""Adaptation: series choice, patient split, guard metrics, promotion, and whole runs on real CT."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.adaptation.corpus import (
    PreparedSeries,
    one_per_patient_and_term,
    prepare,
    split_by_patient,
)
from model.adaptation.guards import (
    MetricDelta,
    SeriesMeasure,
    compare,
    decide,
    guard_metrics,
    measure_series,
)
from model.adaptation.records import AdaptError, AdaptSeries, AdaptSettings, patient_hash
from model.adaptation.run import adapt, judge
from model.paths import DEFAULT_WEIGHTS
from model.reading.nifti import read_nifti
from model.scoring.inference import BodyPartRegressor
from model.scoring.network import SliceScoreNet
from model.training.anchors import NO_ANCHORS
from model.training.dataset import TrainVolume
from model.training.train import TrainConfig, train

#: Eight validation volumes of eight patients (head, neck, chest, abdomen, pelvis).
VAL_IDS = ("openkbp_pt_141", "openkbp_pt_168", "openkbp_pt_187", "openkbp_pt_211",
           "openkbp_pt_303", "lidc_0003", "onkodicom_rt_thorax", "pelvicref_002")
FAST = AdaptSettings(steps=3, volumes_per_batch=8, threads=2, holdout_fraction=0.5,
                     validate_on_shared_data=False)


def _prepared(patient: str, term: str, n: int = 10, spacing: float = 5.0) -> PreparedSeries:
    z = np.arange(n) * spacing
    volume = TrainVolume(f"{patient}-{term}-{n}", np.zeros((n, 2, 2), np.float16), z, "g")
    return PreparedSeries(f"{patient}-{term}-{n}", patient, term, volume)


def _measure(rho: float, chest_slope: float, lung_top: float) -> SeriesMeasure:
    return SeriesMeasure(rho, 0.1, {"chest": chest_slope}, {"lung_top": lung_top})


# --- choosing series ------------------------------------------------------------------------


def test_each_patient_keeps_its_longest_series_per_term() -> None:
    chosen = one_per_patient_and_term([_prepared("a", "CHEST", 10), _prepared("a", "CHEST", 30),
                                       _prepared("a", "HEAD", 5), _prepared("b", "CHEST", 8)])
    assert [s.key for s in chosen] == ["a-CHEST-30", "a-HEAD-5", "b-CHEST-8"]


def test_the_holdout_is_split_by_patient_and_stable() -> None:
    series = [_prepared(f"p{i}", term) for i in range(8) for term in ("CHEST", "HEAD")]
    train, held = split_by_patient(series, 0.25)
    assert {s.patient for s in train}.isdisjoint({s.patient for s in held})
    assert len({s.patient for s in held}) == 2 and len(train) + len(held) == len(series)
    again = split_by_patient(list(reversed(series)), 0.25)[1]
    assert {s.patient for s in again} == {s.patient for s in held}
    # two patients: one on each side, whatever the fraction
    two = [_prepared("x", "CHEST"), _prepared("y", "CHEST")]
    assert [len(part) for part in split_by_patient(two, 0.9)] == [1, 1]


def test_patient_keys_are_never_written_as_they_are() -> None:
    assert patient_hash("DOE^JOHN") != "DOE^JOHN" and len(patient_hash("DOE^JOHN")) == 12


def test_a_reversed_series_is_refused_and_a_thin_one_thinned(shared_data: Path,
                                                            regressor: BodyPartRegressor,
                                                            tmp_path: Path) -> None:
    import nibabel as nib

    source = shared_data / "ct" / "lidc_0003.nii.gz"
    image = nib.load(source)
    flipped = nib.Nifti1Image(np.asarray(image.dataobj)[:, :, ::-1], image.affine)
    # the same pixels with z positions running the other way: the anatomy is reversed
    flipped.to_filename(tmp_path / "reversed.nii.gz")
    outcome = prepare(AdaptSeries("r", "p", (tmp_path / "reversed.nii.gz",)), regressor)
    assert outcome == "reversed slice order"
    kept = prepare(AdaptSeries("k", "p", (source,)), regressor)
    assert isinstance(kept, PreparedSeries) and kept.term == "CHEST"
    volume = read_nifti(source)
    spacing = float(np.median(np.diff(kept.volume.z_mm)))
    assert spacing >= float(np.median(np.diff(volume.z_mm)))
    assert spacing <= 2.5 or len(kept.volume.z_mm) == len(volume.z_mm)


def test_an_unreadable_series_is_refused_with_its_reason(tmp_path: Path,
                                                         regressor: BodyPartRegressor) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom")
    outcome = prepare(AdaptSeries("b", "p", (bad,)), regressor)
    assert isinstance(outcome, str) and outcome.startswith("unreadable")


# --- guard metrics and promotion -----------------------------------------------------------


def test_measures_of_a_rising_curve() -> None:
    z = np.arange(60) * 5.0
    scores = 40.0 + 0.1 * z  # 40 … 69.5: chest only
    volume = TrainVolume("v", np.zeros((60, 2, 2), np.float16), z, "g", anchors=NO_ANCHORS)
    m = measure_series(volume, scores)
    assert m.rho == pytest.approx(1.0)
    assert set(m.region_slopes) == {"abdomen", "chest"}
    assert m.region_slopes["chest"] == pytest.approx(0.1)
    assert measure_series(volume, scores[::-1]).rho == pytest.approx(-1.0)


def test_guard_metrics_spread_is_relative_and_in_mm() -> None:
    same = [_measure(0.99, 0.1, 75.0 + d) for d in (-1.0, 0.0, 1.0)]
    metrics = guard_metrics(same)
    assert metrics["monotone_fraction"] == 1.0
    assert metrics["slope_spread.chest"] == 0.0
    assert metrics["landmark_spread_mm.lung_top"] == pytest.approx(1.0 / 0.1)
    # a doubled scale doubles every slope: the relative spread does not reward it
    doubled = [SeriesMeasure(0.99, 0.2, {"chest": s}, {}) for s in (0.18, 0.2, 0.22)]
    plain = [SeriesMeasure(0.99, 0.1, {"chest": s}, {}) for s in (0.09, 0.1, 0.11)]
    assert guard_metrics(doubled)["slope_spread.chest"] == pytest.approx(
        guard_metrics(plain)["slope_spread.chest"])
    assert "slope_spread.chest" not in guard_metrics(same[:2])  # too few series


def test_a_spread_of_three_series_is_left_undecided_not_called_worse() -> None:
    # Resamples of three series mostly repeat one, where a median absolute deviation is 0
    # for both models: the bootstrap cannot measure this spread's noise.
    active = [SeriesMeasure(0.99, 0.1, {"abdomen": s}, {}) for s in (0.09, 0.1, 0.11)]
    wider = [SeriesMeasure(0.99, 0.1, {"abdomen": s}, {}) for s in (0.08, 0.1, 0.12)]
    repeated = [active[0], active[0], active[1]]
    assert "slope_spread.abdomen" not in guard_metrics(repeated)  # two distinct series
    spread = next(d for d in compare(active, wider) if d.name == "slope_spread.abdomen")
    assert spread.candidate is not None and spread.active is not None
    assert spread.candidate > spread.active + 0.05
    assert spread.worse is None and spread.se is None
    assert decide(compare(active, wider)).promoted  # decided on the monotone fraction
    # with more series the same widening is measured, and caught
    many = [SeriesMeasure(0.99, 0.1, {"abdomen": 0.1 + 0.002 * k}, {}) for k in range(-5, 6)]
    spread_out = [SeriesMeasure(0.99, 0.1, {"abdomen": 0.1 + 0.02 * k}, {})
                  for k in range(-5, 6)]
    assert not decide(compare(many, spread_out)).promoted


def test_a_candidate_that_loses_monotone_series_is_kept_out() -> None:
    rng = np.random.default_rng(0)
    active = [_measure(0.995, 0.1 + 0.01 * rng.standard_normal(), 75 + rng.standard_normal())
              for _ in range(12)]
    broken = [SeriesMeasure(0.5 if i < 6 else m.rho, m.slope_per_mm, m.region_slopes,
                            m.landmark_scores) for i, m in enumerate(active)]
    decision = decide(compare(active, broken))
    assert not decision.promoted and "monotone_fraction" in decision.reason


def test_noise_level_changes_do_not_block_promotion() -> None:
    rng = np.random.default_rng(1)
    active = [_measure(0.995, 0.1 + 0.01 * rng.standard_normal(), 75 + 3 * rng.standard_normal())
              for _ in range(12)]
    nudged = [SeriesMeasure(m.rho, m.slope_per_mm,
                            {"chest": m.region_slopes["chest"] * 1.001},
                            {"lung_top": m.landmark_scores["lung_top"] + 0.01})
              for m in active]
    deltas = compare(active, nudged)
    assert {d.name for d in deltas} == {"monotone_fraction", "slope_spread.chest",
                                        "landmark_spread_mm.lung_top"}
    assert decide(deltas).promoted


def test_a_larger_landmark_spread_blocks_promotion() -> None:
    rng = np.random.default_rng(2)
    active = [_measure(0.995, 0.1, 75 + rng.standard_normal()) for _ in range(12)]
    scattered = [SeriesMeasure(m.rho, m.slope_per_mm, m.region_slopes,
                               {"lung_top": 75 + 4 * (m.landmark_scores["lung_top"] - 75)})
                 for m in active]
    decision = decide(compare(active, scattered))
    assert not decision.promoted and "landmark_spread_mm.lung_top" in decision.reason


def test_a_metric_the_candidate_can_no_longer_measure_counts_as_worse() -> None:
    active = [_measure(0.995, 0.1, 75.0 + i) for i in range(4)]
    lost = [SeriesMeasure(m.rho, m.slope_per_mm, {}, m.landmark_scores) for m in active]
    assert not decide(compare(active, lost)).promoted


def test_decide_needs_something_measured_and_honours_extra_losses() -> None:
    undecided = MetricDelta("monotone_fraction", True, None, None, None, None)
    assert not decide([undecided]).promoted
    fine = MetricDelta("monotone_fraction", True, 1.0, 1.0, 0.0, False)
    assert decide([fine]).promoted
    assert decide([fine], ["validation LMSE"]).reason == "worse beyond noise: validation LMSE"


# --- whole runs on real CT -----------------------------------------------------------------


def _val_series(shared_data: Path) -> list[AdaptSeries]:
    return [AdaptSeries(name, f"patient-{name}", (shared_data / "ct" / f"{name}.nii.gz",))
            for name in VAL_IDS]


def test_a_gentle_run_is_promoted_and_reported(shared_data: Path, tmp_path: Path) -> None:
    report = adapt(_val_series(shared_data), tmp_path, settings=FAST)
    document = json.loads((tmp_path / "report.json").read_text())
    assert report.promoted, report.reason
    assert document["promoted"] is True and document["parent_version"] == report.parent_version
    assert document["holdout"]["patients"] == 4 and document["training"]["patients"] == 4
    assert all(len(h) == 12 for h in document["holdout"]["patient_hashes"])
    assert "patient-" not in json.dumps(document["holdout"]["patient_hashes"])
    assert {"monotone_fraction", "slope_spread.head_neck"} <= set(document["guards"])
    candidate = BodyPartRegressor.load(report.weights)
    assert candidate.meta.version == report.version != report.parent_version
    assert candidate.meta.training["parent_version"] == report.parent_version
    assert candidate.meta.statistics["slope_ratio_range"]  # the parent's calibration kept


def test_a_site_copy_is_trained_with_the_shipped_models_recipe() -> None:
    trained_with = BodyPartRegressor.load(DEFAULT_WEIGHTS).meta.training
    defaults = AdaptSettings()
    for name in ("anchor_weight", "retain_weight", "alpha_distance", "lr"):
        assert getattr(defaults, name) == trained_with[name], name


def test_a_destructive_run_is_kept_out(shared_data: Path, tmp_path: Path) -> None:
    wrecked = AdaptSettings(steps=10, lr=0.05, volumes_per_batch=8, threads=2,
                            holdout_fraction=0.5, validate_on_shared_data=False)
    report = adapt(_val_series(shared_data), tmp_path, settings=wrecked)
    assert not report.promoted
    assert "monotone_fraction" in report.reason
    assert report.weights.is_file()  # kept for inspection, never activated


def _holdout(shared_data: Path, regressor: BodyPartRegressor) -> list[TrainVolume]:
    prepared = [prepare(s, regressor) for s in _val_series(shared_data)]
    return [p.volume for p in prepared if isinstance(p, PreparedSeries)]


def test_weights_with_their_sign_flipped_are_never_promoted(shared_data: Path,
                                                            regressor: BodyPartRegressor
                                                            ) -> None:
    state = {k: v.clone() for k, v in regressor.net.state_dict().items()}
    for name in ("head.4.weight", "head.4.bias"):
        state[name] = -state[name]
    net = SliceScoreNet(tuple(regressor.meta.channels))
    net.load_state_dict(state)
    flipped = BodyPartRegressor(net, regressor.meta)
    judged = judge(regressor, flipped, _holdout(shared_data, regressor), validate=False)
    assert not judged.decision.promoted
    monotone = next(d for d in judged.deltas if d.name == "monotone_fraction")
    assert monotone.active is not None and monotone.active >= 0.75
    assert monotone.candidate == 0.0 and monotone.worse


def test_a_run_poisoned_with_reversed_series_is_never_promoted(shared_data: Path,
                                                               regressor: BodyPartRegressor,
                                                               tmp_path: Path) -> None:
    holdout = _holdout(shared_data, regressor)
    # reversed slice order: the same slices with z running the other way
    poison = [TrainVolume(v.name, v.slices[::-1].copy(), v.z_mm, v.group) for v in holdout]
    cfg = TrainConfig(epochs=1, steps_per_epoch=15, volumes_per_batch=8, lr=1e-3, threads=2,
                      init_weights=str(DEFAULT_WEIGHTS), channels=tuple(regressor.meta.channels))
    net = train(poison, [], cfg, tmp_path, progress=False)
    poisoned = BodyPartRegressor(net, regressor.meta)
    assert not judge(regressor, poisoned, holdout, validate=False).decision.promoted


def test_reversed_series_never_reach_training(shared_data: Path, tmp_path: Path) -> None:
    import nibabel as nib

    series = []
    for name in VAL_IDS[:5]:
        image = nib.load(shared_data / "ct" / f"{name}.nii.gz")
        path = tmp_path / f"{name}.nii.gz"
        nib.Nifti1Image(np.asarray(image.dataobj)[:, :, ::-1], image.affine).to_filename(path)
        series.append(AdaptSeries(name, name, (path,)))
    with pytest.raises(AdaptError, match="0 patient"):
        adapt(series, tmp_path / "run", settings=FAST)


def test_too_few_patients_stop_the_run(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(AdaptError, match="at least 4 are needed"):
        adapt(_val_series(shared_data)[:3], tmp_path, settings=FAST)


def test_bpr_adapt_on_input_files(shared_data: Path, tmp_path: Path) -> None:
    inputs = [str(shared_data / "ct" / f"{name}.nii.gz") for name in VAL_IDS]
    done = subprocess.run([sys.executable, "-m", "bpr", "adapt", *inputs, "--out",
                           str(tmp_path / "run"), "--steps", "2", "--threads", "2",
                           "--no-validation"], capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "promoted" in done.stdout
    assert (tmp_path / "run" / "report.json").is_file()
    missing_out = subprocess.run([sys.executable, "-m", "bpr", "adapt", *inputs[:1]],
                                 capture_output=True, text=True, timeout=120, check=False)
    assert missing_out.returncode == 2 and "--out" in missing_out.stderr
