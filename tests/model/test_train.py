"""Short training runs on real CT: the loss falls, runs are reproducible and resumable."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model.cli.train import add_training_options, config_from_args
from model.paths import DEFAULT_WEIGHTS
from model.scoring.inference import ModelMeta
from model.scoring.network import SliceScoreNet
from model.training.anchors import PELVIC_SPAN, anchor_targets, with_scale_anchors
from model.training.dataset import TrainVolume, entries_from_paths, load_train_volumes
from model.training.train import (
    TrainConfig,
    _balanced_weights,
    _gather,
    _retained_scores,
    _usable_volumes,
    batch_loss,
    score_stack,
    train,
)

VOLUMES = ("openkbp_pt_2", "openkbp_pt_3", "lidc_0003", "crlm_ct_1004", "pelvicref_003")


@pytest.fixture(scope="module")
def volumes(shared_data: Path) -> list[TrainVolume]:
    paths = [p for v in VOLUMES if (p := shared_data / "ct" / f"{v}.nii.gz").exists()]
    return load_train_volumes(entries_from_paths(paths), cache_dir=None, progress=False)


def _config(**kw: object) -> TrainConfig:
    base: dict[str, object] = dict(epochs=3, steps_per_epoch=12, volumes_per_batch=8,
                                   slices_per_volume=4, lr=3e-3, augment=False, threads=2,
                                   val_samples_per_volume=2)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _fixed_loss(net: SliceScoreNet, volumes: list[TrainVolume], cfg: TrainConfig) -> float:
    rng = np.random.default_rng(99)
    net.eval()
    with torch.no_grad():
        losses = [batch_loss(net, _gather(rng, volumes, np.arange(len(volumes)), cfg), cfg)
                  for _ in range(8)]
    return float(torch.stack(losses).mean())


def test_training_lowers_the_loss(volumes: list[TrainVolume], tmp_path: Path) -> None:
    cfg = _config(steps_per_epoch=20)
    torch.manual_seed(cfg.seed)
    before = _fixed_loss(SliceScoreNet(cfg.channels), volumes, cfg)
    net = train(volumes, volumes[:2], cfg, tmp_path, progress=False)
    after = _fixed_loss(net, volumes, cfg)
    assert after < 0.7 * before
    history = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(history) == cfg.epochs and "val_spearman_mean" in history[-1]


def test_interrupted_and_resumed_run_equals_straight_run(volumes: list[TrainVolume],
                                                          tmp_path: Path) -> None:
    cfg = _config(epochs=2, steps_per_epoch=4, augment=True)
    straight = train(volumes, [], cfg, tmp_path / "a", progress=False)
    train(volumes, [], cfg, tmp_path / "b", progress=False, stop_after_epoch=1)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["epoch"] == 1
    resumed = train(volumes, [], cfg, tmp_path / "b", resume=True, progress=False)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def _anchor_error(net: SliceScoreNet, volumes: list[TrainVolume], cfg: TrainConfig) -> float:
    errors = []
    for v in volumes:
        target = anchor_targets(v.anchors, cfg.anchor_scale, cfg.anchor_offset)
        errors += list(np.abs(score_stack(net, v.slices[v.anchors.slice_index]) - target))
    return float(np.mean(errors))


def test_every_volume_is_anchored(volumes: list[TrainVolume]) -> None:
    assert len(volumes) == len(VOLUMES)
    assert all(v.anchors.names for v in volumes)


def test_anchor_loss_pulls_landmarks_to_published_scores(volumes: list[TrainVolume],
                                                         tmp_path: Path) -> None:
    free = train(volumes, [], _config(), tmp_path / "free", progress=False)
    anchored_cfg = _config(anchor_weight=1.0)
    anchored = train(volumes, [], anchored_cfg, tmp_path / "anchored", progress=False)
    assert _anchor_error(anchored, volumes, anchored_cfg) < 0.5 * _anchor_error(
        free, volumes, anchored_cfg)


def test_pelvic_scale_anchors_leave_the_landmark_anchors_their_share(
        volumes: list[TrainVolume]) -> None:
    cfg = _config(anchor_weight=1.0)
    dense = [replace(v, anchors=with_scale_anchors(v.anchors, v.z_mm, 20.0, PELVIC_SPAN))
             for v in volumes]
    batches = [_gather(np.random.default_rng(1), vs, np.arange(len(vs)), cfg,
                       [anchor_targets(v.anchors, cfg.anchor_scale, cfg.anchor_offset)
                        for v in vs])
               for vs in (volumes, dense)]
    plain, extra = batches
    assert len(extra.anchor_target) > len(plain.anchor_target)  # pelvicref_003's ramp
    # the anchor loss stays averaged over the landmarks alone (run p17 diluted the lungs)
    assert extra.anchor_landmarks == plain.anchor_landmarks == len(plain.anchor_target)


def test_fine_tuning_starts_from_the_given_weights(volumes: list[TrainVolume],
                                                    tmp_path: Path) -> None:
    torch.manual_seed(123)
    start = SliceScoreNet()
    torch.save(start.state_dict(), tmp_path / "start.pt")
    cfg = _config(epochs=1, steps_per_epoch=1, lr=1e-9, init_weights=str(tmp_path / "start.pt"))
    tuned = train(volumes, [], cfg, tmp_path / "run", progress=False)
    # parameters stay (lr ≈ 0); batch-norm statistics move with every forward pass
    start_params = dict(start.named_parameters())
    for name, value in tuned.named_parameters():
        torch.testing.assert_close(value, start_params[name], atol=1e-6, rtol=0)


def test_torso_factor_raises_the_share_of_torso_volumes(volumes: list[TrainVolume]) -> None:
    torso = np.array([v.anchors.shows_torso for v in volumes])
    assert torso.any() and not torso.all()
    plain, raised = _balanced_weights(volumes), _balanced_weights(volumes, 3.0)
    assert raised[torso].sum() > plain[torso].sum()
    assert raised.sum() == pytest.approx(1.0)


def _reference(volumes: list[TrainVolume], out: Path) -> tuple[Path, np.ndarray, float]:
    """A briefly trained model saved under ``out``, its raw scores and their median."""
    net = train(volumes, [], _config(), out, progress=False)
    weights = out / "reference.pt"
    torch.save(net.state_dict(), weights)
    raw = np.concatenate([score_stack(net, v.slices) for v in volumes])
    return weights, raw, float(np.median(raw))


def _drift(volumes: list[TrainVolume], out: Path, raw: np.ndarray, threshold: float,
           **cfg: object) -> float:
    """Mean change of the scores at or above ``threshold`` after a run with ``cfg``."""
    net = train(volumes, [], _config(retain_above=threshold, retain_scope="teacher",
                                     anchor_scale=1.0, anchor_offset=0.0, **cfg),
                out, progress=False)
    new = np.concatenate([score_stack(net, v.slices) for v in volumes])
    return float(np.abs(new - raw)[raw >= threshold].mean())


def test_retention_keeps_the_starting_scores_of_the_head_and_neck(
        volumes: list[TrainVolume], tmp_path: Path) -> None:
    # retain the upper half of what the starting model scores; the anchors pull elsewhere
    start, raw, threshold = _reference(volumes, tmp_path / "start")
    kept = _drift(volumes, tmp_path / "kept", raw, threshold, anchor_weight=1.0,
                  retain_weight=3.0, init_weights=str(start))
    free = _drift(volumes, tmp_path / "free", raw, threshold, anchor_weight=1.0,
                  init_weights=str(start))
    assert kept < 0.5 * free


def test_a_teacher_lends_its_scores_to_a_run_from_scratch(volumes: list[TrainVolume],
                                                         tmp_path: Path) -> None:
    teacher, raw, threshold = _reference(volumes, tmp_path / "teacher")
    # another seed: without retention the student owes the teacher nothing
    taught = _drift(volumes, tmp_path / "taught", raw, threshold, seed=1, retain_weight=3.0,
                    teacher_weights=str(teacher))
    alone = _drift(volumes, tmp_path / "alone", raw, threshold, seed=1)
    assert taught < 0.5 * alone


def test_retention_keeps_only_what_lies_above_the_lung_top_of_the_image(
        volumes: list[TrainVolume], shared_data: Path) -> None:
    # the shipped model scores a thigh crop like the neck; the crop shows no lung
    crop = load_train_volumes(entries_from_paths([shared_data / "ct" / "ibsi_sts_001.nii.gz"]),
                              cache_dir=None, progress=False)
    meta = ModelMeta.read(DEFAULT_WEIGHTS.with_suffix(".json"))
    teacher = SliceScoreNet(tuple(meta.channels))
    teacher.load_state_dict(torch.load(DEFAULT_WEIGHTS, weights_only=True))
    units = dict(anchor_scale=meta.score_scale, anchor_offset=meta.score_offset)
    checked = crop + volumes
    anywhere = _retained_scores(teacher, checked, _config(retain_scope="teacher", **units))
    above = _retained_scores(teacher, checked, _config(**units))
    assert np.isfinite(anywhere[0]).mean() > 0.5
    assert not np.isfinite(above[0]).any()
    for v, kept, all_high in zip(checked, above, anywhere, strict=True):
        found = v.anchors.z_of("lung_top")
        top = np.inf if found is None else found
        assert (v.z_mm[np.isfinite(kept)] >= top).all()
        np.testing.assert_array_equal(kept[v.z_mm >= top], all_high[v.z_mm >= top])
    # the head and neck above a found lung top keep their scores
    assert np.isfinite(above[1 + VOLUMES.index("openkbp_pt_2")]).sum() > 20


def test_retention_without_a_model_to_keep_is_refused(volumes: list[TrainVolume],
                                                      tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--init or --teacher"):
        train(volumes, [], _config(retain_weight=1.0), tmp_path, progress=False)


def test_train_options_take_the_anchor_units_from_the_starting_model(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_training_options(parser)
    args = parser.parse_args(["--init", str(DEFAULT_WEIGHTS), "--anchor-weight", "0.5",
                              "--retain-weight", "1", "--torso-factor", "3"])
    cfg = config_from_args(args)
    meta = ModelMeta.read(DEFAULT_WEIGHTS.with_suffix(".json"))
    assert (cfg.anchor_scale, cfg.anchor_offset) == (meta.score_scale, meta.score_offset)
    assert (cfg.anchor_weight, cfg.retain_weight, cfg.torso_factor) == (0.5, 1.0, 3.0)
    assert cfg.init_weights == str(DEFAULT_WEIGHTS)
    # an exported but uncalibrated model (scale 1) leaves the defaults
    (tmp_path / "m.pt").write_bytes(b"")
    ModelMeta(version="x", channels=[16]).write(tmp_path / "m.json")
    cfg = config_from_args(parser.parse_args(["--init", str(tmp_path / "m.pt")]))
    assert (cfg.anchor_scale, cfg.anchor_offset) == (12.35, 67.42)
    # a run from scratch with a teacher takes the teacher's units, and keeps its scores
    cfg = config_from_args(parser.parse_args(["--teacher", str(DEFAULT_WEIGHTS),
                                              "--retain-weight", "1"]))
    assert (cfg.anchor_scale, cfg.anchor_offset) == (meta.score_scale, meta.score_offset)
    assert (cfg.init_weights, cfg.teacher_weights) == ("", str(DEFAULT_WEIGHTS))


def test_abdomen_extension_needs_a_volume_that_shows_the_whole_abdomen(
        volumes: list[TrainVolume]) -> None:
    cfg = _config(anchor_weight=1.0, abdomen_anchor_step_mm=20.0, abdomen_extension_mm=120.0)
    # crlm_ct_1004 ends below its lungs, pelvicref_003 above its crest: no abdomen length
    with pytest.raises(ValueError, match="both"):
        _usable_volumes(volumes, [], cfg)
