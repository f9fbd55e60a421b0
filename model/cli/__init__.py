"""``bpr`` command line: train, evaluate and predict."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from model import __version__
from model.paths import DEFAULT_WEIGHTS, shared_data_dir
from model.reading.volume import CTInputError
from model.tools.alignment import add_align_command
from model.tools.cropping import add_crop_command

if TYPE_CHECKING:
    from model.interpretation.analysis import BodyPartResult

log = logging.getLogger("bpr")


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="self-supervised training on unlabeled CT")
    p.add_argument("inputs", nargs="*", type=Path,
                   help="NIfTI files, DICOM folders or CSV lists (column file, optional split);"
                        " default: ../shared/data/manifest.csv")
    p.add_argument("--val", nargs="*", type=Path, default=[], help="validation inputs")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, history)")
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
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--phantom-variants", type=int, default=0,
                   help="add N synthetic whole-body CTs per ICRP phantom to the training set")
    p.add_argument("--phantom-dir", type=Path, default=None,
                   help="folder of the ICRP phantoms (default ../shared/data/phantoms)")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from model.training.dataset import entries_from_paths, load_train_volumes
    from model.training.export import export_model
    from model.training.train import TrainConfig, train

    inputs = args.inputs or [shared_data_dir() / "manifest.csv"]
    entries = entries_from_paths(inputs) + entries_from_paths(args.val, split="val")
    train_v = load_train_volumes([e for e in entries if e.split == "train"], args.cache)
    val_v = load_train_volumes([e for e in entries if e.split == "val"], args.cache)
    if args.phantom_variants:
        from model.training.phantom import synthetic_volumes

        phantom_dir = args.phantom_dir or shared_data_dir() / "phantoms"
        train_v += synthetic_volumes(phantom_dir, args.phantom_variants, seed=args.seed)
    cfg = TrainConfig(
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        volumes_per_batch=args.volumes_per_batch, slices_per_volume=args.slices_per_volume,
        delta_h_min_mm=args.delta_h[0], delta_h_max_mm=args.delta_h[1], loss=args.loss,
        beta_per_mm=args.beta, alpha_distance=args.alpha, lr=args.lr, seed=args.seed,
        augment=not args.no_augment, small_fov_p=args.small_fov_p, threads=args.threads,
        extra={"phantom_variants": str(args.phantom_variants)},
    )
    log.info("training on %d volumes, validating on %d", len(train_v), len(val_v))
    net = train(train_v, val_v, cfg, args.out, resume=args.resume)
    weights = export_model(net, asdict(cfg), args.out)
    print(f"wrote {weights} and {weights.with_suffix('.json')}")
    return 0


def _add_predict(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("predict", help="score every slice of CT series")
    p.add_argument("inputs", nargs="+", type=Path, help="NIfTI files, DICOM files or folders")
    p.add_argument("--out", type=Path, required=True,
                   help="JSON file when there is one series, else a folder of JSON files")
    p.add_argument("--model", type=Path, default=DEFAULT_WEIGHTS, help="weights (.pt)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--plot", action="store_true",
                   help="also write a PNG of the score curve beside each JSON")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from model.cli.output import output_name, write_json
    from model.interpretation.analysis import analyze
    from model.reading.load import load_volumes
    from model.scoring.inference import BodyPartRegressor

    if args.threads:
        torch.set_num_threads(args.threads)
    regressor = BodyPartRegressor.load(args.model)
    failures = 0
    volumes = []
    for path in args.inputs:
        try:
            loaded = load_volumes(path)
        except CTInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
            continue
        for err in loaded.errors:
            print(f"error: {err}", file=sys.stderr)
        failures += len(loaded.errors)
        volumes += loaded.volumes
    if not volumes:
        print("error: no CT series found in the inputs", file=sys.stderr)
        return 1
    single = len(volumes) == 1 and args.out.suffix.lower() == ".json"
    for i, volume in enumerate(tqdm(volumes, desc="predict", unit="series",
                                    disable=len(volumes) < 2)):
        try:
            result = analyze(volume, regressor)
        except (ValueError, RuntimeError) as exc:
            print(f"error: {volume.source}: scoring failed: {exc}", file=sys.stderr)
            failures += 1
            continue
        target = args.out if single else args.out / output_name(volume, i)
        write_json(result.to_json_dict(), target)
        if args.plot:
            _plot_result(result, target.with_suffix(".png"))
        print(f"{volume.identity}: {volume.n_slices} slices, "
              f"{result.body_part_examined or 'no term'} -> {target}")
    return 1 if failures else 0


def _plot_result(result: BodyPartResult, png: Path) -> None:
    from model.tools.plot import plot_scores

    regions = {name: (r.z_min_mm, r.z_max_mm) for name, r in result.regions.items()
               if r is not None}
    landmarks = {name: entry.score for name, entry in result.landmark_table.items()}
    cleaned = [np.nan if s is None else s for s in result.cleaned_scores]
    plot_scores(png, result.patient_z_mm, result.unprocessed_scores, cleaned,
                title=f"{Path(result.source).name}: {result.body_part_examined or 'no term'}",
                regions=regions, landmarks=landmarks)


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluate", help="landmark reference table, LMSE, accuracy, monotonicity")
    p.add_argument("weights", type=Path, nargs="?", default=DEFAULT_WEIGHTS,
                   help="bpr_model.pt (with its .json) or a training checkpoint")
    p.add_argument("--manifest", type=Path, default=None,
                   help="CSV of volumes (default ../shared/data/manifest.csv)")
    p.add_argument("--only", default="", help="evaluate only ids containing this text")
    p.add_argument("--no-calibrate", action="store_true",
                   help="use the score scale of the model metadata instead of fitting it")
    p.add_argument("--write-meta", action="store_true",
                   help="store scale, reference table and statistics in the weights' JSON")
    p.add_argument("--compare", type=Path, default=None,
                   help="JSON report of another model: z-test of the LMSE (eq. 4.16)")
    p.add_argument("--json", type=Path, help="write the report as JSON here")
    p.add_argument("--markdown", type=Path, help="write the report as Markdown here")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from model.cli.output import write_json
    from model.evaluation.calibration import model_statistics, write_calibration
    from model.evaluation.evaluate import evaluate_scores, load_regressor, score_items
    from model.evaluation.manifest import read_manifest
    from model.evaluation.metrics import z_test

    if args.threads:
        torch.set_num_threads(args.threads)
    manifest = args.manifest or shared_data_dir() / "manifest.csv"
    items = [i for i in read_manifest(manifest) if args.only in i.name]
    regressor = load_regressor(args.weights)
    start = time.perf_counter()
    volumes = score_items(regressor, items)
    meta = regressor.meta
    report = evaluate_scores(volumes, model_version=meta.version, scale_offset=None
                             if not args.no_calibrate else (meta.score_scale, meta.score_offset))
    report.seconds = time.perf_counter() - start
    document = report.to_dict()
    print(report.to_markdown())
    if args.compare:
        other = json.loads(args.compare.read_text())["lmse"]
        t, p = z_test(report.lmse, (other["mean"], other["se"]))
        document["comparison"] = {"other": str(args.compare), "z": t, "p": p}
        print(f"z-test against {args.compare}: z = {t:.2f}, p = {p:.3g}"
              f" ({'significant' if p < 0.05 else 'not significant'} at 5 %)")
    if args.json:
        write_json(document, args.json)
    if args.markdown:
        args.markdown.write_text(report.to_markdown())
    if args.write_meta:
        stats = model_statistics(regressor, report, volumes)
        meta_path = write_calibration(args.weights, report, stats)
        print(f"wrote calibration and statistics to {meta_path}")
    print(f"{len(items)} volumes in {report.seconds:.1f} s")
    return 0


#: Adds one sub-command to the ``bpr`` parser (the node adds serve, index and reprocess).
CommandRegistrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def build_parser(extra_commands: Sequence[CommandRegistrar] = ()) -> argparse.ArgumentParser:
    """The ``bpr`` parser with the model's commands and any ``extra_commands``."""
    parser = argparse.ArgumentParser(prog="bpr", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bpr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    add_crop_command(sub)
    add_align_command(sub)
    for register in extra_commands:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None,
         extra_commands: Sequence[CommandRegistrar] = ()) -> int:
    args = build_parser(extra_commands).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
