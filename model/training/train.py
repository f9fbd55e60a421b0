"""Self-supervised training of the slice-score network (thesis §4.1.3–4.1.5, §5.1).

Each step samples B volumes, m equidistant slices per volume with Δh drawn in mm, augments
every slice independently and minimises the order loss (heuristic by default, or the
classification order loss of eq. 5.1) plus α × distance loss. Runs are seeded and
reproducible; a checkpoint after every epoch lets ``--resume`` continue a stopped run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from model.scoring.network import STAGE_CHANNELS, SliceScoreNet
from model.training import augment as aug
from model.training.dataset import TrainVolume
from model.training.losses import classification_order_loss, distance_loss, heuristic_order_loss
from model.training.sampling import sample_equidistant

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Hyper-parameters of a run (defaults: thesis table 5.1/5.2 scaled to a CPU budget)."""

    epochs: int = 60
    steps_per_epoch: int = 40
    volumes_per_batch: int = 32  # B
    slices_per_volume: int = 8  # m
    delta_h_min_mm: float = 5.0
    delta_h_max_mm: float = 100.0
    loss: Literal["heuristic", "classification"] = "heuristic"
    beta_per_mm: float = 0.01
    alpha_distance: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    augment: bool = True
    small_fov_p: float = 0.0  # share of slices masked to a small box (see augment.AugmentConfig)
    threads: int = 0  # 0: torch default
    channels: tuple[int, ...] = STAGE_CHANNELS
    val_samples_per_volume: int = 8
    extra: dict[str, str] = field(default_factory=dict)


def _balanced_weights(volumes: list[TrainVolume]) -> np.ndarray:
    """Sampling weights ∝ z-extent / sqrt(size of the volume's group).

    Dominant collections (120 head-and-neck RT scans) would otherwise crowd out the few
    abdomen and pelvis scans; sqrt keeps large groups more frequent than small ones.
    """
    counts: dict[str, int] = {}
    for v in volumes:
        counts[v.group] = counts.get(v.group, 0) + 1
    w = np.array([v.weight * (v.z_mm[-1] - v.z_mm[0] + 1.0) / math.sqrt(counts[v.group])
                  for v in volumes])
    weights: np.ndarray = w / w.sum()
    return weights


def _gather(
    rng: np.random.Generator, volumes: list[TrainVolume], picks: np.ndarray, cfg: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices (B·m, 1, S, S) and per-volume mean Δh (B,) for the picked volumes."""
    batch, delta_h = [], []
    for i in picks:
        v = volumes[int(i)]
        s = sample_equidistant(
            rng, len(v.z_mm), v.z_spacing_mm, cfg.slices_per_volume,
            (cfg.delta_h_min_mm, cfg.delta_h_max_mm),
        )
        batch.append(v.slices[s.indices])
        # True positions, not k·spacing: exact also for gapped series.
        delta_h.append((v.z_mm[s.indices[-1]] - v.z_mm[s.indices[0]]) / (len(s.indices) - 1))
    x = torch.from_numpy(np.stack(batch).astype(np.float32))
    return x.reshape(-1, 1, *x.shape[-2:]), torch.tensor(delta_h, dtype=torch.float32)


def batch_loss(net: SliceScoreNet, x: torch.Tensor, delta_h: torch.Tensor,
               cfg: TrainConfig) -> torch.Tensor:
    scores = net(x).reshape(len(delta_h), -1)
    if cfg.loss == "heuristic":
        loss = heuristic_order_loss(scores, delta_h, cfg.beta_per_mm)
    else:
        loss = classification_order_loss(scores)
    if cfg.alpha_distance:
        loss = loss + cfg.alpha_distance * distance_loss(scores)
    return loss


@torch.no_grad()
def score_stack(net: SliceScoreNet, slices: np.ndarray, batch: int = 256) -> np.ndarray:
    """Scores of preprocessed slices (n, S, S) in model units."""
    net.eval()
    out = [
        net(torch.from_numpy(slices[i : i + batch].astype(np.float32))[:, None]).numpy()
        for i in range(0, len(slices), batch)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def validate(net: SliceScoreNet, volumes: list[TrainVolume], cfg: TrainConfig) -> dict[str, float]:
    """Validation loss on fixed samples and Spearman ρ of scores vs z per volume."""
    rng = np.random.default_rng(12345)  # the same samples every epoch
    net.eval()
    losses = []
    with torch.no_grad():
        for _ in range(cfg.val_samples_per_volume):
            x, dh = _gather(rng, volumes, np.arange(len(volumes)), cfg)
            losses.append(float(batch_loss(net, x, dh, cfg)))
    rhos = [float(spearmanr(score_stack(net, v.slices), v.z_mm)[0]) for v in volumes]
    return {"val_loss": float(np.mean(losses)), "val_spearman_min": float(np.min(rhos)),
            "val_spearman_mean": float(np.mean(rhos))}


@dataclass
class _RunState:
    """Everything a checkpoint holds to continue a run bit-identically."""

    net: SliceScoreNet
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    rng: np.random.Generator
    gen: torch.Generator

    def save(self, path: Path, epoch: int, cfg: TrainConfig) -> None:
        """Write the state after ``epoch`` epochs atomically (``last.pt``)."""
        state = {"model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "numpy_rng": self.rng.bit_generator.state,
                 "torch_rng": self.gen.get_state(), "epoch": epoch, "config": asdict(cfg)}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def load(self, path: Path) -> int:
        """Restore the state of a checkpoint; returns the epochs it had completed."""
        state = torch.load(path, weights_only=False)
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.gen.set_state(state["torch_rng"])
        epoch = int(state["epoch"])
        log.info("resumed %s at epoch %d", path, epoch)
        return epoch


def train(
    train_volumes: list[TrainVolume],
    val_volumes: list[TrainVolume],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> SliceScoreNet:
    """Train and write ``last.pt`` (full state, for resume) and ``history.jsonl`` to ``out_dir``.

    ``stop_after_epoch`` ends this call early (the checkpoint is written), so a long run
    can be split over several sessions with ``resume=True``; the result is bit-identical
    to an uninterrupted run.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    need = cfg.slices_per_volume
    train_volumes = [v for v in train_volumes if len(v.z_mm) >= need]
    val_volumes = [v for v in val_volumes if len(v.z_mm) >= need]
    if not train_volumes:
        raise ValueError(f"no training volume has the {need} slices needed per sample")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    net = SliceScoreNet(cfg.channels)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                                pct_start=0.05)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    augment_cfg = aug.AugmentConfig(small_fov_p=cfg.small_fov_p)
    run = _RunState(net, opt, sched, rng, gen)
    ckpt_path = out_dir / "last.pt"
    start_epoch = run.load(ckpt_path) if resume and ckpt_path.exists() else 0
    weights = _balanced_weights(train_volumes)
    history = out_dir / "history.jsonl"
    end_epoch = min(cfg.epochs, stop_after_epoch or cfg.epochs)
    for epoch in range(start_epoch, end_epoch):
        net.train()
        t0 = time.perf_counter()
        losses = []
        bar = tqdm(range(cfg.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, leave=False)
        for _ in bar:
            picks = rng.choice(len(train_volumes), size=cfg.volumes_per_batch, p=weights)
            x, dh = _gather(rng, train_volumes, picks, cfg)
            if cfg.augment:
                x = aug.augment(x, gen, augment_cfg)
            loss = batch_loss(net, x, dh, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        record: dict[str, float | int] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                                          "seconds": time.perf_counter() - t0}
        if val_volumes:
            record.update(validate(net, val_volumes, cfg))
        with history.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        log.info("epoch %s", record)
        if progress:
            tqdm.write(json.dumps(record))
        run.save(ckpt_path, epoch + 1, cfg)
    net.eval()
    return net
