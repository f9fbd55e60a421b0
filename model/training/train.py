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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from model.scoring.network import STAGE_CHANNELS, SliceScoreNet
from model.training import augment as aug
from model.training.anchors import (
    ABDOMEN_SPAN,
    PELVIC_SPAN,
    abdomen_length_mm,
    anchor_targets,
    with_abdomen_extension,
    with_scale_anchors,
)
from model.training.dataset import TrainVolume
from model.training.losses import (
    anchor_loss,
    classification_order_loss,
    distance_loss,
    heuristic_order_loss,
)
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
    # Anchor loss (model.training.anchors): weight γ, Huber δ in raw units, and the
    # calibration score = scale·raw + offset that turns published scores into raw targets
    # (default: the shipped model's, whose raw slope matches β).
    anchor_weight: float = 0.0
    anchor_delta: float = 0.4
    anchor_scale: float = 12.35
    anchor_offset: float = 67.42
    # Extra anchors every this many mm between the pelvic bone landmarks (pelvic) and
    # between the iliac crest and the lung bottom (abdomen), on the volume's own scale
    # (anchors.with_scale_anchors); 0: off. They add to the anchor loss, which stays
    # averaged over the landmark anchors only (Batch.anchor_landmarks).
    pelvic_anchor_step_mm: float = 0.0
    abdomen_anchor_step_mm: float = 0.0
    # A volume that shows only one end of the abdomen (iliac crest or lung bottom) gets
    # abdomen_anchor_step_mm-spaced anchors up to this many mm into the abdomen from it, on
    # bpreg's abdominal scale stretched over the training set's median abdomen length
    # (anchors.with_abdomen_extension); 0: off.
    abdomen_extension_mm: float = 0.0
    # Retention: slices that the teacher (``teacher_weights``, else the starting weights)
    # scores at or above ``retain_above`` (calibrated; default bpreg's lung_end: the head and
    # neck, where it is accurate) keep that raw score, with weight ρ and the anchors' Huber δ.
    # A teacher lets a run from scratch keep a scale that no anchor holds.
    retain_weight: float = 0.0
    retain_above: float = 75.4
    teacher_weights: str = ""
    # "lung_top": only slices above the lung top that the image rule finds in the volume
    # itself; a volume without one (a limb crop, a pelvis) keeps nothing. The teacher scores
    # thigh crops 79–90 like the neck, and "teacher" (retain wherever the teacher scores
    # high: runs p2–p10) taught that to every model.
    retain_scope: Literal["lung_top", "teacher"] = "lung_top"
    # Sampling factor of volumes that show a landmark below the lung top (the torso).
    torso_factor: float = 1.0
    # Start from these weights (fine-tuning) instead of a random initialisation.
    init_weights: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _balanced_weights(volumes: list[TrainVolume], torso_factor: float = 1.0) -> np.ndarray:
    """Sampling weights ∝ z-extent / sqrt(size of the volume's group), × ``torso_factor``
    for volumes that show the torso.

    Dominant collections (120 head-and-neck RT scans) would otherwise crowd out the few
    abdomen and pelvis scans; sqrt keeps large groups more frequent than small ones.
    """
    counts: dict[str, int] = {}
    for v in volumes:
        counts[v.group] = counts.get(v.group, 0) + 1
    w = np.array([v.weight * (v.z_mm[-1] - v.z_mm[0] + 1.0) / math.sqrt(counts[v.group])
                  * (torso_factor if v.anchors.shows_torso else 1.0) for v in volumes])
    weights: np.ndarray = w / w.sum()
    return weights


@dataclass
class Batch:
    """One training step's input: B·m order slices, then the anchor slices.

    ``retain_target`` holds, per order slice, the teacher's raw score where that
    slice is retained (see :attr:`TrainConfig.retain_weight`) and NaN elsewhere; it is empty
    when nothing is retained.
    """

    x: torch.Tensor  # (B·m + k, 1, S, S)
    delta_h: torch.Tensor  # (B,) mean Δh in mm per picked volume
    anchor_target: torch.Tensor  # (k,) raw targets of the anchor slices
    retain_target: torch.Tensor  # (B·m,)
    # How many of the k anchors are landmarks: the anchor loss is averaged over them, so
    # the scale anchors add their pull without diluting the lung anchors' (run p17).
    anchor_landmarks: int = 0


def _gather(rng: np.random.Generator, volumes: list[TrainVolume], picks: np.ndarray,
            cfg: TrainConfig, anchor_targets_raw: list[np.ndarray] | None = None,
            retained: list[np.ndarray] | None = None) -> Batch:
    """m equidistant slices of each picked volume, then the anchors of each pick.

    ``anchor_targets_raw`` and ``retained`` are per volume (index of ``volumes``): the
    anchors' raw targets and the teacher's retained raw scores (NaN: free).
    """
    batch, delta_h, retain = [], [], []
    for i in picks:
        v = volumes[int(i)]
        s = sample_equidistant(
            rng, len(v.z_mm), v.z_spacing_mm, cfg.slices_per_volume,
            (cfg.delta_h_min_mm, cfg.delta_h_max_mm),
        )
        batch.append(v.slices[s.indices])
        # True positions, not k·spacing: exact also for gapped series.
        delta_h.append((v.z_mm[s.indices[-1]] - v.z_mm[s.indices[0]]) / (len(s.indices) - 1))
        if retained is not None:
            retain.append(retained[int(i)][s.indices])
    x = np.stack(batch).reshape(-1, *batch[0].shape[-2:])
    targets = np.zeros(0, np.float32)
    landmarks = 0
    if anchor_targets_raw is not None:
        x = np.concatenate([x] + [volumes[int(i)].slices[volumes[int(i)].anchors.slice_index]
                                  for i in picks])
        targets = np.concatenate([anchor_targets_raw[int(i)] for i in picks])
        landmarks = sum(volumes[int(i)].anchors.landmark_count for i in picks)
    return Batch(torch.from_numpy(x.astype(np.float32))[:, None],
                 torch.tensor(delta_h, dtype=torch.float32),
                 torch.from_numpy(targets.astype(np.float32)),
                 torch.from_numpy(np.concatenate(retain or [np.zeros(0)]).astype(np.float32)),
                 landmarks)


def batch_loss(net: SliceScoreNet, batch: Batch, cfg: TrainConfig) -> torch.Tensor:
    """Order (+ distance) loss of the order slices, plus γ × anchor loss of the anchor
    slices and ρ × retention loss of the retained order slices."""
    out = net(batch.x).reshape(-1)
    n_order = len(batch.delta_h) * cfg.slices_per_volume
    scores = out[:n_order].reshape(len(batch.delta_h), -1)
    if cfg.loss == "heuristic":
        loss = heuristic_order_loss(scores, batch.delta_h, cfg.beta_per_mm)
    else:
        loss = classification_order_loss(scores)
    if cfg.alpha_distance:
        loss = loss + cfg.alpha_distance * distance_loss(scores)
    if cfg.anchor_weight:
        loss = loss + cfg.anchor_weight * anchor_loss(out[n_order:], batch.anchor_target,
                                                      cfg.anchor_delta, batch.anchor_landmarks)
    kept = ~torch.isnan(batch.retain_target)
    if cfg.retain_weight and bool(kept.any()):
        loss = loss + cfg.retain_weight * anchor_loss(out[:n_order][kept],
                                                      batch.retain_target[kept],
                                                      cfg.anchor_delta)
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
            batch = _gather(rng, volumes, np.arange(len(volumes)), cfg)
            losses.append(float(batch_loss(net, batch, cfg)))
    rhos = [float(spearmanr(score_stack(net, v.slices), v.z_mm)[0]) for v in volumes]
    return {"val_loss": float(np.mean(losses)), "val_spearman_min": float(np.min(rhos)),
            "val_spearman_mean": float(np.mean(rhos))}


def _retained_scores(net: SliceScoreNet, volumes: list[TrainVolume], cfg: TrainConfig
                     ) -> list[np.ndarray]:
    """Per volume, the teacher's raw score (``net``: see :func:`_teacher`) of every slice it
    places at or above ``cfg.retain_above`` and, in ``cfg.retain_scope`` "lung_top", that lies
    above the volume's own lung top; NaN elsewhere."""
    threshold = (cfg.retain_above - cfg.anchor_offset) / cfg.anchor_scale
    out = []
    for v in volumes:
        raw = score_stack(net, v.slices).astype(np.float32)
        keep = raw >= threshold
        if cfg.retain_scope == "lung_top":
            lung_top = v.anchors.z_of("lung_top")
            keep &= v.z_mm >= (math.inf if lung_top is None else lung_top)
        out.append(np.where(keep, raw, np.nan).astype(np.float32))
    log.info("retaining the teacher's scores of %d slices",
             sum(int(np.isfinite(r).sum()) for r in out))
    return out


def _teacher(net: SliceScoreNet, cfg: TrainConfig) -> SliceScoreNet:
    """The model whose scores retention keeps: ``cfg.teacher_weights``, else the starting
    weights (``net`` as loaded from ``cfg.init_weights``)."""
    if cfg.teacher_weights:
        teacher = SliceScoreNet(cfg.channels)
        teacher.load_state_dict(torch.load(cfg.teacher_weights, weights_only=True))
        return teacher
    if not cfg.init_weights:
        raise ValueError("retention needs a model to keep the scores of: --init or --teacher")
    return net


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


def _usable_volumes(train_volumes: list[TrainVolume], val_volumes: list[TrainVolume],
                    cfg: TrainConfig) -> tuple[list[TrainVolume], list[TrainVolume]]:
    """The volumes with the slices a sample needs; the training ones with their pelvic and
    abdominal scale anchors when ``cfg`` asks for them (as new objects: a caller may train
    on them again)."""
    need = cfg.slices_per_volume
    usable = [v for v in train_volumes if len(v.z_mm) >= need]
    if not usable:
        raise ValueError(f"no training volume has the {need} slices needed per sample")
    if cfg.abdomen_extension_mm > 0:
        length = abdomen_length_mm(v.anchors for v in usable)
        if length is None:
            raise ValueError("the abdomen extension needs a training volume that shows both"
                             " the iliac crest and the lung bottom")
        log.info("abdomen extension on a %.0f mm abdomen (median crest to lung bottom)", length)
        usable = [replace(v, anchors=with_abdomen_extension(
            v.anchors, v.z_mm, cfg.abdomen_anchor_step_mm, cfg.abdomen_extension_mm, length))
            for v in usable]
    for step, span in ((cfg.pelvic_anchor_step_mm, PELVIC_SPAN),
                       (cfg.abdomen_anchor_step_mm, ABDOMEN_SPAN)):
        if step > 0:
            usable = [replace(v, anchors=with_scale_anchors(v.anchors, v.z_mm, step, span))
                      for v in usable]
    return usable, [v for v in val_volumes if len(v.z_mm) >= need]


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
    train_volumes, val_volumes = _usable_volumes(train_volumes, val_volumes, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    net = SliceScoreNet(cfg.channels)
    retained = None
    if cfg.init_weights:
        net.load_state_dict(torch.load(cfg.init_weights, weights_only=True))
    if cfg.retain_weight:
        retained = _retained_scores(_teacher(net, cfg), train_volumes, cfg)
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
    weights = _balanced_weights(train_volumes, cfg.torso_factor)
    targets = [anchor_targets(v.anchors, cfg.anchor_scale, cfg.anchor_offset)
               for v in train_volumes]
    log.info("%d of %d training volumes have anchors (%d show the torso)",
             sum(len(t) > 0 for t in targets), len(train_volumes),
             sum(v.anchors.shows_torso for v in train_volumes))
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
            batch = _gather(rng, train_volumes, picks, cfg,
                            targets if cfg.anchor_weight else None, retained)
            if cfg.augment:
                batch.x = aug.augment(batch.x, gen, augment_cfg)
            loss = batch_loss(net, batch, cfg)
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
