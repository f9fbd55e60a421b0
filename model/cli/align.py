"""``bpr align``: z offset between two CT series from their score curves.

The library behind it is :mod:`model.tools.alignment` (Meine & Hering prealignment).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.cli.output import write_json
from model.paths import DEFAULT_WEIGHTS
from model.reading.volume import CTInputError


def add_align_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bpr align`` (z prealignment of two scans) on the ``bpr`` subparsers."""
    p = subparsers.add_parser(
        "align", help="z offset between two CT series from their slice scores",
        description="Registration prealignment (Meine & Hering): the offset to add to a "
                    "moving-scan z to get the fixed-scan z of the same anatomy.")
    p.add_argument("fixed", type=Path, help="fixed scan: NIfTI file or DICOM folder (one series)")
    p.add_argument("moving", type=Path, help="moving scan")
    p.add_argument("--method", choices=("three-slice", "l1", "both"), default="l1")
    p.add_argument("--json", type=Path, help="write the result(s) as JSON")
    p.add_argument("--model", type=Path, default=DEFAULT_WEIGHTS, help="weights (.pt)")
    p.set_defaults(func=run_align_command)


def run_align_command(args: argparse.Namespace) -> int:
    """Handler of ``bpr align``; returns the exit status."""
    from model.cli.inputs import one_series
    from model.evaluation.evaluate import load_regressor
    from model.tools.alignment import Method, prealign, score_profile

    try:
        regressor = load_regressor(args.model)
        fixed, moving = one_series(args.fixed), one_series(args.moving)
        curve = score_profile(fixed, regressor)
        methods: list[Method] = (["three-slice", "l1"] if args.method == "both"
                                 else [args.method])
        results = [prealign(fixed, moving, regressor, m, fixed_profile=curve) for m in methods]
    except (CTInputError, ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for r in results:
        print(r.describe())
    if args.json is not None:
        document = {"fixed": fixed.source, "moving": moving.source,
                    "results": [r.to_dict() for r in results]}
        write_json(document, args.json)
    return 0
