"""Start-up recovery: make the storage and the index consistent, then resume the series.

:class:`dicom_node.server.Node` runs both before it listens, storage first:

- :func:`recover_storage` removes the ``.part`` leftovers of writes a crash interrupted and
  indexes complete files that never got their index row. Only day folders changed since the
  last complete scan are visited; the scan's start time is kept in the storage root
  (:data:`dicom_node.storage.WATERMARK_NAME`, the ``.recovery-scan`` watermark), so a start-up
  after a clean run lists folders, not files.
- :func:`recover_series` recomputes from the index what the previous process left to do:
  RECEIVING series get their quiet-time check again, QUEUED series and those a crash left
  PROCESSING are queued for analysis (:func:`dicom_node.cluster.take_over_abandoned`: only
  series of processes that are gone, never of a live process sharing the index).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sqlalchemy import select

from dicom_node.cluster import take_over_abandoned
from dicom_node.config import NodeConfig
from dicom_node.headers import BadInstanceError, read_header
from dicom_node.index import Index, Instance, Series, SeriesState
from dicom_node.ingest import ingest
from dicom_node.series_tracking import SeriesTracker
from dicom_node.storage import FileStore

log = logging.getLogger(__name__)


def recover_storage(index: Index, store: FileStore, config: NodeConfig) -> dict[str, int]:
    """Remove crash leftovers and index complete files that lost their index row.

    A complete file without an index row was never acknowledged (the row is written
    before the success status), but it is valid data, so it is kept rather than lost.
    Only day folders changed since the last complete scan are visited
    (:meth:`FileStore.changed_day_folders`): a crash can leave nothing elsewhere.

    Returns
    -------
    dict of str to int
        ``folders_scanned``, ``partials_removed``, ``orphans_indexed``, ``orphans_unreadable``
        and ``orphans_kept`` (unreadable for now, e.g. EIO: retried at the next start, so the
        watermark is not advanced).
    """
    started = time.time()
    counts = {"folders_scanned": 0, "partials_removed": 0, "orphans_indexed": 0,
              "orphans_unreadable": 0, "orphans_kept": 0}
    for folder in store.changed_day_folders(store.read_watermark()):
        removed, files = store.scan_folder(folder)
        counts["folders_scanned"] += 1
        counts["partials_removed"] += removed
        known = _indexed_paths(index, store, folder)
        for relative in files:
            if relative not in known:
                counts[_index_orphan(index, store, config, relative)] += 1
    if counts["orphans_kept"] == 0:  # else retry them at the next start
        store.write_watermark(started)
    if any(v for k, v in counts.items() if k != "folders_scanned"):
        log.warning("storage recovery: %s", counts)
    return counts


def recover_series(index: Index, tracker: SeriesTracker) -> dict[str, int]:
    """Reschedule RECEIVING series, requeue interrupted ones, submit the QUEUED (last).

    Interrupted are the series PROCESSING by a process that is gone
    (:func:`dicom_node.cluster.take_over_abandoned`): this process's previous incarnation
    after a crash, never a live process sharing the index.

    Returns
    -------
    dict of str to int
        Series found ``receiving``, ``queued`` and ``interrupted``.
    """
    interrupted = take_over_abandoned(index)
    counts = {"receiving": 0, "queued": 0, "interrupted": len(interrupted)}
    queued: list[int] = []
    with index.session() as session:
        rows = session.scalars(select(Series).where(
            Series.state.in_([SeriesState.RECEIVING, SeriesState.QUEUED])))
        for series in rows:
            if series.state is SeriesState.RECEIVING:
                counts["receiving"] += 1
                tracker.schedule(series.id, series.last_received_at)
            else:
                queued.append(series.id)
    counts["queued"] = len(queued) - len(interrupted)
    # Submitted after the commit: a worker must find them QUEUED.
    for pk in queued:
        tracker.submit(pk)
    return counts


def _indexed_paths(index: Index, store: FileStore, folder: Path) -> set[str]:
    prefix = folder.relative_to(store.root).as_posix() + "/"
    # a range on the unique path index ("0" follows "/"), fast on SQLite and PostgreSQL
    with index.session() as session:
        return set(session.scalars(select(Instance.path).where(
            Instance.path >= prefix, Instance.path < prefix[:-1] + "0")))


def _index_orphan(index: Index, store: FileStore, config: NodeConfig, relative: str) -> str:
    path = store.absolute(relative)
    try:
        data = path.read_bytes()
        # Indexed where it lies: no second copy, so this works on a full disk too.
        result = ingest(index, store, data, read_header(data), source_ae="",
                        analyzed_modalities=config.series.analyzed_modalities,
                        stored_at=relative)
    except BadInstanceError:
        return "orphans_unreadable"
    except OSError:  # e.g. EIO reading it: keep it for the next start
        return "orphans_kept"
    if result.duplicate:  # the instance is indexed under another file
        path.unlink()
    return "orphans_indexed"
