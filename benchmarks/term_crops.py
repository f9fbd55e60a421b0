"""Known-region crops: does the DICOM term name the clinical regions a crop holds?

Run: ``python -m benchmarks.term_crops [--split val|train|all] [--markdown PATH]``

Every volume of ``../shared/data/manifest.csv`` whose landmarks allow it is cut into z-crops
of a known clinical term (HEAD, NECK, HEADNECK, NECKCHEST, CHEST, CHESTABDOMEN, ABDOMEN,
ABDOMENPELVIS, PELVIS, CHESTABDPELVIS; rules in :mod:`model.evaluation.term_crops`), scored
once per volume and interpreted per crop (:mod:`model.evaluation.crop_benchmark`). Prints per
split the exact rate and withheld rate per expected term, the confusion matrix and the
summary figures, then whether the out-of-scope IBSI limb volumes get any term.
"""

from __future__ import annotations

import argparse
import time

from model.evaluation.crop_benchmark import (
    OUT_OF_SCOPE_PREFIX,
    CropOutcome,
    OutOfScopeOutcome,
    evaluate_item,
    evaluate_out_of_scope,
    markdown_report,
)
from model.evaluation.manifest import add_split_arguments, emit_report, selected_items
from model.paths import DEFAULT_WEIGHTS
from model.scoring.inference import BodyPartRegressor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_split_arguments(parser)
    args = parser.parse_args(argv)
    items = selected_items(args)
    regressor = BodyPartRegressor.load(args.weights or DEFAULT_WEIGHTS)
    t0 = time.perf_counter()
    outcomes: list[CropOutcome] = []
    limbs: list[OutOfScopeOutcome] = []
    for item in items:
        if item.name.startswith(OUT_OF_SCOPE_PREFIX):
            limbs.append(evaluate_out_of_scope(item, regressor))
        else:
            outcomes += evaluate_item(item, regressor)
    splits = ("train", "val") if args.split == "all" else (args.split,)
    text = markdown_report(outcomes, limbs, splits)
    text += (f"\n- model {regressor.meta.version}, {len(items)} volumes, "
             f"{len(outcomes)} crops in {time.perf_counter() - t0:.0f} s")
    emit_report(text, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
