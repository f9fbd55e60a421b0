"""The properties the fuzz tests check, one input at a time, and the guards they run under.

- **dataset → index** (:func:`check_dataset_to_index`: :func:`dicom_node.headers.read_header`
  + :func:`~dicom_node.ingest.ingest` into a fresh :class:`~dicom_node.storage.FileStore`):
  either ``BadInstanceError`` with a failure status and nothing written, or exactly one file, at
  a server-generated ``YYYY/MM/DD/<32 hex>.dcm`` path strictly under the storage root, holding
  the bytes received, with the index row that points at it (a series that is not CT is marked
  SKIPPED with its reason). No other exception escapes, and no file ever appears anywhere else
  in the sandbox the test runs in (the working directory included).
- **series → volume** (:func:`check_series_read`: :func:`model.reading.dicom.read_dicom_series`):
  never raises; bad files and rejected series come back as error messages, volumes keep their
  invariants.
- **series → analysis** (:func:`check_series_analysis`: :func:`model.api.analyze_series` with the
  shipped model): returns, or raises ``CTInputError``; nothing else.
- **worker** (:func:`check_worker`): a series made of what ingest accepted, queued and run
  through the node's :class:`~dicom_node.analysis_worker.AnalysisWorker` (SR writing included),
  ends DONE or FAILED with a reason — never left PROCESSING by an escaped exception.

Every input must also finish within :data:`EXAMPLE_SECONDS` (:func:`time_limit`: a hang is a
denial of service), and the fuzz modules run with their address space capped at
:data:`ADDRESS_SPACE_HEADROOM` above their start (the ``bounded_memory`` fixture): a header
that makes the code reserve gigabytes fails as the MemoryError it would be on a host without
overcommit, instead of going unnoticed (or swapping).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import numpy as np
from sqlalchemy import select

from dicom_node.analysis_worker import AnalysisWorker
from dicom_node.headers import BadInstanceError, is_valid_uid, read_header
from dicom_node.index import Index, Instance, Series, SeriesState
from dicom_node.ingest import ingest
from dicom_node.storage import FileStore
from model.api import CTInputError, analyze_series
from model.reading.dicom import DicomReadResult, read_dicom_series
from model.scoring.inference import BodyPartRegressor

#: One input taking longer than this is a denial of service, reported as a failure.
EXAMPLE_SECONDS = 10.0
#: Address space the process may grow by while fuzzing: turns a header that claims a
#: terabyte image into a prompt MemoryError instead of swapping the shared machine to death.
ADDRESS_SPACE_HEADROOM = 4 << 30

SERVER_NAME = re.compile(r"^\d{4}/\d{2}/\d{2}/[0-9a-f]{32}\.dcm$")
ANALYZED = ("CT",)


class ExampleTimeoutError(BaseException):
    """One input ran longer than :data:`EXAMPLE_SECONDS` (BaseException: nothing swallows it)."""


@contextmanager
def time_limit(what: object, seconds: float = EXAMPLE_SECONDS) -> Iterator[None]:
    """Fail (instead of hanging CI) when the block takes longer than ``seconds``."""

    def expire(_signum: int, _frame: FrameType | None) -> None:
        # from None: what was running may hold a gigantic half-built message; pytest would
        # try to print it as this error's context.
        raise ExampleTimeoutError(f"input took more than {seconds:g} s: {what!r}"[:4000]) from None

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def address_space() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Sandbox:
    """The folder tree the fuzzing runs in; the working directory is its ``work`` folder.

    Storage roots live deep inside ``work`` so that a path built from ``..`` UIDs would
    still land inside ``work``, where the per-input check sees it.
    """

    base: Path
    work: Path
    inputs: Path

    def storage_root(self) -> Path:
        return self.work / "node" / "a" / "b" / "storage"

    def reset(self) -> None:
        for child in self.work.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def files(self) -> list[Path]:
        """Every non-directory entry below ``work`` (links and specials included)."""
        found: list[Path] = []
        for folder, dirs, names in os.walk(self.work):
            found.extend(Path(folder) / name for name in names)
            found.extend(Path(folder) / d for d in dirs if (Path(folder) / d).is_symlink())
        return sorted(found)


def check_dataset_to_index(data: bytes, index: Index, sandbox: Sandbox, what: object) -> str:
    """One input through read_header + ingest; asserts the property and returns the outcome."""
    sandbox.reset()
    root = sandbox.storage_root()
    store = FileStore(root)
    try:
        with time_limit(what):
            header = read_header(data)
            result = ingest(index, store, data, header, source_ae="FUZZSCU",
                            analyzed_modalities=ANALYZED)
    except BadInstanceError as exc:
        assert exc.status == 0xA900 or 0xC000 <= exc.status <= 0xCFFF, hex(exc.status)
        assert sandbox.files() == [], "a rejected instance left files behind"
        return f"rejected 0x{exc.status:04X}"
    files = sandbox.files()
    if result.duplicate:
        assert files == [], "a duplicate was written again"
        return "duplicate"
    assert len(files) == 1, f"expected one stored file, found {files}"
    stored = files[0]
    assert stored.is_file() and not stored.is_symlink()
    assert stored.resolve().is_relative_to(root) and stored.resolve() != root
    relative = stored.relative_to(root).as_posix()
    assert SERVER_NAME.match(relative), relative
    assert stored.read_bytes() == data
    with index.session() as session:
        row = session.get_one(Instance, result.instance_pk)
        assert row.path == relative and row.size_bytes == len(data)
        assert row.series_pk == result.series_pk
        assert is_valid_uid(row.sop_instance_uid) and is_valid_uid(row.sop_class_uid)
        assert session.scalars(select(Instance).where(Instance.path == relative)).one() is row
        series = session.get_one(Series, result.series_pk)
        if series.modality not in ANALYZED:
            # Stored but marked: not analyzed, and the index says why.
            assert series.state is SeriesState.SKIPPED and series.error, series.state
        else:
            assert series.state is SeriesState.RECEIVING
    return "stored"


def write_inputs(folder: Path, blobs: Sequence[bytes]) -> list[Path]:
    """Write the files of one series input (the folder is emptied first)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    paths = []
    for i, blob in enumerate(blobs):
        path = folder / f"IM{i:04d}.dcm"
        path.write_bytes(blob)
        paths.append(path)
    return paths


def check_series_read(paths: Sequence[Path], sandbox: Sandbox, what: object) -> str:
    """read_dicom_series never raises; what it returns is well formed."""
    sandbox.reset()
    with time_limit(what):
        result = read_dicom_series(paths)
    assert isinstance(result, DicomReadResult)
    for volume in result.volumes:
        assert volume.hu.ndim == 3 and volume.n_slices >= 1
        assert volume.hu.shape[0] == len(volume.z_mm) == len(volume.sop_instance_uids)
        assert np.all(np.diff(volume.z_mm) > 0)
    # No volume and no error is allowed: files claiming the DICOMDIR class are skipped quietly.
    assert all(isinstance(e, str) and e for e in result.errors)
    assert sandbox.files() == [], "reading wrote files"
    return f"{len(result.volumes)} volume(s)" if result.volumes else "no volume"


def check_series_analysis(paths: Sequence[Path], regressor: BodyPartRegressor,
                          sandbox: Sandbox, what: object) -> str:
    """analyze_series returns or raises CTInputError; nothing else."""
    sandbox.reset()
    try:
        with time_limit(what):
            analysis = analyze_series(paths, regressor)
    except CTInputError:
        return "CTInputError"
    assert analysis.volumes
    assert all(len(v.slice_sop_instance_uids) == v.n_slices for v in analysis.volumes)
    assert sandbox.files() == [], "analysis wrote files"
    return "analyzed"


def check_worker(blobs: Sequence[bytes], index: Index, worker: AnalysisWorker,
                 sandbox: Sandbox, what: object) -> str:
    """Store what ingest accepts, queue the series, run the worker: it ends DONE or FAILED."""
    sandbox.reset()
    store = FileStore(sandbox.storage_root())
    series_pks = set()
    for blob in blobs:
        try:
            result = ingest(index, store, blob, read_header(blob), source_ae="FUZZSCU",
                            analyzed_modalities=ANALYZED)
        except BadInstanceError:
            continue
        series_pks.add(result.series_pk)
    if not series_pks:
        return "nothing stored"
    outcome = []
    for series_pk in sorted(series_pks):
        with index.session() as session:
            series = session.get_one(Series, series_pk)
            if series.state is not SeriesState.RECEIVING:
                continue  # not CT: marked SKIPPED at ingest
            series.state = SeriesState.QUEUED
        with time_limit(what):
            state = worker.run(series_pk)
        with index.session() as session:
            series = session.get_one(Series, series_pk)
            assert series.state is state, (series.state, state)
            assert state in (SeriesState.DONE, SeriesState.FAILED), state
            assert state is SeriesState.DONE or series.error
        outcome.append(state.value)
    files = sandbox.files()
    root = sandbox.storage_root()
    assert all(SERVER_NAME.match(f.relative_to(root).as_posix()) for f in files), files
    return ",".join(outcome) or "skipped"


def outcome_lines(outcomes: Counter[str]) -> list[str]:
    """What each property did with its inputs: a total per property, then per outcome."""
    per_property: Counter[str] = Counter()
    for key, n in outcomes.items():
        per_property[key.split(":")[0]] += n
    lines = [f"{prop}: {n}" for prop, n in sorted(per_property.items())]
    return lines + [f"  {key}: {n}" for key, n in sorted(outcomes.items())]
