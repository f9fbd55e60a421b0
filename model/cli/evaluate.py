"""``bpr evaluate``: landmark reference table, LMSE, accuracy and monotonicity of a model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from model.paths import DEFAULT_WEIGHTS, shared_data_dir


def add_evaluate_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bpr evaluate`` on the ``bpr`` subparsers."""
    p = sub.add_parser("evaluate", help="landmark reference table, LMSE, accuracy, monotonicity")
    p.add_argument("weights", type=Path, nargs="?", default=DEFAULT_WEIGHTS,
                   help="bpr_model.pt (with its .json) or a training checkpoint")
    p.add_argument("--manifest", type=Path, default=None,
                   help="CSV of volumes (default ../shared/data/manifest.csv)")
    p.add_argument("--only", default="", help="evaluate only ids containing this text")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--no-calibrate", action="store_true",
                       help="use the score scale of the model metadata instead of fitting it")
    scale.add_argument("--calibrate-on-lungs", action="store_true",
                       help="fit the score scale on the training lungs even for a model"
                            " trained with anchors (default: the units of its anchors)")
    p.add_argument("--write-meta", action="store_true",
                   help="store scale, reference table and statistics in the weights' JSON")
    p.add_argument("--compare", type=Path, default=None,
                   help="JSON report of another model: z-test of the LMSE (eq. 4.16)")
    p.add_argument("--json", type=Path, help="write the report as JSON here")
    p.add_argument("--markdown", type=Path, help="write the report as Markdown here")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.set_defaults(func=run_evaluate_command)


def run_evaluate_command(args: argparse.Namespace) -> int:
    """Handler of ``bpr evaluate``: score, measure, report; returns the exit status."""
    import json

    import torch

    from model.cli.output import write_json
    from model.evaluation.calibration import anchor_units, model_statistics, write_calibration
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
    units = None if args.calibrate_on_lungs else anchor_units(meta.training)
    scale_offset: tuple[float, float] | None
    if args.no_calibrate:
        scale_offset, source = (meta.score_scale, meta.score_offset), "metadata"
    else:  # None: fitted on the lungs
        scale_offset, source = units, "anchors"
    report = evaluate_scores(volumes, model_version=meta.version, scale_offset=scale_offset,
                             scale_source=source)
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
