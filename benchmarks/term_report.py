"""What the curve says about every volume with known anatomy: term, flags, stress variants.

Run: ``python -m benchmarks.term_report [--split val|train|all] [--markdown PATH]``

For each volume of ``../shared/data/manifest.csv`` it prints the manifest's regions, the
DICOM BodyPartExamined term and the thesis tag that :func:`~model.interpretation.analysis.analyze`
gives,
whether the term agrees with the manifest
(:func:`~model.evaluation.term_check.term_agrees_with_regions`),
the anomalies raised, and, for the volumes the model places (no error on the original and
the ordering and spacing checks decided),
whether a reversed slice order, a header z-spacing scaled by 2, ½, 0.75 and 1.4, and the
series stacked onto itself (a duplicate) or onto the next placed volume are caught
(n/a elsewhere). The last lines count them, with the discontinuity errors and the
``invalid_z_spacing`` share of the unperturbed volumes.
"""

from __future__ import annotations

import argparse
import time

from model.evaluation.manifest import EvalItem, add_split_arguments, emit_report, selected_items
from model.evaluation.term_check import stacked, term_agrees_with_regions, variant
from model.interpretation.analysis import BodyPartResult, score_with_content
from model.interpretation.postprocess import IntVector
from model.interpretation.sanity import AnomalyCode, Severity
from model.paths import DEFAULT_WEIGHTS
from model.reading.nifti import read_nifti
from model.reading.volume import CTVolume
from model.scoring.inference import BodyPartRegressor, SliceScores


def _codes(result: BodyPartResult) -> str:
    return ", ".join(dict.fromkeys(a.code.value for a in result.anomalies)) or "–"


Scored = tuple[EvalItem, CTVolume, SliceScores, IntVector]
#: Header z-spacing factors tried; 2 and ½ must be caught, 0.75 and 1.4 are reported.
Z_FACTORS = (2.0, 0.5, 0.75, 1.4)


def _score(item: EvalItem, regressor: BodyPartRegressor) -> Scored:
    volume = read_nifti(item.ct_path)
    scores, body = score_with_content(volume, regressor)
    return item, volume, scores, body


def _is_stack_caught(result: BodyPartResult) -> bool:
    return any(a.code is AnomalyCode.DISCONTINUITY and a.severity is Severity.ERROR
               for a in result.anomalies)


def _row(scored: Scored, partner: Scored, regressor: BodyPartRegressor
         ) -> tuple[list[str], dict[str, bool | None], BodyPartResult]:
    item, volume, scores, body = scored
    original = variant(volume, scores, body, regressor)
    term = original.body_part_examined
    checks: dict[str, bool | None] = {
        "term agrees": term is not None and term_agrees_with_regions(term, item.body_regions),
        "original clean": original.valid_z_spacing is True and not original.has_errors
        and original.reverse_z_ordering is False,
        "reversed caught": None, **{f"×{f:g} caught": None for f in Z_FACTORS},
        "duplicate caught": None, "stack caught": None,
    }
    # a series already refused (out of scope), or too short for the ordering and spacing
    # checks, is not one the model places: nothing left to test
    if not original.has_errors and original.valid_z_spacing is not None:
        checks["reversed caught"] = variant(volume, scores, body, regressor,
                                            reverse=True).reverse_z_ordering is True
        for f in Z_FACTORS:
            checks[f"×{f:g} caught"] = variant(volume, scores, body, regressor,
                                               z_factor=f).valid_z_spacing is False
        checks["duplicate caught"] = _is_stack_caught(
            stacked(volume, scores, body, volume, scores, body, regressor))
        checks["stack caught"] = _is_stack_caught(
            stacked(volume, scores, body, partner[1], partner[2], partner[3], regressor))
    ratio = "–" if original.slope_ratio is None else f"{original.slope_ratio:.2f}"
    cells = [item.name, item.split, ";".join(item.body_regions), term or "(withheld)",
             original.body_part_examined_tag, ratio, _codes(original),
             *("n/a" if v is None else "yes" if v else "**no**" for v in checks.values())]
    return cells, checks, original


def _original_lines(originals: list[BodyPartResult]) -> list[str]:
    def count(code: AnomalyCode) -> int:
        return sum(any(a.code is code and a.severity is Severity.ERROR for a in r.anomalies)
                   for r in originals)
    n = len(originals)
    spacing = count(AnomalyCode.INVALID_Z_SPACING)
    return [f"- unperturbed volumes: {count(AnomalyCode.DISCONTINUITY)} discontinuity errors, "
            f"{spacing} invalid_z_spacing ({100 * spacing / max(n, 1):.1f} %), "
            f"{count(AnomalyCode.OUT_OF_SCOPE)} out_of_scope, of {n}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_split_arguments(parser)
    args = parser.parse_args(argv)
    items = selected_items(args)
    regressor = BodyPartRegressor.load(args.weights or DEFAULT_WEIGHTS)
    t0 = time.perf_counter()
    scored = [_score(item, regressor) for item in items]
    header = ["volume", "split", "manifest regions", "term", "thesis tag", "slope ratio",
              "anomalies", "term agrees", "original clean", "reversed caught",
              *(f"×{f:g} caught" for f in Z_FACTORS), "duplicate caught", "stack caught"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    passed: dict[str, int] = {}
    tested: dict[str, int] = {}
    originals = []
    for k, entry in enumerate(scored):
        # the partner is the next volume in manifest order: a fixed, varied pairing
        cells, checks, original = _row(entry, scored[(k + 1) % len(scored)], regressor)
        originals.append(original)
        lines.append("| " + " | ".join(cells) + " |")
        for name, ok in checks.items():
            passed[name] = passed.get(name, 0) + int(bool(ok))
            tested[name] = tested.get(name, 0) + int(ok is not None)
    lines.append("")
    lines += [f"- {name}: {passed[name]} of {tested[name]}" for name in passed]
    lines += _original_lines(originals)
    lines.append(f"- model {regressor.meta.version}, {len(items)} volumes in "
                 f"{time.perf_counter() - t0:.0f} s")
    text = "\n".join(lines)
    emit_report(text, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
