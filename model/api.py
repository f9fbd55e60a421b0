"""The one door between the DICOM node and the model.

The node imports nothing else from :mod:`model`, and needs no torch of its own:

* :func:`load_model` loads the weights once; :func:`analyze_series` reads the files of one
  received series and returns a :class:`SeriesAnalysis`: per CT volume a
  :class:`VolumeRecord` (the BodyPartExamined term and its SNOMED CT code, the regions with
  their codes and slices, every sanity flag as yes/no/undetermined with its report concept,
  the model version, the JSON document, and the SOP Instance UID of each slice), and the
  header of every file read, so that the node's report needs no second read of the files;
* :data:`READ_ERRORS`, :data:`DECODE_ERRORS`, :func:`disguised_sequence`,
  :func:`unclosed_items`, :func:`parse_header` and :func:`header_from_prefix` (with
  :data:`HEADER_PREFIX_BYTES`) are the rules for hostile files, which the node's ingest
  shares with the model's reader;
* :func:`private_coding_scheme` names the coding scheme of the model's own concepts, which
  the node's report declares;
* :func:`adapt_model` fine-tunes the model on stored series (:class:`AdaptSeries`) and
  judges the candidate (:mod:`model.adaptation`); the node runs it in a separate process.

Importing this module loads the reading, scoring and interpretation wings only, never the
training or evaluation code (:func:`adapt_model` imports them when called).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydicom.dataset import Dataset

from model.adaptation.records import AdaptError, AdaptReport, AdaptSeries, AdaptSettings
from model.interpretation.analysis import AnalysisSettings, analyze_plan
from model.interpretation.records import (
    Coded,
    FlagRecord,
    FlagState,
    RegionRecord,
    VolumeRecord,
    private_coding_scheme,
    volume_record,
)
from model.reading.dicom import scan_dicom_series
from model.reading.hostile import (
    DECODE_ERRORS,
    HEADER_PREFIX_BYTES,
    READ_ERRORS,
    disguised_sequence,
    header_from_prefix,
    parse_header,
    unclosed_items,
)
from model.reading.volume import CTInputError
from model.scoring.inference import BodyPartRegressor, ModelMeta

__all__ = [
    "DECODE_ERRORS",
    "HEADER_PREFIX_BYTES",
    "READ_ERRORS",
    "AdaptError",
    "AdaptReport",
    "AdaptSeries",
    "AdaptSettings",
    "CTInputError",
    "Coded",
    "FlagRecord",
    "FlagState",
    "Model",
    "RegionRecord",
    "SeriesAnalysis",
    "VolumeRecord",
    "adapt_model",
    "analyze_series",
    "curve_png",
    "disguised_sequence",
    "header_from_prefix",
    "load_model",
    "parse_header",
    "private_coding_scheme",
    "unclosed_items",
    "weights_version",
]

#: The loaded model, opaque to the node: made by :func:`load_model`, passed back to
#: :func:`analyze_series`. It is safe to share between threads.
Model = BodyPartRegressor

#: Reasons quoted in full in the error of a series no file of which could be read; the rest
#: are counted.
ERRORS_QUOTED = 3


@dataclass(frozen=True)
class SeriesAnalysis:
    """What the model found in the files of one series.

    Attributes
    ----------
    volumes : tuple of VolumeRecord
        One per CT volume assembled from the files (normally one per series).
    headers : tuple of pydicom.Dataset
        The header (no pixel data) of every file that could be read, CT or not.
    read_errors : tuple of str
        One message per file or series the reader rejected (not fatal while some volume
        remains).
    """

    volumes: tuple[VolumeRecord, ...]
    headers: tuple[Dataset, ...]
    read_errors: tuple[str, ...]

    @property
    def main_volume(self) -> VolumeRecord:
        """The volume with the most slices: the one a series-level answer describes."""
        return max(self.volumes, key=lambda v: v.n_slices)


def load_model(weights: Path | None = None, threads: int = 0) -> Model:
    """Load model weights once; the result serves every later :func:`analyze_series`.

    Parameters
    ----------
    weights : Path, optional
        A ``.pt`` file with its ``.json`` metadata beside it; default: the shipped model.
    threads : int
        CPU threads the scoring may use (0: torch's default). It is a process-wide setting.

    Raises
    ------
    OSError, ValueError, RuntimeError
        If the weights are missing, unreadable or do not fit the metadata.
    """
    if threads:
        torch.set_num_threads(threads)
    return BodyPartRegressor.load(weights) if weights else BodyPartRegressor.load()


def weights_version(weights: Path | None = None) -> str:
    """The version of a model from its JSON, without loading the weights.

    Raises
    ------
    OSError, ValueError, TypeError
        If the JSON beside ``weights`` is missing or malformed.
    """
    from model.paths import DEFAULT_META

    meta = DEFAULT_META if weights is None else weights.with_suffix(".json")
    return ModelMeta.read(meta).version


def analyze_series(paths: Sequence[Path], model: Model | None = None,
                   settings: AnalysisSettings | None = None) -> SeriesAnalysis:
    """Read DICOM files of one series and analyze every CT volume they hold.

    Parameters
    ----------
    paths : sequence of Path
        The files; values inside them are never used to build paths.
    model : Model, optional
        From :func:`load_model`; default: the shipped model, loaded once per process.
    settings : AnalysisSettings, optional

    Returns
    -------
    SeriesAnalysis

    Raises
    ------
    CTInputError
        When no CT volume can be assembled; the message lists the reader's reasons.
    """
    scan = scan_dicom_series(paths)
    errors, volumes = list(scan.errors), []
    for plan in scan.plans:
        try:
            result, series = analyze_plan(plan, errors, model, settings=settings)
        except CTInputError as exc:
            errors.append(str(exc))
            continue
        volumes.append(volume_record(result, tuple(series.sop_instance_uids)))
    if not volumes:
        raise CTInputError(_summarize_errors(errors) or "no readable CT image in the series")
    return SeriesAnalysis(volumes=tuple(volumes), headers=tuple(scan.headers),
                          read_errors=tuple(errors))


def _summarize_errors(errors: Sequence[str]) -> str:
    """The first :data:`ERRORS_QUOTED` reasons and a count of the rest, on one line.

    A series of 2000 files broken the same way would otherwise give a message of 2000
    reasons, which no log line or index column should hold.
    """
    quoted = "; ".join(errors[:ERRORS_QUOTED])
    rest = len(errors) - ERRORS_QUOTED
    return f"{quoted}; and {rest} more" if rest > 0 else quoted


def adapt_model(series: Sequence[AdaptSeries], out_dir: Path, *,
                base_weights: Path | None = None, settings: AdaptSettings | None = None,
                progress: bool = False) -> AdaptReport:
    """Fine-tune the active model on ``series`` and judge the candidate (``bpr adapt``).

    See :func:`model.adaptation.run.adapt`: the candidate's weights, JSON and ``report.json``
    are written to ``out_dir``; the report says whether it may be promoted and why.

    Raises
    ------
    AdaptError
        When too few patients have a qualifying series (a ``ValueError``).
    """
    from model.adaptation.run import adapt

    return adapt(series, out_dir, base_weights=base_weights, settings=settings,
                 progress=progress)


def curve_png(document: Mapping[str, Any]) -> bytes:
    """PNG of the score curve of a stored result document (``VolumeRecord.document``), as
    ``bpr predict --plot`` draws it; it names no patient or file.

    Raises
    ------
    KeyError, TypeError, ValueError
        If the document is not a result document.
    """
    from model.tools.plot import document_png

    return document_png(document)
