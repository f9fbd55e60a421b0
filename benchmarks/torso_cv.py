"""Torso k-fold cross-validation of a training recipe (issue 12).

Run: ``python -m benchmarks.torso_cv --out runs/cv [--folds 5] [--fold N ...]
[--baseline WEIGHTS] [bpr train options]``

The chest and abdomen-pelvis volumes of ``../shared/data/manifest.csv`` (train and val,
limb crops excluded) are dealt into k folds (:func:`model.evaluation.cross_validation.
assign_folds`). Fold N's model is trained with the ``bpr train`` options given here on the
manifest's train split and the other folds' torso volumes, without fold N, and written to
``OUT/fold-N/`` (an existing ``bpr_model.pt`` there is reused and a stopped fold resumes
from its checkpoint, so folds can run one at a time). Every manifest volume is then
scored on the scale ``bpr evaluate`` gives it (the units of its anchors; without anchors,
calibrated on the fold's training lungs), and the fold's
held-out volumes are measured; the 20-slice DICOM example, which no model trains on, is
measured under every fold's model.

``--baseline WEIGHTS`` measures given weights on the same folds without training; for the
shipped model that is an optimistic figure (it saw the train-split torso volumes).
Prints per-fold figures and their mean ± SE over folds, and writes ``OUT/cv.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from model.cli.train import add_training_options, config_from_args, training_volumes
from model.evaluation.calibration import anchor_units
from model.evaluation.cross_validation import (
    FoldFigures,
    HeldOutVolume,
    across_folds,
    assign_folds,
    fold_figures,
    held_out_volume,
)
from model.evaluation.evaluate import item_anatomy
from model.evaluation.manifest import EvalItem, read_manifest, region_group
from model.evaluation.metrics import calibrate, monotonicity, reference_table
from model.paths import shared_data_dir
from model.reading.load import load_volumes
from model.scoring import preprocess
from model.scoring.inference import ModelMeta
from model.scoring.network import SliceScoreNet
from model.training.dataset import TrainVolume, load_train_volumes, read_list
from model.training.export import export_model
from model.training.train import score_stack, train

#: Raw DICOM series that no model trains on, measured under every fold's model.
UNSEEN_DICOM: tuple[str, ...] = ("totalseg_example_ct_dicom",)


def _anatomy(items: list[EvalItem], cache: Path) -> dict[str, dict[str, object]]:
    """Landmarks and occupied slices of every item, computed once and kept in ``cache``."""
    if cache.exists():
        data: dict[str, dict[str, object]] = json.loads(cache.read_text())
        if {i.name for i in items} <= data.keys():
            return data
    data = {}
    for item in items:
        _, lungs, landmarks = item_anatomy(item)
        data[item.name] = {"landmarks": landmarks,
                           "occupied": np.flatnonzero(lungs.occupied).tolist()}
    cache.write_text(json.dumps(data))
    return data


def _load_net(weights: Path) -> tuple[SliceScoreNet, tuple[float, float] | None]:
    """The network and the units of its anchors (None: calibrate it on the lungs)."""
    net = SliceScoreNet()
    net.load_state_dict(torch.load(weights, weights_only=True))
    return net.eval(), anchor_units(ModelMeta.read(weights.with_suffix(".json")).training)


def _unseen_slices() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name in UNSEEN_DICOM:
        vol = load_volumes(shared_data_dir() / "dicom" / name).volumes[0]
        out[name] = (preprocess.preprocess_slices(vol.hu, vol.pixel_spacing_mm), vol.z_mm)
    return out


def measure_fold(net: SliceScoreNet, fold: int, folds: dict[str, int],
                 volumes: dict[str, TrainVolume], items: list[EvalItem],
                 anatomy: dict[str, dict[str, object]], trained_on: set[str],
                 unseen: dict[str, tuple[np.ndarray, np.ndarray]],
                 units: tuple[float, float] | None = None
                 ) -> tuple[list[HeldOutVolume], dict[str, float | None]]:
    """Held-out figures of one fold's model on the scale ``units`` (those of its anchors),
    or, without them, calibrated on the lungs of what it trained on."""
    raw = {n: score_stack(net, v.slices).astype(np.float64) for n, v in volumes.items()}

    def lm(name: str) -> dict[str, float]:
        return anatomy[name]["landmarks"]  # type: ignore[return-value]

    if units is None:
        lung_scores = [{k: float(np.interp(z, volumes[n].z_mm, raw[n]))
                        for k, z in lm(n).items()} for n in trained_on if n in raw]
        units = calibrate(reference_table(lung_scores))
    scale, offset = units
    out = []
    for item in items:
        if folds.get(item.name) != fold:
            continue
        v = volumes[item.name]
        keep = np.asarray(anatomy[item.name]["occupied"], dtype=np.int64)
        z, s = v.z_mm[keep], scale * raw[item.name][keep] + offset
        out.append(held_out_volume(item.name, region_group(item.body_regions), fold, z, s,
                                   lm(item.name)))
    rho_unseen: dict[str, float | None] = {}
    for name, (slices, z) in unseen.items():
        rho_unseen[name] = monotonicity(z, score_stack(net, slices))[0]
    return out, rho_unseen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder of the fold models")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold", type=int, nargs="*", default=None, help="only these folds")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="measure these weights on every fold instead of training")
    add_training_options(parser)
    args = parser.parse_args(argv)
    manifest = shared_data_dir() / "manifest.csv"
    items = read_manifest(manifest)
    folds = assign_folds(items, args.folds)
    entries = read_list(manifest)
    args.out.mkdir(parents=True, exist_ok=True)
    anatomy = _anatomy(items, args.out.parent / "cv-anatomy.json")
    cached = load_train_volumes(entries, args.cache, progress=False)
    volumes = {v.name: v for v in cached}
    unseen = _unseen_slices()
    results: list[HeldOutVolume] = []
    per_fold: list[FoldFigures] = []
    unseen_rho: list[dict[str, float | None]] = []
    t0 = time.perf_counter()
    for fold in args.fold if args.fold is not None else range(args.folds):
        train_entries = [e for e in entries if (e.name in folds and folds[e.name] != fold)
                         or (e.name not in folds and e.split == "train")]
        trained_on = {e.name for e in train_entries}
        if args.baseline is not None:
            net, units = _load_net(args.baseline)
        else:
            weights = args.out / f"fold-{fold}" / "bpr_model.pt"
            if not weights.exists():
                cfg = config_from_args(args)
                net = train(training_volumes(train_entries, args), [], cfg, weights.parent,
                            resume=True)
                export_model(net, asdict(cfg), weights.parent)
            net, units = _load_net(weights)
        held, rho = measure_fold(net, fold, folds, volumes, items, anatomy, trained_on, unseen,
                                 units)
        results += held
        per_fold.append(fold_figures(held))
        unseen_rho.append(rho)
        print(f"fold {fold}: {json.dumps(asdict(per_fold[-1]))} unseen ρ {rho}", flush=True)
    summary = across_folds(per_fold)
    report = {"folds": [asdict(f) for f in per_fold], "summary": summary,
              "volumes": [asdict(v) for v in results], "unseen_dicom_rho": unseen_rho,
              "seconds": time.perf_counter() - t0}
    (args.out / "cv.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    print(_markdown(summary, results, unseen_rho))
    return 0


def _fmt(x: tuple[float, float | None] | None, pct: bool = False) -> str:
    if x is None:
        return "–"
    f = 100.0 if pct else 1.0
    se = "–" if x[1] is None else f"{f * x[1]:.{1 if pct else 2}f}"
    return f"{f * x[0]:.{1 if pct else 2}f} ± {se}{' %' if pct else ''}"


def _markdown(summary: dict[str, tuple[float, float | None] | None], volumes: list[HeldOutVolume],
              unseen_rho: list[dict[str, float | None]]) -> str:
    lines = ["| figure (mean ± SE over folds) | value |", "| --- | ---: |"]
    for key, value in summary.items():
        pct = key.startswith(("accuracy", "monotone"))
        lines.append(f"| {key} | {_fmt(value, pct)} |")
    rhos = [v.spearman for v in volumes if v.spearman is not None]
    monotone = sum(r > 0.98 for r in rhos)
    lines += ["", f"held-out torso volumes with ρ > 0.98: {monotone} of {len(rhos)}"]
    for name in UNSEEN_DICOM:
        values = [r[name] for r in unseen_rho]
        lines.append(f"{name} ρ per fold model: "
                     + ", ".join("–" if v is None else f"{v:.3f}" for v in values))
    lines += ["", "| volume | fold | ρ | pelvis | abdomen | chest | below/above slope |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for v in sorted(volumes, key=lambda v: (v.fold, v.name)):
        acc = {c: f"{k}/{n}" for c, (n, k) in v.class_counts.items()}
        ratio = "/".join("–" if x is None else f"{x:.3f}"
                         for x in (v.slope_below_lungs, v.slope_above_lungs))
        lines.append(f"| {v.name} | {v.fold} | {v.spearman or math.nan:.3f} | "
                     f"{acc.get('pelvis', '–')} | {acc.get('abdomen', '–')} | "
                     f"{acc.get('chest', '–')} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
