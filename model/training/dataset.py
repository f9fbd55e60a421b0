"""Training data: volumes preprocessed once into a compact in-memory cache.

Each volume is kept as float16 network input (n, 128, 128) plus its slice positions, so a
training step only gathers slices and augments them. The cache lives in a git-ignored
folder keyed by file content and preprocessing settings.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.reading.load import load_volumes
from model.reading.volume import CTInputError
from model.scoring import preprocess
from model.training.anchors import NO_ANCHORS, Anchors, find_anchors

log = logging.getLogger(__name__)

#: Bump when preprocessing changes so stale cache entries are rebuilt (3: anchors added).
CACHE_VERSION = 3


@dataclass
class TrainVolume:
    """One preprocessed volume ready for slice sampling."""

    name: str
    slices: np.ndarray  # (n, S, S) float16 in [-1, 1]
    z_mm: np.ndarray  # (n,) float64, increasing
    group: str  # used to balance sampling between collections
    weight: float = 1.0  # extra sampling factor (synthetic data is down-weighted)
    anchors: Anchors = NO_ANCHORS  # image landmarks for the anchor loss

    @property
    def z_spacing_mm(self) -> float:
        return float(np.median(np.diff(self.z_mm))) if len(self.z_mm) > 1 else 1.0


@dataclass(frozen=True)
class VolumeEntry:
    """A training input: a NIfTI file or DICOM folder, its split and sampling group."""

    path: Path
    split: str
    group: str
    name: str


def read_list(csv_path: Path, base: Path | None = None) -> list[VolumeEntry]:
    """Read a CSV list of inputs.

    Required column ``file`` (relative to the CSV's folder unless absolute); optional
    ``split`` (train/val, default train), ``id`` and ``source_repo_or_package`` or ``group``
    (the sampling group). ``../shared/data/manifest.csv`` has this form.
    """
    base = base or csv_path.parent
    entries = []
    with csv_path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            path = Path(row["file"])
            path = path if path.is_absolute() else base / path
            group = row.get("group") or row.get("source_repo_or_package") or path.parent.name
            entries.append(
                VolumeEntry(path, row.get("split") or "train", group, row.get("id") or path.name)
            )
    return entries


def entries_from_paths(paths: Iterable[Path], split: str = "train") -> list[VolumeEntry]:
    """Inputs given directly: ``.csv`` lists are expanded, files and folders are taken as is."""
    out: list[VolumeEntry] = []
    for p in paths:
        if p.suffix.lower() == ".csv":
            out += read_list(p)
        else:
            out.append(VolumeEntry(p, split, p.parent.name, p.name))
    return out


def _cache_key(path: Path) -> str:
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}:{preprocess.INPUT_SIZE}:{preprocess.PIXEL_SPACING_MM}".encode())
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for f in files:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def load_train_volumes(
    entries: Sequence[VolumeEntry], cache_dir: Path | None, *, progress: bool = True
) -> list[TrainVolume]:
    """Preprocess (or load from cache) every entry; unreadable inputs are logged and skipped."""
    volumes: list[TrainVolume] = []
    for entry in tqdm(entries, desc="preprocess", disable=not progress, unit="vol"):
        cached = cache_dir / f"{_cache_key(entry.path)}.npz" if cache_dir else None
        if cached is not None and cached.exists():
            with np.load(cached) as z:
                volumes.append(TrainVolume(entry.name, z["slices"], z["z_mm"], entry.group,
                                           anchors=Anchors.from_arrays(z)))
            continue
        try:
            loaded = load_volumes(entry.path)
        except CTInputError as exc:
            log.warning("skipping %s: %s", entry.path, exc)
            continue
        for err in loaded.errors:
            log.warning("skipping part of %s: %s", entry.path, err)
        for i, vol in enumerate(loaded.volumes):
            slices = preprocess.preprocess_slices(vol.hu, vol.pixel_spacing_mm).astype(np.float16)
            anchors = find_anchors(vol)
            name = entry.name if len(loaded.volumes) == 1 else f"{entry.name}#{i}"
            volumes.append(TrainVolume(name, slices, vol.z_mm, entry.group, anchors=anchors))
            if cached is not None and len(loaded.volumes) == 1:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(".tmp.npz")
                np.savez(tmp, slices=slices, z_mm=vol.z_mm,
                         anchor_names=np.array(anchors.names, "U32"),
                         anchor_z_mm=anchors.z_mm, anchor_index=anchors.slice_index,
                         anchor_score=anchors.score)
                tmp.replace(cached)
    return volumes
