"""Where and how ``bpr predict`` writes its per-series documents (strict JSON, no NaN)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from model.reading.volume import CTVolume, SeriesDescription


def output_name(volume: CTVolume | SeriesDescription, index: int) -> str:
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
