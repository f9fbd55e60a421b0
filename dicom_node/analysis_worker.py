"""Analysis off the receive threads: a bounded pool that analyzes QUEUED series.

Per series: QUEUED → PROCESSING → DONE or FAILED. The worker reads the stored files, makes the
model's single call (:func:`model.api.analyze_series`), records the corrected BodyPartExamined,
regions, sanity flags, model version and timings, then writes the SR, stores and indexes it
like a received instance and queues its forwarding. A series is never analyzed by two workers
at once; instances that arrive during an analysis make it RECEIVING again afterwards, so one
re-analysis follows.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pydicom import dcmwrite

from dicom_node.config import NodeConfig
from dicom_node.forwarding import enqueue_forwards
from dicom_node.headers import read_header
from dicom_node.index import Index, Region, Series, SeriesState
from dicom_node.ingest import ingest
from dicom_node.metrics import NodeMetrics
from dicom_node.model_versions import active_weights, record_base
from dicom_node.series_state import analysis_finished, claim
from dicom_node.sr import build_sr
from dicom_node.storage import FileStore
from model.api import DECODE_ERRORS, CTInputError, Model, SeriesAnalysis, analyze_series, load_model

log = logging.getLogger(__name__)

#: Errors of one analysis that fail that series and leave the worker running.
ANALYSIS_ERRORS: tuple[type[Exception], ...] = (
    CTInputError, *DECODE_ERRORS, MemoryError, ArithmeticError,
)


class AnalysisWorker:
    """The pool of analysis threads.

    Parameters
    ----------
    index, store, config
    on_finished : callable
        Called with the series primary key, its new state and the SR instance primary key
        (None when no SR was written) after each analysis; the node uses it to forward, and
        to reschedule series that received instances meanwhile (state RECEIVING).
    metrics : NodeMetrics, optional
        Records the duration of every analysis.
    owner : str, optional
        The id of this process (:class:`dicom_node.cluster.Membership`), recorded with each
        claim so that other processes take over only the series of a process that is gone.
    model : Model, optional
        A loaded model (:func:`model.api.load_model`) used for every analysis; default: the
        active model of the index (:mod:`dicom_node.model_versions`), loaded on the first
        analysis and again whenever another version becomes active.
    """

    def __init__(self, index: Index, store: FileStore, config: NodeConfig,
                 on_finished: Callable[[int, SeriesState, int | None], None] | None = None,
                 model: Model | None = None, owner: str | None = None,
                 metrics: NodeMetrics | None = None) -> None:
        self.index = index
        self.owner = owner
        self.metrics = metrics
        self.store = store
        self.config = config
        self.on_finished = on_finished
        self._pool = ThreadPoolExecutor(max_workers=config.series.workers,
                                        thread_name_prefix="bpr-analysis")
        self._active: set[int] = set()
        self._lock = threading.Lock()
        self._model = model
        self._pinned = model is not None
        self._model_version: str | None = None
        self._base_version: str | None = None
        self._model_lock = threading.Lock()

    def model(self) -> Model:
        """The active model, shared by the worker threads; reloaded when the index names
        another active version (an adaptation run or ``bpr models`` changed it)."""
        with self._model_lock:
            if self._pinned and self._model is not None:
                return self._model
            if self._base_version is None:  # once: it reads the weights' JSON
                self._base_version = record_base(self.index, self.config)
            version, weights = active_weights(self.index, self.store, self.config,
                                              self._base_version)
            if self._model is None or version != self._model_version:
                log.info("loading model %s", version)
                self._model = load_model(weights, threads=self.config.series.torch_threads)
                self._model_version = version
            return self._model

    def busy(self, series_pk: int) -> bool:
        """Whether the pool holds the series (queued in the pool or being analyzed)."""
        with self._lock:
            return series_pk in self._active

    def submit(self, series_pk: int) -> None:
        """Analyze the series soon (ignored while a worker already has it)."""
        with self._lock:
            if series_pk in self._active:
                return
            self._active.add(series_pk)
        self._pool.submit(self._run_guarded, series_pk)

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking work; with ``wait`` finish the analyses under way."""
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def _run_guarded(self, series_pk: int) -> None:
        try:
            self.run(series_pk)
        except Exception as exc:
            # The pool's boundary: whatever the model or a hostile file raises, the series
            # must end FAILED, not stay PROCESSING forever.
            log.exception("series %d: unexpected error", series_pk)
            self._fail(series_pk, exc)
        finally:
            with self._lock:
                self._active.discard(series_pk)

    def run(self, series_pk: int, *, claimed: bool = False) -> SeriesState | None:
        """Analyze one QUEUED series now, in this thread; returns its final state (None when
        another worker has it). ``claimed``: this process already holds it PROCESSING."""
        with self.index.session() as session:
            # A conditional UPDATE claims the series: two workers (or a worker and
            # `bpr reprocess` in another process) can never both analyze it.
            if not claimed and not claim(session, series_pk, self.owner):
                return None
            series = session.get_one(Series, series_pk)
            series.wait_seconds = max(0.0, time.time() - series.last_received_at
                                      - self.config.series.quiet_seconds)
            paths = [self.store.absolute(i.path) for i in series.instances]
        log.info("series %d: analyzing %d instances", series_pk, len(paths))
        t0 = time.perf_counter()
        try:
            analysis = analyze_series(paths, self.model())
        except ANALYSIS_ERRORS as exc:
            return self._fail(series_pk, exc)
        analysis_seconds = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.analysis_done(analysis_seconds)
        t1 = time.perf_counter()
        sr_pk: int | None = None
        if self.config.sr.enabled:
            try:
                sr_pk = self._write_sr(series_pk, analysis)
            except ANALYSIS_ERRORS as exc:
                return self._fail(series_pk, exc, stage="SR")
        state = self._record(series_pk, analysis, analysis_seconds, time.perf_counter() - t1)
        log.info("series %d: %s in %.1f s", series_pk, state.value, analysis_seconds)
        if self.on_finished is not None:
            self.on_finished(series_pk, state, sr_pk)
        return state

    def _write_sr(self, series_pk: int, analysis: SeriesAnalysis) -> int:
        sr = build_sr(analysis, self.config.sr)
        buffer = io.BytesIO()
        dcmwrite(buffer, sr, enforce_file_format=True)
        data = buffer.getvalue()
        stored = ingest(self.index, self.store, data, read_header(data), source_ae="",
                        analyzed_modalities=self.config.series.analyzed_modalities,
                        derived_from=series_pk)
        with self.index.session() as session:
            enqueue_forwards(session, stored.instance_pk, self.config, time.time())
        return stored.instance_pk

    def _record(self, series_pk: int, analysis: SeriesAnalysis, analysis_seconds: float,
                sr_seconds: float) -> SeriesState:
        main = analysis.main_volume
        with self.index.session() as session:
            series = session.get_one(Series, series_pk)
            series.corrected_body_part = main.body_part_examined
            code = main.body_part_code
            series.corrected_snomed_code = code.value if code else None
            series.corrected_snomed_meaning = code.meaning if code else None
            series.sanity_flags = ",".join(main.anomalies)
            series.model_version = main.model_version
            series.analyzed_at = time.time()
            series.analysis_seconds = analysis_seconds
            series.sr_seconds = sr_seconds if self.config.sr.enabled else None
            document = dict(main.document)
            document["read_errors"] = list(analysis.read_errors)
            document["other_volumes"] = len(analysis.volumes) - 1
            series.result_json = json.dumps(document, allow_nan=False)
            series.error = None
            series.regions = [
                Region(name=r.name, first_slice=r.slice_indices[0],
                       last_slice=r.slice_indices[-1], z_min_mm=r.z_min_mm, z_max_mm=r.z_max_mm)
                for r in main.regions]
            series.analysis_count += 1
            return analysis_finished(series, succeeded=True)

    def _fail(self, series_pk: int, exc: BaseException, stage: str = "analysis"
              ) -> SeriesState:
        message = f"{stage} failed: {type(exc).__name__}: {exc}"[:2000]
        log.warning("series %d: %s", series_pk, message)
        with self.index.session() as session:
            series = session.get_one(Series, series_pk)
            series.error = message
            finished = analysis_finished(series, succeeded=False)
        if self.on_finished is not None:
            self.on_finished(series_pk, finished, None)
        return finished

