"""The node's commands of ``bpr``: ``serve`` and ``index``, and what the others share.

``bpr serve`` runs the node until SIGINT/SIGTERM. ``bpr index`` prints what the node holds and
found (table, JSON or CSV) without loading the model or the network libraries: a query answers
in a fraction of a second. ``bpr reprocess`` lives in :mod:`dicom_node.reprocess_cli`, the
adaptation commands in :mod:`dicom_node.adapt_cli`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import select

from dicom_node.config import ConfigError, NodeConfig, load_config
from dicom_node.index import Index, Series, SeriesState, Study

log = logging.getLogger(__name__)



def _load(args: argparse.Namespace) -> NodeConfig:
    return load_node_config(args.config)


def load_node_config(path: Path) -> NodeConfig:
    """Read and validate the node configuration and set the log levels it asks for."""
    if not path.is_file():
        raise ConfigError(f"{path} not found (copy config.yaml from the repository)")
    config = load_config(path)
    logging.getLogger().setLevel(config.logging.level.upper())
    # highdicom logs full SOP Instance UIDs at INFO; our logs keep identifiers out.
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    # apscheduler logs every job added and run: one line per received instance.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return config


def run_serve(args: argparse.Namespace) -> int:
    from dicom_node.server import Node

    node = Node(_load(args), config_path=args.config.resolve(), role=args.role)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    node.start()
    if args.role == "worker":
        print(f"bpr analysis worker {node.membership.id} started", flush=True)
    else:
        print(f"bpr node listening on {node.config.network.host}:{node.port}", flush=True)
    stop.wait()
    node.stop()
    return 0


#: Columns of ``bpr index`` (no patient names: the listing is for pipelines and admins).
INDEX_COLUMNS = ("series_instance_uid", "study_date", "modality", "series_number", "state",
                 "original_body_part", "corrected_body_part", "snomed_code", "sanity_flags",
                 "instances", "model_version", "analysis_seconds", "error")


def index_rows(index: Index, *, term: str | None = None, state: str | None = None,
               since: str | None = None, until: str | None = None,
               derived: bool = False) -> list[dict[str, Any]]:
    """The series of the index as plain rows, filtered like ``bpr index``."""
    query = select(Series, Study).join(Study).order_by(Series.first_received_at)
    if not derived:
        query = query.where(Series.is_derived.is_(False))
    if term:
        query = query.where(Series.corrected_body_part == term.upper())
    if state:
        query = query.where(Series.state == SeriesState(state))
    if since:
        query = query.where(Study.study_date >= since)
    if until:
        query = query.where(Study.study_date <= until)
    with index.session() as session:
        return [{
            "series_instance_uid": s.series_instance_uid, "study_date": st.study_date,
            "modality": s.modality, "series_number": s.series_number, "state": s.state.value,
            "original_body_part": s.original_body_part,
            "corrected_body_part": s.corrected_body_part, "snomed_code": s.corrected_snomed_code,
            "sanity_flags": s.sanity_flags, "instances": s.instances_received,
            "model_version": s.model_version,
            "analysis_seconds": (round(s.analysis_seconds, 2)
                                 if s.analysis_seconds is not None else None),
            "error": s.error,
        } for s, st in session.execute(query)]


def run_index(args: argparse.Namespace) -> int:
    config = _load(args)
    index = Index(config.database.url)
    rows = index_rows(index, term=args.term, state=args.state, since=args.since,
                      until=args.until, derived=args.derived)
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=1, allow_nan=False)
        print()
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    else:
        _print_table(rows)
    return 0


def _print_table(rows: list[dict[str, Any]]) -> None:
    print_table(rows, ("series_instance_uid", "study_date", "modality", "state",
                       "original_body_part", "corrected_body_part", "sanity_flags", "instances"))
    print(f"{len(rows)} series")


def print_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> None:
    """Rows as left-aligned text columns under their names (None prints empty)."""
    cells = [[("" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
