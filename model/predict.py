"""Per-series prediction output: a strict JSON document (no NaN) per scored series."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.inference import BodyPartRegressor, SliceScores
from model.volume import CTVolume

#: Version of the JSON layout written by :func:`prediction_document`.
SCHEMA_VERSION = 1


def _finite_or_none(values: Sequence[float] | np.ndarray, ndigits: int = 4) -> list[float | None]:
    """JSON has no NaN/Infinity: non-finite values become null."""
    return [round(float(v), ndigits) if math.isfinite(float(v)) else None for v in values]


def prediction_document(volume: CTVolume, result: SliceScores,
                        regressor: BodyPartRegressor) -> dict[str, Any]:
    """The JSON-ready prediction of one series.

    ``patient_z_mm`` and ``slice_scores`` are ours (slice order feet → head, superior
    positive); ``z``, ``unprocessed slice scores`` and ``z-spacing`` repeat them under
    bpreg's keys for tools written against it.
    """
    z = volume.z_mm
    spacing = float(np.median(np.diff(z))) if len(z) > 1 else None
    scores = _finite_or_none(result.scores)
    return {
        "schema_version": SCHEMA_VERSION,
        "input": {
            "source": volume.source,
            "series_instance_uid": volume.series_instance_uid,
            "n_slices": volume.n_slices,
            "pixel_spacing_mm": list(volume.pixel_spacing_mm),
            "warnings": volume.warnings,
        },
        "model": {"name": "bpr-node SliceScoreNet", "version": regressor.meta.version},
        "patient_z_mm": _finite_or_none(z, 3),
        "slice_scores": scores,
        "unprocessed slice scores": scores,
        "z": _finite_or_none(z - z[0], 3),
        "z-spacing": round(spacing, 4) if spacing is not None else None,
    }


def output_name(volume: CTVolume, index: int) -> str:
    """A file name that never contains peer-controlled text: NIfTI stem or a hash of the UID."""
    if volume.series_instance_uid is None:
        stem = Path(volume.source).name.removesuffix(".gz").removesuffix(".nii")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).lstrip(".")
        return f"{safe or 'volume'}.json"
    digest = hashlib.sha256(volume.series_instance_uid.encode()).hexdigest()[:16]
    return f"series-{index:04d}-{digest}.json"


def write_json(document: dict[str, Any], path: Path) -> None:
    """Write strictly valid JSON atomically (``allow_nan=False`` guards against NaN)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
