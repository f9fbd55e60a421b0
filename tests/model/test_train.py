"""Short training runs on real CT: the loss falls, runs are reproducible and resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.training.dataset import TrainVolume, entries_from_paths, load_train_volumes
from model.training.train import TrainConfig, _gather, batch_loss, train

VOLUMES = ("openkbp_pt_2", "openkbp_pt_3", "lidc_0003", "crlm_ct_1004", "pelvic_ref_003")


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


def _fixed_loss(net: torch.nn.Module, volumes: list[TrainVolume], cfg: TrainConfig) -> float:
    rng = np.random.default_rng(99)
    net.eval()
    with torch.no_grad():
        losses = [batch_loss(net, *_gather(rng, volumes, np.arange(len(volumes)), cfg), cfg)
                  for _ in range(8)]
    return float(torch.stack(losses).mean())


def test_training_lowers_the_loss(volumes: list[TrainVolume], tmp_path: Path) -> None:
    cfg = _config()
    torch.manual_seed(cfg.seed)
    from model.scoring.network import SliceScoreNet

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
