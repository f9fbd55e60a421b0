"""A simulated site adapts the model: guard metrics before and after, on a patient hold-out.

Run: ``python -m benchmarks.adaptation_site [--steps 200] [--threads 2] [--max-volumes N]``

Every torso volume of ``../shared/data`` (chest, abdomen, pelvis; the IBSI limb crops are out
of scope) is written as DICOM with its own PatientID and sent with DCMTK ``storescu`` to a
real ``bpr serve``, which analyzes it. Then ``bpr adapt --config`` fine-tunes the shipped
model on the series the node trusts, holding out a quarter of the patients, and the report's
guard metrics are printed for the active model and the candidate, with the bootstrap standard
error of each difference and the promotion decision, whatever they are. The validation LMSE on
``../shared/data`` is compared as well (both models, z-test).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from model.evaluation.cross_validation import torso_items
from model.evaluation.manifest import read_manifest
from model.paths import shared_data_dir
from tests.node_harness import bpr, simulated_site


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the run")
    parser.add_argument("--max-volumes", type=int, default=0, help="0: every torso volume")
    parser.add_argument("--no-validation", action="store_true",
                        help="skip the validation LMSE comparison")
    parser.add_argument("--keep", type=Path, default=None, help="keep the site in this folder")
    args = parser.parse_args(argv)
    names = [i.name for i in torso_items(read_manifest(shared_data_dir() / "manifest.csv"))]
    names = names[:args.max_volumes] if args.max_volumes else names
    adaptation = {"steps": args.steps, "threads": args.threads, "min_patients": 4,
                  "validate_on_shared_data": not args.no_validation}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        config = simulated_site(folder, names, adaptation=adaptation)
        received = time.perf_counter() - t0
        print(f"{len(names)} torso series sent with storescu and analyzed in {received:.0f} s")
        t0 = time.perf_counter()
        run = bpr("adapt", "--config", str(config), "--out", str(folder / "run"),
                  timeout=24 * 3600)
        if run.returncode != 0:
            print(run.stderr[-3000:], file=sys.stderr)
            return 1
        report = json.loads((folder / "run" / "report.json").read_text())
        print(f"adaptation: {args.steps} steps in {time.perf_counter() - t0:.0f} s; "
              f"{report['series_qualified']} of {report['series_offered']} series qualified, "
              f"refused: {report['refused'] or 'none'}")
        print(f"training {report['training']['series']} series of "
              f"{report['training']['patients']} patients; hold-out "
              f"{report['holdout']['series']} series of {report['holdout']['patients']} "
              f"patients\n")
        print("| guard metric | better | active | candidate | difference | SE | worse |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, g in report["guards"].items():
            diff = (g["candidate"] - g["active"] if g["candidate"] is not None
                    and g["active"] is not None else None)
            print(f"| {name} | {'higher' if g['higher_is_better'] else 'lower'} | "
                  f"{_fmt(g['active'])} | {_fmt(g['candidate'])} | {_fmt(diff)} | "
                  f"{_fmt(g['se'])} | {_fmt(g['worse'])} |")
        validation = report["validation"]
        if validation:
            print(f"\nvalidation LMSE: active {_fmt(validation['active_lmse'])} ± "
                  f"{_fmt(validation['active_se'])}, candidate "
                  f"{_fmt(validation['candidate_lmse'])} ± {_fmt(validation['candidate_se'])} "
                  f"(z = {_fmt(validation['z'])}, p = {_fmt(validation['p'])})")
        print(f"\ncandidate {report['candidate_version']} from {report['parent_version']}: "
              f"{'promoted' if report['promoted'] else 'not promoted'} ({report['reason']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
