"""One series' frames → a :class:`SeriesPlan` → one axial feet → head :class:`CTVolume`.

Planning uses headers only: drop localizers and the slices whose orientation or matrix
differs from the series majority, check the series is axial (and warn about gantry tilt),
collapse duplicate positions, and order by the world z of the slice centres. Decoding then
writes every kept frame, in parallel, straight into the caller's array in canonical layout
(the whole volume, or one chunk at a time for a streaming caller); finishing reads scanner
padding as air (:mod:`model.reading.padding`) and warns about gaps and uneven spacing.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from model.reading.dicom_frames import Frame, Vector
from model.reading.dicom_pixels import frame_to_hu
from model.reading.hostile import DECODE_ERRORS
from model.reading.padding import (
    BELOW_AIR_HU,
    describe_header_range,
    pad_below_air,
    padding_warning,
)
from model.reading.volume import CTInputError, CTVolume, FloatArray, SeriesDescription

#: Slices whose positions along the normal differ by at most this are duplicates.
DUPLICATE_TOLERANCE_MM = 0.01

#: Spacings above this multiple of the median spacing are reported as gaps.
GAP_FACTOR = 1.5

#: Smaller angles between slice normal and body axis are rounding noise in the cosines.
TILT_WARN_DEG = 0.5

#: Threads that decode frames. Reading native pixels and converting them to HU release the
#: GIL, so threads beyond the cores still overlap file reads with arithmetic.
READ_THREADS = min(4, os.cpu_count() or 1)

# MemoryError too where a hostile length asks pydicom for gigabytes.
_DECODE_FAILURES: tuple[type[BaseException], ...] = (*DECODE_ERRORS, MemoryError)

def _keep_majority(frames: list[Frame], key: Callable[[Frame], Hashable]) -> list[Frame]:
    majority, _ = Counter(key(f) for f in frames).most_common(1)[0]
    return [f for f in frames if key(f) == majority]



@dataclass
class SeriesPlan:
    """One series as its headers describe it: the frames kept, in order, before decoding.

    Attributes
    ----------
    uid : str or None
        SeriesInstanceUID.
    label : str
        How messages name the series.
    source : str
        The file (multi-frame) or folder the series came from.
    frames : list of Frame
        Frames kept, ordered feet → head.
    layout : (bool, bool, bool)
        (transpose, flip columns, flip rows) from stored to canonical pixels.
    shape : (int, int)
        Canonical (rows, cols) of a slice.
    pixel_spacing_mm : (float, float)
        Canonical (row, column) spacing.
    warnings : list of str
        What planning dropped or noticed (localizers, duplicates, tilt...).
    """

    uid: str | None
    label: str
    source: str
    frames: list[Frame]
    layout: tuple[bool, bool, bool]
    shape: tuple[int, int]
    pixel_spacing_mm: tuple[float, float]
    warnings: list[str] = field(default_factory=list)


def plan_series(uid: str | None, frames: list[Frame]) -> SeriesPlan:
    """One series' frames → :class:`SeriesPlan`; CTInputError when none is usable."""
    paths = sorted({str(f.path) for f in frames})
    # A single (multi-frame) file is its own source; otherwise the folder holding the files.
    source = (
        paths[0] if len(paths) == 1 else os.path.commonpath([os.path.dirname(p) for p in paths])
    )
    label = f"series {uid or '(no SeriesInstanceUID)'} in {source}"
    warnings: list[str] = []
    frames = _consistent_frames(frames, label, warnings)
    ref = frames[0]
    normal = _axial_normal(ref, label, warnings)
    frames = _order_by_z(_collapse_duplicates(frames, normal, warnings), normal, warnings)
    for f in frames:
        f.pixels.pending += 1
    layout = _in_plane_flips(ref.row_dir, ref.col_dir)
    rows, cols = ref.shape
    swap = layout[0]
    return SeriesPlan(uid=uid, label=label, source=source, frames=frames, layout=layout,
                      shape=(cols, rows) if swap else (rows, cols),
                      pixel_spacing_mm=(ref.spacing[1], ref.spacing[0]) if swap else ref.spacing,
                      warnings=warnings)


def read_volume(plan: SeriesPlan, errors: list[str]) -> CTVolume:
    """Decode every frame of ``plan`` into one CTVolume; failed frames go to ``errors``."""
    hu: FloatArray = np.empty((len(plan.frames), *plan.shape), np.float32)
    decoded = decode_slices(plan, 0, hu, errors)
    if not decoded.kept:
        raise CTInputError(f"{plan.label}: no slice could be decoded")
    if len(decoded.kept) < len(plan.frames):
        hu = hu[decoded.kept]
    below_air, withheld = pad_below_air(hu)
    series = describe_series(plan, decoded, n_voxels=hu.size, below_air=below_air,
                             withheld=withheld)
    return CTVolume(hu=hu, z_mm=series.z_mm, pixel_spacing_mm=series.pixel_spacing_mm,
                    source=series.source, series_instance_uid=series.series_instance_uid,
                    sop_instance_uids=series.sop_instance_uids, warnings=series.warnings)


def read_volumes(plans: list[SeriesPlan], errors: list[str]) -> list[CTVolume]:
    """:func:`read_volume` of each plan; a plan that fails adds its reason to ``errors``."""
    volumes = []
    for plan in plans:
        try:
            volumes.append(read_volume(plan, errors))
        except CTInputError as exc:
            errors.append(str(exc))
    return volumes


@dataclass
class DecodedSlices:
    """Which slices of a plan were decoded, and the header padding found in them."""

    #: Indices into the plan's frames, ascending.
    kept: list[int] = field(default_factory=list)
    #: Pixels set to padding, per description of the header values.
    header_padding: Counter[str] = field(default_factory=Counter)
    #: Voxels below :data:`~model.reading.padding.BELOW_AIR_HU` after the header's padding
    #: (counted while each slice is still in cache, for the below-air padding rule).
    below_air: int = 0

    def extend(self, other: DecodedSlices) -> None:
        self.kept += other.kept
        self.header_padding.update(other.header_padding)
        self.below_air += other.below_air


def decode_slices(plan: SeriesPlan, start: int, out: FloatArray, errors: list[str],
                  finish: Callable[[int, FloatArray], None] | None = None) -> DecodedSlices:
    """Decode frames ``start .. start + len(out)`` of ``plan`` as HU into ``out``.

    Frames are decoded by :data:`READ_THREADS` threads; a frame that fails leaves its plane
    of ``out`` undefined, is missing from the returned ``kept`` and has its reason appended
    to ``errors`` (once per file). ``finish(i, out[i])`` runs in the decoding thread right
    after plane ``i`` is decoded and counted, while it is still in cache.
    """
    frames = plan.frames[start:start + len(out)]
    as_stored = _stored_view(out, *plan.layout)

    def decode(i: int) -> tuple[int, int, str | None]:
        f = frames[i]
        try:
            raw = f.pixels.stored_frame(f.frame, f.shape)
        except _DECODE_FAILURES as exc:
            return 0, 0, f"{f.path}: pixel data could not be decoded ({exc})"
        n_padding = frame_to_hu(raw, f.slope, f.intercept, f.pixels.padding, as_stored[i])
        below_air = int(np.count_nonzero(as_stored[i] < BELOW_AIR_HU))
        if finish is not None:
            finish(i, out[i])
        return n_padding, below_air, None

    if len(frames) > 1 and READ_THREADS > 1:
        with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="bpr-read") as pool:
            results = list(pool.map(decode, range(len(frames))))
    else:
        results = [decode(i) for i in range(len(frames))]
    decoded = DecodedSlices()
    for i, (n_padding, below_air, error) in enumerate(results):
        if error is not None:
            if error not in errors:
                errors.append(error)
            continue
        decoded.kept.append(start + i)
        decoded.below_air += below_air
        if n_padding:
            padding = frames[i].pixels.padding
            assert padding is not None
            decoded.header_padding[describe_header_range(padding)] += n_padding
    return decoded


def describe_series(plan: SeriesPlan, decoded: DecodedSlices, *, n_voxels: int,
                    below_air: int, withheld: bool) -> SeriesDescription:
    """What ``plan``'s decoded slices are, with the reader's warnings.

    ``n_voxels`` is the number of voxels decoded; ``below_air`` and ``withheld`` are
    :func:`~model.reading.padding.pad_below_air`'s answer for them.
    """
    frames = [plan.frames[i] for i in decoded.kept]
    warnings = list(plan.warnings)
    padded = padding_warning(n_voxels, header_voxels=decoded.header_padding.total(),
                             header=" / ".join(decoded.header_padding),
                             below_air_voxels=below_air, withheld=withheld)
    if padded is not None:
        warnings.append(padded)
    z_mm = np.array([f.centre[2] for f in frames], dtype=np.float64)
    if len(z_mm) > 1 and not np.all(np.diff(z_mm) > 0):
        raise CTInputError(f"{plan.label}: slice centres are not distinct along z")
    warnings.extend(_spacing_warnings(z_mm))
    return SeriesDescription(z_mm=z_mm, pixel_spacing_mm=plan.pixel_spacing_mm,
                             source=plan.source, series_instance_uid=plan.uid,
                             sop_instance_uids=[f.sop_uid for f in frames], warnings=warnings)


def _consistent_frames(frames: list[Frame], label: str, warnings: list[str]) -> list[Frame]:
    """Frames without localizers, of the series' majority orientation, matrix and spacing."""
    n_all = len(frames)
    frames = [f for f in frames if not f.localizer]
    if not frames:
        raise CTInputError(f"{label}: only localizer images")
    if len(frames) < n_all:
        warnings.append(f"dropped {n_all - len(frames)} localizer image(s)")
    for what, key in (
        (
            "orientation",
            lambda f: tuple(float(v) for v in np.concatenate([f.row_dir, f.col_dir]).round(3)),
        ),
        (
            "matrix size or pixel spacing",
            lambda f: (f.shape, tuple(round(v, 4) for v in f.spacing)),
        ),
    ):
        kept = _keep_majority(frames, key)
        if len(kept) < len(frames):
            warnings.append(
                f"dropped {len(frames) - len(kept)} slice(s) whose {what} differs from the "
                "series majority"
            )
        frames = kept
    return frames


def _axial_normal(ref: Frame, label: str, warnings: list[str]) -> Vector:
    """The slice normal of an axial series (tilt warned about); CTInputError otherwise."""
    normal = np.cross(ref.row_dir, ref.col_dir)
    if int(np.argmax(np.abs(normal))) != 2:
        raise CTInputError(f"{label}: not an axial series (slice normal {np.round(normal, 3)})")
    tilt = float(np.degrees(np.arccos(min(1.0, abs(float(normal[2]))))))
    if tilt > TILT_WARN_DEG:
        warnings.append(
            f"gantry tilt / oblique slices: slice normal {tilt:.1f}° from the body axis; "
            "slices kept as acquired, z_mm is the slice-centre position"
        )
    return normal


def _collapse_duplicates(frames: list[Frame], normal: Vector, warnings: list[str]
                         ) -> list[Frame]:
    """One frame per position along the normal: the lowest InstanceNumber of each cluster."""
    frames = sorted(frames, key=lambda f: float(f.position @ normal))
    clusters: list[list[Frame]] = []
    for f in frames:
        anchor = clusters[-1][0] if clusters else None
        if anchor is not None and (f.position - anchor.position) @ normal <= DUPLICATE_TOLERANCE_MM:
            clusters[-1].append(f)
        else:
            clusters.append([f])
    n_duplicates = len(frames) - len(clusters)
    if n_duplicates:
        warnings.append(
            f"dropped {n_duplicates} slice(s) duplicating the position of another slice "
            "(kept the lowest InstanceNumber)"
        )
    return [min(c, key=lambda f: (f.instance, f.frame, str(f.path))) for c in clusters]


def _order_by_z(frames: list[Frame], normal: Vector, warnings: list[str]) -> list[Frame]:
    """Frames feet → head by the world z of their centres."""
    z = np.array([f.centre[2] for f in frames])
    if len(z) > 1 and not np.all(np.diff(z) * np.sign(normal[2]) > 0):
        warnings.append("slice order along the slice normal disagrees with z; ordered by z")
    return [frames[i] for i in np.argsort(z, kind="stable")]


def _in_plane_flips(row_dir: Vector, col_dir: Vector) -> tuple[bool, bool, bool]:
    """(transpose, flip columns, flip rows) that bring stored pixels to the canonical layout.

    Canonical: columns run towards +x (patient left) and rows towards +y (posterior).
    """
    swap = abs(row_dir[1]) > abs(row_dir[0])  # stored with rows and columns swapped
    if swap:
        row_dir, col_dir = col_dir, row_dir
    # e.g. feet-first: columns run towards patient right; prone: rows run towards anterior.
    return bool(swap), bool(row_dir[0] < 0), bool(col_dir[1] < 0)



def _stored_view(hu: FloatArray, swap: bool, flip_cols: bool, flip_rows: bool) -> FloatArray:
    """View of canonical ``hu`` indexed like the stored pixels (undoes the flips in reverse)."""
    if flip_rows:
        hu = hu[:, ::-1, :]
    if flip_cols:
        hu = hu[:, :, ::-1]
    if swap:
        hu = hu.transpose(0, 2, 1)
    return hu



def _spacing_warnings(z_mm: npt.NDArray[np.float64]) -> list[str]:
    if len(z_mm) < 3:
        return []
    steps = np.diff(z_mm)
    median = float(np.median(steps))
    warnings = []
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if len(gaps):
        worst = int(gaps[np.argmax(steps[gaps])])
        warnings.append(
            f"{len(gaps)} gap(s) larger than {GAP_FACTOR}× the median slice spacing "
            f"{median:.2f} mm (largest {steps[worst]:.2f} mm between z = {z_mm[worst]:.1f} and "
            f"{z_mm[worst + 1]:.1f} mm); slices kept at their true positions"
        )
    if steps.max() - steps.min() > 0.01 * median:
        warnings.append(
            f"non-uniform slice spacing {steps.min():.2f}–{steps.max():.2f} mm "
            f"(median {median:.2f} mm)"
        )
    return warnings
