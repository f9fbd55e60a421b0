"""``bpr train``: self-supervised training on unlabeled CT (:mod:`model.training`)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from model.paths import shared_data_dir

if TYPE_CHECKING:  # training pulls in scipy and tqdm; every other command starts without them
    from model.training.dataset import TrainVolume, VolumeEntry
    from model.training.train import TrainConfig

log = logging.getLogger("bpr")


def add_train_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bpr train`` on the ``bpr`` subparsers."""
    p = sub.add_parser("train", help="self-supervised training on unlabeled CT")
    p.add_argument("inputs", nargs="*", type=Path,
                   help="NIfTI files, DICOM folders or CSV lists (column file, optional split);"
                        " default: ../shared/data/manifest.csv")
    p.add_argument("--val", nargs="*", type=Path, default=[], help="validation inputs")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, history)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    add_training_options(p)
    p.set_defaults(func=run_train_command)


def add_training_options(p: argparse.ArgumentParser) -> None:
    """Options of the training recipe, shared by ``bpr train`` and the cross-validation."""
    p.add_argument("--cache", type=Path, default=Path(".cache/train"),
                   help="folder for preprocessed volumes (default .cache/train)")
    p.add_argument("--epochs", type=int, default=64)
    p.add_argument("--steps-per-epoch", type=int, default=40)
    p.add_argument("--volumes-per-batch", type=int, default=32)
    p.add_argument("--slices-per-volume", type=int, default=8, help="m, slices per volume")
    p.add_argument("--delta-h", type=float, nargs=2, default=(5.0, 100.0), metavar=("MIN", "MAX"),
                   help="range of the slice distance Δh in mm")
    p.add_argument("--loss", choices=("heuristic", "classification"), default="heuristic")
    p.add_argument("--beta", type=float, default=0.01, help="β of the heuristic loss, per mm")
    p.add_argument("--alpha", type=float, default=0.0, help="weight of the distance loss")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--small-fov-p", type=float, default=0.0,
                   help="share of slices masked to a random small box (limb and tumour crops)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from these weights (.pt; fine-tuning); their .json calibration"
                        " sets the anchor targets' raw units")
    p.add_argument("--anchor-weight", type=float, default=0.0,
                   help="γ of the anchor loss: image landmarks pulled to bpreg's published"
                        " scores (0: off)")
    for region, between in (("pelvic", "the pelvis bottom, femoral head top and iliac crest"),
                            ("abdomen", "the iliac crest and the lung bottom")):
        p.add_argument(f"--{region}-anchor-step", type=float, default=0.0, metavar="MM",
                       help=f"with --anchor-weight: also anchor a slice every MM mm between"
                            f" {between}, on the volume's own scale, adding to the anchor loss"
                            " averaged over the landmarks (0: off)")
    p.add_argument("--abdomen-extension", type=float, default=0.0, metavar="MM",
                   help="with --abdomen-anchor-step: a volume that shows only the iliac crest"
                        " or only the lung bottom is also anchored every step up to MM mm into"
                        " the abdomen, on bpreg's abdominal scale over the training set's"
                        " median abdomen length (0: off)")
    p.add_argument("--retain-weight", type=float, default=0.0,
                   help="weight that keeps the teacher's scores of slices it places at or"
                        " above the lung top (head and neck); the teacher is --teacher,"
                        " else --init")
    p.add_argument("--teacher", type=Path, default=None,
                   help="with --retain-weight: the model whose head and neck scores are"
                        " kept (a run from scratch keeps them too); without --init its .json"
                        " calibration sets the anchor targets' raw units")
    p.add_argument("--retain-scope", choices=("lung_top", "teacher"), default="lung_top",
                   help="which slices retention keeps: those above the lung top that the image"
                        " shows (default), or wherever the teacher scores them above it (runs"
                        " p2-p10; it also kept the teacher's neck-like scores of limb crops)")
    p.add_argument("--torso-factor", type=float, default=1.0,
                   help="sampling factor of volumes that show a landmark below the lung top")
    p.add_argument("--phantom-variants", type=int, default=0,
                   help="add N synthetic whole-body CTs per ICRP phantom to the training set")
    p.add_argument("--phantom-dir", type=Path, default=None,
                   help="folder of the ICRP phantoms (default ../shared/data/phantoms)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` that :func:`add_training_options` describes."""
    from model.scoring.inference import ModelMeta
    from model.training.train import TrainConfig

    scale, offset = TrainConfig.anchor_scale, TrainConfig.anchor_offset
    # the raw units that the anchors and the retained scores must share
    units = args.init if args.init is not None else args.teacher
    if units is not None and units.with_suffix(".json").exists():
        meta = ModelMeta.read(units.with_suffix(".json"))
        if meta.score_scale != 1.0:  # 1.0: exported but not yet calibrated
            scale, offset = meta.score_scale, meta.score_offset
    return TrainConfig(
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        volumes_per_batch=args.volumes_per_batch, slices_per_volume=args.slices_per_volume,
        delta_h_min_mm=args.delta_h[0], delta_h_max_mm=args.delta_h[1], loss=args.loss,
        beta_per_mm=args.beta, alpha_distance=args.alpha, lr=args.lr, seed=args.seed,
        augment=not args.no_augment, small_fov_p=args.small_fov_p, threads=args.threads,
        anchor_weight=args.anchor_weight, torso_factor=args.torso_factor,
        pelvic_anchor_step_mm=args.pelvic_anchor_step,
        abdomen_anchor_step_mm=args.abdomen_anchor_step,
        abdomen_extension_mm=args.abdomen_extension,
        retain_weight=args.retain_weight, retain_scope=args.retain_scope,
        anchor_scale=scale, anchor_offset=offset, init_weights=str(args.init or ""),
        teacher_weights=str(args.teacher or ""),
        extra={"phantom_variants": str(args.phantom_variants)},
    )


def training_volumes(entries: Sequence[VolumeEntry], args: argparse.Namespace
                     ) -> list[TrainVolume]:
    """Preprocessed ``entries`` plus the synthetic phantom CTs that ``args`` ask for."""
    from model.training.dataset import load_train_volumes
    from model.training.phantom import synthetic_volumes


    volumes = load_train_volumes(entries, args.cache)
    if args.phantom_variants:
        phantom_dir = args.phantom_dir or shared_data_dir() / "phantoms"
        volumes += synthetic_volumes(phantom_dir, args.phantom_variants, seed=args.seed)
    return volumes


def run_train_command(args: argparse.Namespace) -> int:
    """Handler of ``bpr train``: train, then export the weights; returns the exit status."""
    from model.training.dataset import entries_from_paths, load_train_volumes
    from model.training.export import export_model
    from model.training.train import train


    inputs = args.inputs or [shared_data_dir() / "manifest.csv"]
    entries = entries_from_paths(inputs) + entries_from_paths(args.val, split="val")
    train_v = training_volumes([e for e in entries if e.split == "train"], args)
    val_v = load_train_volumes([e for e in entries if e.split == "val"], args.cache)
    cfg = config_from_args(args)
    log.info("training on %d volumes, validating on %d", len(train_v), len(val_v))
    net = train(train_v, val_v, cfg, args.out, resume=args.resume)
    weights = export_model(net, asdict(cfg), args.out)
    print(f"wrote {weights} and {weights.with_suffix('.json')}")
    return 0
