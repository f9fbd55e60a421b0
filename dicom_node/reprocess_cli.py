"""``bpr reprocess``: analyze series again, in this process, whether or not the node runs.

The index claims each series, so a series is never analyzed twice at once; ``--since`` picks
the series an older model version analyzed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from datetime import UTC

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from dicom_node.analysis_worker import AnalysisWorker
from dicom_node.cli import load_node_config
from dicom_node.cluster import Membership
from dicom_node.config import ConfigError, NodeConfig
from dicom_node.index import Index, Series, SeriesState
from dicom_node.model_versions import active_row, record_base
from dicom_node.series_state import claim, reprocess_requested
from dicom_node.storage import FileStore


def run_reprocess(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    index = Index(config.database.url)
    store = FileStore(config.storage.root, config.storage.min_free_bytes)
    record_base(index, config)
    membership = Membership(index, "reprocess")
    membership.join()
    try:
        return _reprocess_as(membership, args, config, index, store)
    finally:
        membership.leave()


def _reprocess_as(membership: Membership, args: argparse.Namespace, config: NodeConfig,
                  index: Index, store: FileStore) -> int:
    with index.session() as session:
        query = select(Series.id, Series.series_instance_uid).where(
            Series.is_derived.is_(False), Series.state != SeriesState.PROCESSING)
        if args.failed:
            query = query.where(Series.state == SeriesState.FAILED)
        elif args.series:
            query = query.where(Series.series_instance_uid.in_(args.series))
        elif args.since:
            query = query.where(*_outdated(session, args.since))
        else:
            print("name series or pass --failed or --since", file=sys.stderr)
            return 2
        # queued and claimed in one transaction: a node's sweep never sees them QUEUED
        targets = [(pk, uid) for pk, uid in session.execute(query)
                   if reprocess_requested(session, pk) and claim(session, pk, membership.id)]
    missing = set(args.series) - {uid for _pk, uid in targets}
    for uid in sorted(missing):
        print(f"not found (or being analyzed): {uid}", file=sys.stderr)
    worker = AnalysisWorker(index, store, config, owner=membership.id)
    failures = 0
    try:
        for pk, uid in targets:
            final = worker.run(pk, claimed=True)
            print(f"{uid}: {final.value if final else 'skipped'}")
            failures += final is not SeriesState.DONE
    finally:
        worker.shutdown()
    return 1 if failures or missing else 0


def _outdated(session: Session, since: str) -> list[ColumnElement[bool]]:
    """Conditions: analyzed by another version than the active one, received since ``since``."""
    try:
        start = dt.datetime.strptime(since, "%Y%m%d").replace(tzinfo=UTC).timestamp()
    except ValueError as exc:
        raise ConfigError(f"--since {since!r}: expected YYYYMMDD") from exc
    active = active_row(session)
    version = active.version if active else ""
    return [Series.first_received_at >= start,
            Series.state.in_((SeriesState.DONE, SeriesState.FAILED)),
            or_(Series.model_version.is_(None), Series.model_version != version)]
