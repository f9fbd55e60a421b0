"""``bpr predict``: score every slice of CT series and write one JSON document per series."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.paths import DEFAULT_WEIGHTS
from model.reading.volume import CTInputError, CTVolume, SeriesDescription

if TYPE_CHECKING:
    from model.interpretation.analysis import BodyPartResult
    from model.reading.dicom_assembly import SeriesPlan
    from model.scoring.inference import BodyPartRegressor


def add_predict_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bpr predict`` on the ``bpr`` subparsers."""
    p = sub.add_parser("predict", help="score every slice of CT series")
    p.add_argument("inputs", nargs="+", type=Path, help="NIfTI files, DICOM files or folders")
    p.add_argument("--out", type=Path, required=True,
                   help="JSON file when there is one series, else a folder of JSON files")
    p.add_argument("--model", type=Path, default=DEFAULT_WEIGHTS, help="weights (.pt)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--plot", action="store_true",
                   help="also write a PNG of the score curve beside each JSON")
    p.set_defaults(func=run_predict_command)


def run_predict_command(args: argparse.Namespace) -> int:
    """Handler of ``bpr predict``; returns the exit status (1 if any input failed)."""
    import torch
    from tqdm import tqdm

    from model.reading.load import scan_input
    from model.scoring.inference import BodyPartRegressor

    if args.threads:
        torch.set_num_threads(args.threads)
    regressor = BodyPartRegressor.load(args.model)
    failures = 0
    series: list[Path | SeriesPlan] = []
    for path in args.inputs:
        try:
            scan = scan_input(path)
        except CTInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
            continue
        for err in scan.errors:
            print(f"error: {err}", file=sys.stderr)
        failures += len(scan.errors)
        series += [*scan.nifti, *scan.plans]
    if not series:
        print("error: no CT series found in the inputs", file=sys.stderr)
        return 1
    single = len(series) == 1 and args.out.suffix.lower() == ".json"
    for i, item in enumerate(tqdm(series, desc="predict", unit="series",
                                  disable=len(series) < 2)):
        failures += _predict_one(item, regressor, args, None if single else i)
    return 1 if failures else 0


def _predict_one(item: Path | SeriesPlan, regressor: BodyPartRegressor,
                 args: argparse.Namespace, index: int | None) -> int:
    """Score one NIfTI file or DICOM series and write its JSON; returns the failures."""
    from model.cli.output import output_name, write_json
    from model.interpretation.analysis import analyze, analyze_plan
    from model.reading.nifti import read_nifti

    errors: list[str] = []
    described: CTVolume | SeriesDescription
    try:
        if isinstance(item, Path):
            volume = read_nifti(item)
            result, described = analyze(volume, regressor), volume
        else:
            # chunk by chunk: a long thin-slice series never sits in memory at full size
            result, described = analyze_plan(item, errors, regressor)
    except CTInputError as exc:
        errors.append(str(exc))
        result = None
    except (ValueError, RuntimeError) as exc:
        errors.append(f"{item if isinstance(item, Path) else item.source}: scoring failed: {exc}")
        result = None
    for err in errors:
        print(f"error: {err}", file=sys.stderr)
    if result is None:
        return len(errors)
    target = args.out if index is None else args.out / output_name(described, index)
    write_json(result.to_json_dict(), target)
    if args.plot:
        _plot_result(result, target.with_suffix(".png"))
    print(f"{described.identity}: {described.n_slices} slices, "
          f"{result.body_part_examined or 'no term'} -> {target}")
    return len(errors)


def _plot_result(result: BodyPartResult, png: Path) -> None:
    """PNG of the score curves with regions and landmarks, for ``--plot``."""
    from model.tools.plot import plot_scores

    regions = {name: (r.z_min_mm, r.z_max_mm) for name, r in result.regions.items()
               if r is not None}
    landmarks = {name: entry.score for name, entry in result.landmark_table.items()}
    cleaned = [np.nan if s is None else s for s in result.cleaned_scores]
    plot_scores(png, result.patient_z_mm, result.unprocessed_scores, cleaned,
                title=f"{Path(result.source).name}: {result.body_part_examined or 'no term'}",
                regions=regions, landmarks=landmarks)
