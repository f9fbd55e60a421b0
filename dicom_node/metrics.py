"""Prometheus metrics of one node process (``/metrics`` of :mod:`dicom_node.web`).

Counted in the process, as events happen:

* ``bpr_instances_total{outcome, status}`` — C-STORE requests answered: ``stored``,
  ``duplicate`` (acknowledged, kept once) or ``refused`` with the status sent (hex);
* ``bpr_analysis_seconds`` — histogram of the model call per series.

Read from the index and the disk at each scrape (shared by every process on the index):

* ``bpr_series{state}`` — received series per state (the node's own SR series excluded);
* ``bpr_forward_jobs{state}`` — SR forwarding jobs per state (PENDING is the queue depth,
  FAILED the failures);
* ``bpr_storage_free_bytes`` — free space under ``storage.root``;
* ``bpr_adaptation_runs{promoted}`` — adaptation candidates recorded;
* ``bpr_backfill_jobs{state}`` — ``bpr backfill`` series per state.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from dicom_node.index import (
    BackfillJob,
    BackfillState,
    ForwardJob,
    ForwardState,
    Index,
    ModelVersion,
    Series,
    SeriesState,
)
from dicom_node.statuses import SUCCESS
from dicom_node.storage import FileStore

#: Histogram buckets of one analysis (seconds): from a small series to 1,500 thin slices.
ANALYSIS_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class NodeMetrics:
    """The metrics registry of one node process."""

    def __init__(self, index: Index, store: FileStore) -> None:
        self.registry = CollectorRegistry()
        self._instances = Counter("bpr_instances", "C-STORE requests answered, by outcome "
                                  "and DIMSE status", ["outcome", "status"],
                                  registry=self.registry)
        self._analysis = Histogram("bpr_analysis_seconds", "Seconds of the model call per "
                                   "series", buckets=ANALYSIS_BUCKETS, registry=self.registry)
        self.registry.register(_IndexCollector(index, store))

    def store_answered(self, status: int, duplicate: bool = False) -> None:
        """Count one C-STORE answer."""
        outcome = "refused" if status != SUCCESS else "duplicate" if duplicate else "stored"
        self._instances.labels(outcome, f"0x{status:04X}").inc()

    def analysis_done(self, seconds: float) -> None:
        """Record the duration of one analysis."""
        self._analysis.observe(seconds)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return bytes(generate_latest(self.registry))


class _IndexCollector(Collector):
    def __init__(self, index: Index, store: FileStore) -> None:
        self.index = index
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.index.session() as session:
            series = dict(session.execute(
                select(Series.state, func.count(Series.id))
                .where(Series.is_derived.is_(False)).group_by(Series.state)).all())
            forwards = dict(session.execute(
                select(ForwardJob.state, func.count(ForwardJob.id))
                .group_by(ForwardJob.state)).all())
            runs = dict(session.execute(
                select(ModelVersion.promoted, func.count(ModelVersion.id))
                .where(ModelVersion.parent_version.is_not(None))
                .group_by(ModelVersion.promoted)).all())
            backfill = dict(session.execute(
                select(BackfillJob.state, func.count(BackfillJob.id))
                .group_by(BackfillJob.state)).all())
        yield _by_label("bpr_series", "Received series per state", "state",
                        {s.value: series.get(s, 0) for s in SeriesState})
        yield _by_label("bpr_forward_jobs", "SR forwarding jobs per state (PENDING: queue "
                        "depth)", "state", {s.value: forwards.get(s, 0) for s in ForwardState})
        yield _by_label("bpr_adaptation_runs", "Adaptation candidates recorded", "promoted",
                        {"true": runs.get(True, 0), "false": runs.get(False, 0)})
        yield _by_label("bpr_backfill_jobs", "bpr backfill series per state", "state",
                        {s.value: backfill.get(s, 0) for s in BackfillState})
        free = GaugeMetricFamily("bpr_storage_free_bytes", "Free bytes under storage.root")
        free.add_metric([], float(shutil.disk_usage(self.store.root).free))
        yield free


def _by_label(name: str, documentation: str, label: str,
              values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in values.items():
        family.add_metric([key], float(value))
    return family
