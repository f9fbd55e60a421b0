"""``bpr backfill``: fetch a peer's archive for the node to analyze (:mod:`dicom_node.backfill`).

``bpr backfill --peer AE [--since YYYYMMDD] [--until YYYYMMDD] [--modality CT] [--rate N]
[--concurrency N] [--max-series N]`` discovers and fetches; a progress bar with an ETA is shown
in a terminal. ``bpr backfill --status`` reports every peer's jobs, how many fetched series the
node has analyzed, and why series failed. Exit status 1 when a series ended FAILED.
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from dicom_node.backfill import (
    Backfill,
    BackfillError,
    BackfillRequest,
    job_counts,
    status_report,
)
from dicom_node.cli import load_node_config
from dicom_node.config import NodeConfig
from dicom_node.index import BackfillState, Index
from dicom_node.storage import FileStore

#: States a job leaves the run in.
_FINAL = (BackfillState.FETCHED, BackfillState.SKIPPED, BackfillState.FAILED)


def run_backfill(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    index = Index(config.database.url)
    try:
        if args.status:
            _print_status(index, args.format)
            return 0
        if not args.peer:
            print("bpr backfill: name a --peer (or ask for --status)", file=sys.stderr)
            return 2
        for name in ("since", "until"):
            value = getattr(args, name)
            if value is not None and not (len(value) == 8 and value.isdigit()):
                print(f"bpr backfill: --{name} {value!r}: expected YYYYMMDD", file=sys.stderr)
                return 2
        request = BackfillRequest(peer=args.peer, since=args.since, until=args.until,
                                  modality=args.modality.upper(), rate=args.rate,
                                  concurrency=args.concurrency, max_series=args.max_series)
        store = FileStore(config.storage.root, config.storage.min_free_bytes)
        return _run(index, store, config, request)
    finally:
        index.close()


def _run(index: Index, store: FileStore, config: NodeConfig, request: BackfillRequest) -> int:
    bar = tqdm(unit="series", disable=not sys.stderr.isatty(), desc=f"backfill {request.peer}")

    def progress(state: BackfillState) -> None:
        if state in _FINAL:
            bar.update(1)

    backfill = Backfill(index, store, config, request, on_progress=progress)
    try:
        added = backfill.discover()
    except BackfillError as exc:
        print(f"bpr backfill: {exc}", file=sys.stderr)
        return 2
    counts = job_counts(index, request.peer)
    bar.total = counts[BackfillState.PENDING.value] + counts[BackfillState.FETCHING.value]
    bar.refresh()
    print(f"{added} new series found on {request.peer}; {bar.total} to fetch", flush=True)
    final = backfill.run()
    bar.close()
    print("  ".join(f"{state.lower()} {n}" for state, n in final.items()))
    return 1 if final[BackfillState.FAILED.value] else 0


def _print_status(index: Index, fmt: str) -> None:
    rows = status_report(index)
    if fmt == "json":
        json.dump(rows, sys.stdout, indent=1, allow_nan=False)
        print()
        return
    for row in rows:
        states = "  ".join(f"{s.value.lower()} {row[s.value]}" for s in BackfillState)
        print(f"{row['peer']}: {states}  analyzed {row['analyzed']}")
        for failure in row["failed_series"]:  # type: ignore[attr-defined]
            print(f"  FAILED {failure['series_instance_uid']}: {failure['error']}")
    if not rows:
        print("no backfill jobs")
