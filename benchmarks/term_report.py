"""What the curve says about every volume with known anatomy: term, flags, stress variants.

Run: ``python -m benchmarks.term_report [--split val|train|all] [--markdown PATH]``

For each volume of ``../shared/data/manifest.csv`` it prints the manifest's regions, the
DICOM BodyPartExamined term and the thesis tag that :func:`~model.interpretation.analysis.analyze`
gives,
whether the term agrees with the manifest
(:func:`~model.evaluation.term_check.term_agrees_with_regions`),
the anomalies raised, and whether a reversed slice order and a header z-spacing scaled by
2 and by ½ are caught (issue 3's done-when; n/a where the original is already refused).
The last lines count the agreements.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from model.evaluation.manifest import EvalItem, read_manifest
from model.evaluation.term_check import term_agrees_with_regions, variant
from model.interpretation.analysis import BodyPartResult, score_with_content
from model.paths import shared_data_dir
from model.reading.nifti import read_nifti
from model.scoring.inference import BodyPartRegressor


def _codes(result: BodyPartResult) -> str:
    return ", ".join(dict.fromkeys(a.code.value for a in result.anomalies)) or "–"


def _row(item: EvalItem, regressor: BodyPartRegressor
         ) -> tuple[list[str], dict[str, bool | None]]:
    volume = read_nifti(item.ct_path)
    scored, body = score_with_content(volume, regressor)
    original = variant(volume, scored, body, regressor)
    term = original.body_part_examined
    checks: dict[str, bool | None] = {
        "term agrees": term is not None and term_agrees_with_regions(term, item.body_regions),
        "original clean": original.valid_z_spacing is True and not original.has_errors
        and original.reverse_z_ordering is False,
        "reversed caught": None, "×2 caught": None, "×½ caught": None,
    }
    # a series already refused (out of scope) has no ordering or spacing left to test
    if not original.has_errors:
        checks["reversed caught"] = variant(volume, scored, body, regressor,
                                            reverse=True).reverse_z_ordering is True
        checks["×2 caught"] = variant(volume, scored, body, regressor,
                                      z_factor=2.0).valid_z_spacing is False
        checks["×½ caught"] = variant(volume, scored, body, regressor,
                                      z_factor=0.5).valid_z_spacing is False
    ratio = "–" if original.slope_ratio is None else f"{original.slope_ratio:.2f}"
    cells = [item.name, item.split, ";".join(item.body_regions), term or "(withheld)",
             original.body_part_examined_tag, ratio, _codes(original),
             *("n/a" if v is None else "yes" if v else "**no**" for v in checks.values())]
    return cells, checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", choices=("val", "train", "all"), default="val")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="default: ../shared/data/manifest.csv")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    manifest = args.manifest or shared_data_dir() / "manifest.csv"
    items = [i for i in read_manifest(manifest) if args.split in ("all", i.split)]
    regressor = BodyPartRegressor.load()
    header = ["volume", "split", "manifest regions", "term", "thesis tag", "slope ratio",
              "anomalies", "term agrees", "original clean", "reversed caught", "×2 caught",
              "×½ caught"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    passed: dict[str, int] = {}
    tested: dict[str, int] = {}
    t0 = time.perf_counter()
    for item in items:
        cells, checks = _row(item, regressor)
        lines.append("| " + " | ".join(cells) + " |")
        for name, ok in checks.items():
            passed[name] = passed.get(name, 0) + int(bool(ok))
            tested[name] = tested.get(name, 0) + int(ok is not None)
    lines.append("")
    lines += [f"- {name}: {passed[name]} of {tested[name]}" for name in passed]
    lines.append(f"- model {regressor.meta.version}, {len(items)} volumes in "
                 f"{time.perf_counter() - t0:.0f} s")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
