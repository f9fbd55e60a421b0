"""Robustness report: load held, faults survived, inputs tried, instances lost.

Run: ``python -m benchmarks.robustness_report [--soak]``

Runs the load, fault, attack and fuzz tests (``tests/integration/test_node_load.py``,
``tests/integration/test_node_crash.py``, ``tests/integration/test_db_outage.py`` (the index
database stopped while a sender stores: stores refused, lost, time to recover),
``tests/node/test_security.py``, ``tests/fuzz/``)
and gathers the figures they report (``report(section, line)``, printed in the "figures"
section of pytest's terminal summary) into one report. ``--soak`` sets ``BPR_SOAK=1``: more
senders, series, kill cycles and fuzz examples (tens of minutes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.figures import parse_summary

TESTS = ["tests/integration/test_node_load.py", "tests/integration/test_node_crash.py",
         "tests/integration/test_db_outage.py", "tests/node/test_security.py", "tests/fuzz"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--soak", action="store_true", help="the long form (BPR_SOAK=1)")
    args = parser.parse_args(argv)
    env = dict(os.environ, BPR_SOAK="1" if args.soak else "0")
    tests = [t for t in TESTS if Path(t).exists()]
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *tests], capture_output=True, text=True, env=env, check=False)
    minutes = (time.perf_counter() - t0) / 60
    figures = parse_summary(run.stdout)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-500:]
    print(f"robustness report ({'soak' if args.soak else 'CI'} form, {minutes:.1f} min)")
    for line in figures:
        print(f"  {line}")
    print(f"tests: {summary}")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
