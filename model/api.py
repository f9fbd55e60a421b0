"""The one door between the DICOM node and the model.

:func:`analyze_series` takes the files of one received series and returns, per CT volume
found in them, the full :class:`~model.interpretation.analysis.BodyPartResult` together with the SOP
Instance UID of every scored slice, so that the node can reference source images in its SR
without reading the files a second time. The node imports nothing else from :mod:`model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from model.interpretation.analysis import AnalysisSettings, BodyPartResult, analyze
from model.reading.dicom import read_dicom_series, why_not_ct
from model.reading.hostile import DECODE_ERRORS, READ_ERRORS, disguised_sequence
from model.reading.volume import CTInputError
from model.scoring.inference import BodyPartRegressor

__all__ = ["DECODE_ERRORS", "READ_ERRORS", "BodyPartRegressor", "CTInputError", "SeriesAnalysis",
           "analyze_series", "disguised_sequence", "why_not_ct"]

#: Reasons quoted in full in the error of a series no file of which could be read; the rest
#: are counted.
ERRORS_QUOTED = 3


@dataclass(frozen=True)
class SeriesAnalysis:
    """What the model found in the files of one series.

    Attributes
    ----------
    results : tuple of BodyPartResult
        One per CT volume assembled from the files (normally one per series).
    slice_sop_instance_uids : tuple of tuple of str
        For each result, the SOP Instance UID of each slice, in the result's slice order
        (feet → head); a multi-frame instance repeats its UID once per frame.
    read_errors : tuple of str
        One message per file or series the reader rejected (not fatal while some volume
        remains).
    """

    results: tuple[BodyPartResult, ...]
    slice_sop_instance_uids: tuple[tuple[str, ...], ...]
    read_errors: tuple[str, ...]


def analyze_series(paths: Sequence[Path], regressor: BodyPartRegressor | None = None,
                   settings: AnalysisSettings | None = None) -> SeriesAnalysis:
    """Read DICOM files of one series and analyze every CT volume they hold.

    Parameters
    ----------
    paths : sequence of Path
        The files; values inside them are never used to build paths.
    regressor : BodyPartRegressor, optional
        Default: the shipped model, loaded once per process.
    settings : AnalysisSettings, optional

    Returns
    -------
    SeriesAnalysis

    Raises
    ------
    CTInputError
        When no CT volume can be assembled; the message lists the reader's reasons.
    """
    read = read_dicom_series(paths)
    if not read.volumes:
        raise CTInputError(_summarize_errors(read.errors) or "no readable CT image in the series")
    results = tuple(analyze(volume, regressor, settings=settings) for volume in read.volumes)
    uids = tuple(tuple(volume.sop_instance_uids) for volume in read.volumes)
    return SeriesAnalysis(results=results, slice_sop_instance_uids=uids,
                          read_errors=tuple(read.errors))


def _summarize_errors(errors: Sequence[str]) -> str:
    """The first :data:`ERRORS_QUOTED` reasons and a count of the rest, on one line.

    A series of 2000 files broken the same way would otherwise give a message of 2000
    reasons, which no log line or index column should hold.
    """
    quoted = "; ".join(errors[:ERRORS_QUOTED])
    rest = len(errors) - ERRORS_QUOTED
    return f"{quoted}; and {rest} more" if rest > 0 else quoted
