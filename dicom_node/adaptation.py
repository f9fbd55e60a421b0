"""Adaptation of the model to this site's CT: choosing series, running, scheduling.

``bpr adapt --config`` calls :func:`run_adaptation` in its own process: it offers the newest
analyzed CT series (their stored files, with the patient they belong to) to
:func:`model.api.adapt_model`, records the candidate in ``model_versions`` and, when the
guard metrics let it through, installs its weights under the storage root and activates it.
The analysis worker picks the active model up at its next series.

In the node, :class:`AdaptationSchedule` checks on ``adaptation.schedule`` whether enough
series were analyzed since the last run and then starts ``bpr adapt --config`` as a child
process, which lowers its own priority and caps its memory (:func:`limit_this_process`)
before it imports torch: receiving and analysis keep their speed, and a run that grows too
large fails alone.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from datetime import UTC
from pathlib import Path

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from dicom_node.config import NodeConfig
from dicom_node.config_operations import AdaptationConfig
from dicom_node.index import Index, ModelVersion, Series, SeriesState, Study
from dicom_node.model_versions import (
    MODELS_FOLDER,
    activate,
    active_weights,
    analyses_since_last_run,
    install_weights,
    record_base,
)
from dicom_node.storage import FileStore
from model.api import AdaptReport, AdaptSeries, AdaptSettings, adapt_model

log = logging.getLogger(__name__)

#: Folder of the run folders and logs, under ``storage.root``.
RUNS_FOLDER = f"{MODELS_FOLDER}/runs"


def limit_this_process(config: AdaptationConfig) -> str:
    """Lower this process's priority to ``config.nice`` and cap its address space.

    Returns
    -------
    str
        What was applied, for the run's log.
    """
    current = os.nice(0)
    if config.nice > current:
        os.nice(config.nice - current)
    if config.memory_limit_mb:
        cap = config.memory_limit_mb * 1024 * 1024
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY
                                                else min(cap, hard), hard))
    return (f"niceness {os.nice(0)}, address space cap "
            f"{config.memory_limit_mb or 'none'} MiB")


def adaptation_series(index: Index, store: FileStore, limit: int) -> list[AdaptSeries]:
    """The newest analyzed CT series with a corrected term, at most ``limit``.

    The model re-checks each one (its analysis must trust it); here only series the node
    analyzed successfully are offered. The patient is the PatientID, or the study when the
    sender sent none.
    """
    query = (select(Series).join(Study)
             .where(Series.state == SeriesState.DONE, Series.is_derived.is_(False),
                    Series.modality == "CT", Series.corrected_body_part.is_not(None))
             .options(selectinload(Series.instances), selectinload(Series.study))
             .order_by(Series.analyzed_at.desc()).limit(limit))
    with index.session() as session:
        return [AdaptSeries(key=s.series_instance_uid,
                            patient=s.study.patient_id or f"study:{s.study.study_instance_uid}",
                            paths=tuple(store.absolute(i.path) for i in s.instances))
                for s in session.scalars(query)]


def run_adaptation(index: Index, store: FileStore, config: NodeConfig, *,
                   out_dir: Path | None = None, steps: int | None = None,
                   threads: int | None = None) -> AdaptReport:
    """One run on the node's series; records the candidate and activates it if promoted.

    Raises
    ------
    model.api.AdaptError
        When too few patients have a qualifying series (nothing is recorded).
    """
    settings = config.adaptation
    parent, base_weights = active_weights(index, store, config, record_base(index, config))
    series = adaptation_series(index, store, settings.max_series)
    run_dir = out_dir or store.root / RUNS_FOLDER / dt.datetime.now(UTC).strftime(
        "%Y%m%dT%H%M%SZ")
    report = adapt_model(series, run_dir, base_weights=base_weights, settings=AdaptSettings(
        steps=steps or settings.steps, threads=threads or settings.threads,
        holdout_fraction=settings.holdout_fraction, min_patients=settings.min_patients,
        max_series=settings.max_series,
        validate_on_shared_data=settings.validate_on_shared_data))
    installed = install_weights(store, report.weights, report.version) if report.promoted else None
    guards = {k: report.document[k] for k in ("guards", "validation", "holdout", "refused")}
    with index.session() as session:
        session.add(ModelVersion(
            version=report.version, parent_version=parent, created_at=time.time(),
            weights_path=installed, n_series=report.n_series, n_patients=report.n_patients,
            guard_json=json.dumps(guards, allow_nan=False), promoted=report.promoted,
            reason=report.reason, active=False))
        session.flush()
        if report.promoted:
            activate(session, report.version)
    log.info("adaptation: candidate %s %s", report.version,
             "activated" if report.promoted else "kept out")
    return report


class AdaptationSchedule:
    """Starts ``bpr adapt --config`` on the schedule when enough new series were analyzed.

    Parameters
    ----------
    index, store, config
    config_path : Path
        The configuration file the child process reads.
    """

    def __init__(self, index: Index, store: FileStore, config: NodeConfig,
                 config_path: Path) -> None:
        self.index = index
        self.store = store
        self.config = config
        self.config_path = config_path
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = False

    def start(self, scheduler: BaseScheduler) -> None:
        """Add the check to ``scheduler`` (nothing when adaptation is off)."""
        if not self.config.adaptation.enabled:
            return
        scheduler.add_job(self.run_if_due,
                          CronTrigger.from_crontab(self.config.adaptation.schedule, timezone=UTC),
                          id="bpr-adaptation", max_instances=1, coalesce=True)
        log.info("adaptation scheduled: %s (UTC)", self.config.adaptation.schedule)

    def run_if_due(self) -> int | None:
        """Run one adaptation in a child process if due; its exit status (None: not due)."""
        with self.index.session() as session:
            new = analyses_since_last_run(session)
        if new < self.config.adaptation.min_new_series:
            log.info("adaptation not due: %d of %d new series", new,
                     self.config.adaptation.min_new_series)
            return None
        logs = self.store.root / RUNS_FOLDER
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"adapt-{dt.datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.log"
        log.info("adaptation: %d new series, starting a run (log %s)", new, log_path.name)
        with log_path.open("ab") as out:
            with self._lock:
                if self._stopping:
                    return None
                process = subprocess.Popen(
                    [sys.executable, "-m", "bpr", "adapt", "--config", str(self.config_path)],
                    stdout=out, stderr=subprocess.STDOUT)
                self._process = process
            returncode = process.wait()
        with self._lock:
            self._process = None
        log.info("adaptation run ended with status %d", returncode)
        return returncode

    def stop(self) -> None:
        """End a run in progress (SIGTERM): a stopped run records nothing and loses nothing,
        and the node's shutdown does not wait an hour for it."""
        with self._lock:
            self._stopping = True
            if self._process is not None and self._process.poll() is None:
                log.info("stopping the adaptation run")
                self._process.terminate()
