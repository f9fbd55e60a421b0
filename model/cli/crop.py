"""``bpr crop``: known region cropping of one CT series (:mod:`model.tools.cropping`).

The known range comes from explicit scores, two landmark names or an algorithm's training
volumes; the command prints the kept slice run and writes, on request, a cropped NIfTI,
the SOP Instance UIDs inside the range, a mask zeroed outside it and a JSON report.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.cli.output import write_json
from model.paths import DEFAULT_WEIGHTS
from model.reading.volume import CTInputError, CTVolume

if TYPE_CHECKING:
    from model.scoring.inference import BodyPartRegressor
    from model.tools.cropping import CropRange, KnownRange


def add_crop_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bpr crop`` (known region cropping) on the ``bpr`` subparsers."""
    p = subparsers.add_parser(
        "crop", help="known region cropping: keep the slices inside a score range",
        description="Crop a CT series to the slices whose cleaned score lies in a known range "
                    "(thesis §4.3.2) and optionally zero a segmentation mask outside it.")
    p.add_argument("input", type=Path, help="NIfTI file, DICOM file or folder of one series")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--scores", type=float, nargs=2, metavar=("MIN", "MAX"),
                     help="known range as scores")
    src.add_argument("--landmarks", nargs=2, metavar=("START", "END"),
                     help="known range between two landmarks' expected scores "
                          "(model reference table, else bpreg's published table)")
    src.add_argument("--from-training", type=Path, metavar="FOLDER_OR_CSV",
                     help="known range from an algorithm's training volumes")
    # None: DEFAULT_QUANTILES, looked up when the command runs (model.tools.cropping
    # loads torch, which no other bpr command should wait for)
    p.add_argument("--quantiles", type=float, nargs=2, default=None,
                   metavar=("QMIN", "QMAX"),
                   help="quantiles of the per-volume min/max scores for --from-training "
                        "(default 0.25 0.75, as in the thesis)")
    p.add_argument("--margin", type=float, default=0.0,
                   help="widen the known range by this many score units at both ends")
    p.add_argument("--out-nifti", type=Path, help="write the cropped volume (NIfTI input only)")
    p.add_argument("--out-uids", type=Path,
                   help="write the SOP Instance UIDs inside the range (DICOM input only)")
    p.add_argument("--mask", type=Path, help="segmentation mask (NIfTI) to filter")
    p.add_argument("--out-mask", type=Path, help="where to write the filtered mask")
    p.add_argument("--json", type=Path, help="write range and known range as JSON")
    p.add_argument("--model", type=Path, default=DEFAULT_WEIGHTS, help="weights (.pt)")
    p.set_defaults(func=run_crop_command)


def _known_range(args: argparse.Namespace, regressor: BodyPartRegressor) -> KnownRange:
    """The known range from whichever source the arguments name, widened by ``--margin``."""
    from model.tools.cropping import (
        DEFAULT_QUANTILES,
        known_range_from_landmarks,
        known_range_from_scores,
        known_range_from_training,
        training_curves,
    )

    if args.scores is not None:
        known = known_range_from_scores(*args.scores)
    elif args.landmarks is not None:
        known = known_range_from_landmarks(args.landmarks[0], args.landmarks[1],
                                           regressor.meta)
    else:
        curves, errors = training_curves(args.from_training, regressor)
        for err in errors:
            print(f"warning: {err}", file=sys.stderr)
        known = known_range_from_training(curves, tuple(args.quantiles or DEFAULT_QUANTILES))
    return known.widened(args.margin)


def _check_outputs(args: argparse.Namespace, volume: CTVolume) -> None:
    """Refuse impossible outputs before any slice is scored."""
    from model.reading.nifti import is_nifti

    if (args.mask is None) != (args.out_mask is None):
        raise ValueError("--mask and --out-mask go together")
    if args.out_nifti is not None and not is_nifti(args.input):
        raise ValueError("--out-nifti needs a NIfTI input")
    if args.out_uids is not None and len(volume.sop_instance_uids) != volume.n_slices:
        raise ValueError(f"{volume.source}: --out-uids needs a DICOM series "
                         "(no SOP Instance UID per slice)")


def _message(exc: Exception) -> str:
    """The error text for the terminal."""
    # str() of a KeyError is the repr of its key, quotes included
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _write_outputs(args: argparse.Namespace, volume: CTVolume, crop: CropRange
                   ) -> dict[str, Any]:
    """Write the requested files; returns what the JSON report adds about them."""
    from model.tools.crop_outputs import (
        filter_mask,
        uids_in_range,
        write_cropped_nifti,
        write_uids,
    )

    extra: dict[str, Any] = {}
    if args.out_nifti is not None:
        print(f"wrote {write_cropped_nifti(args.input, crop, args.out_nifti)}")
    if args.out_uids is not None:
        uids = uids_in_range(volume, crop)
        print(f"wrote {len(uids)} UIDs to {write_uids(uids, args.out_uids)}")
    if args.mask is not None:
        result = filter_mask(args.mask, crop, args.out_mask)
        extra["mask"] = asdict(result)
        print(f"wrote {args.out_mask}: removed {result.removed_voxels} labelled voxels "
              f"in {result.removed_slices} slices, kept {result.kept_voxels}")
    return extra


def run_crop_command(args: argparse.Namespace) -> int:
    """Handler of ``bpr crop``; returns the exit status."""
    from model.cli.inputs import one_series
    from model.evaluation.evaluate import load_regressor
    from model.tools.cropping import crop_range, score_and_clean

    try:
        volume = one_series(args.input)
        _check_outputs(args, volume)
        regressor = load_regressor(args.model)
        known = _known_range(args, regressor)
        crop = crop_range(score_and_clean(volume, regressor).scores, volume.z_mm,
                          known.s_min, known.s_max, sigma_mm=0.0)
    except (CTInputError, ValueError, KeyError, OSError, RuntimeError) as exc:
        print(f"error: {_message(exc)}", file=sys.stderr)
        return 1
    print(f"{volume.identity}: {crop.describe()} ({known.source})")
    document: dict[str, Any] = {"input": volume.source, "known_range": asdict(known),
                                "crop": crop.to_dict()}
    status = 0
    try:
        document.update(_write_outputs(args, volume, crop))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 1
    if args.json is not None:
        write_json(document, args.json)
    return status
