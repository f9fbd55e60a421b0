"""One series' frames → one axial feet → head :class:`CTVolume`.

The steps, in order: drop localizers and the slices whose orientation or matrix differs from
the series majority, check the series is axial (and warn about gantry tilt), collapse
duplicate positions, order by the world z of the slice centres, decode every kept frame
straight into the final array, read scanner padding as air (:mod:`model.reading.padding`),
and warn about gaps and uneven spacing.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Hashable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from model.reading.dicom_frames import Frame, Vector
from model.reading.hostile import DECODE_ERRORS
from model.reading.padding import (
    PADDING_HU,
    describe_header_range,
    header_padding_range,
    pad_below_air,
    padding_warning,
)
from model.reading.volume import CTInputError, CTVolume, FloatArray

#: Slices whose positions along the normal differ by at most this are duplicates.
DUPLICATE_TOLERANCE_MM = 0.01

#: Spacings above this multiple of the median spacing are reported as gaps.
GAP_FACTOR = 1.5

#: Smaller angles between slice normal and body axis are rounding noise in the cosines.
TILT_WARN_DEG = 0.5

def _keep_majority(frames: list[Frame], key: Callable[[Frame], Hashable]) -> list[Frame]:
    majority, _ = Counter(key(f) for f in frames).most_common(1)[0]
    return [f for f in frames if key(f) == majority]



def assemble(uid: str | None, frames: list[Frame], errors: list[str]) -> CTVolume:
    """One series' frames → CTVolume; decode failures are appended to ``errors``."""
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
    header_padding: Counter[str] = Counter()
    hu, frames, swap = _decode_volume(frames, ref, label, errors, header_padding)
    below_air, withheld = pad_below_air(hu)
    padded = padding_warning(hu.size, header_voxels=header_padding.total(),
                             header=" / ".join(header_padding), below_air_voxels=below_air,
                             withheld=withheld)
    if padded is not None:
        warnings.append(padded)
    spacing = (ref.spacing[1], ref.spacing[0]) if swap else ref.spacing
    z_mm = np.array([f.centre[2] for f in frames], dtype=np.float64)
    if len(z_mm) > 1 and not np.all(np.diff(z_mm) > 0):
        raise CTInputError(f"{label}: slice centres are not distinct along z")
    warnings.extend(_spacing_warnings(z_mm))
    return CTVolume(
        hu=hu,
        z_mm=z_mm,
        pixel_spacing_mm=spacing,
        source=source,
        series_instance_uid=uid,
        sop_instance_uids=[f.sop_uid for f in frames],
        warnings=warnings,
    )


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


def _decode_volume(frames: list[Frame], ref: Frame, label: str, errors: list[str],
                   header_padding: Counter[str]) -> tuple[FloatArray, list[Frame], bool]:
    """HU of the frames in canonical layout, the frames decoded, and whether rows and
    columns were swapped; frames that fail to decode are left out and reported in
    ``errors``, pixels the header marks as padding are counted in ``header_padding`` (per
    header description)."""
    # Decode straight into the final float32 array (no per-slice copies and no stack), laid
    # out canonically so that feet-first, prone or transposed series need no second copy.
    swap, flip_cols, flip_rows = _in_plane_flips(ref.row_dir, ref.col_dir)
    rows, cols = ref.shape
    hu: FloatArray = np.empty((len(frames), *((cols, rows) if swap else (rows, cols))), np.float32)
    as_stored = _stored_view(hu, swap, flip_cols, flip_rows)
    by_file: dict[Path, list[int]] = {}
    for slot, f in enumerate(frames):
        by_file.setdefault(f.path, []).append(slot)
    # Sequential on purpose: a 2-thread pool gave no gain (pydicom's decode is mostly
    # GIL-bound Python, even for JPEG 2000), so it was not worth the complexity.
    filled: list[int] = []
    for slots in by_file.values():
        done, error = _decode_into([frames[i] for i in slots], slots, as_stored,
                                   header_padding)
        filled.extend(done)
        if error is not None:
            errors.append(error)
    if not filled:
        raise CTInputError(f"{label}: no slice could be decoded")
    if len(filled) < len(frames):
        keep = np.sort(np.array(filled))
        hu = hu[keep]
        frames = [frames[i] for i in keep]
    return hu, frames, swap



def _decode_into(
    frames: list[Frame], slots: list[int], out: FloatArray, header_padding: Counter[str]
) -> tuple[list[int], str | None]:
    """Decode one file, write its ``frames`` as HU into ``out[slots]``; slots filled, error.

    Pixels the header marks as padding become :data:`PADDING_HU`, counted in
    ``header_padding`` under the header's description.
    """
    source = frames[0].pixels
    # Dropped before decoding so the pixel bytes and pydicom's cached decoded array are
    # freed as soon as this file is copied out, not when the whole read ends.
    ds, source.dataset = source.dataset, None
    if ds is None:
        return [], source.error
    try:
        stored = ds.pixel_array.reshape(-1, *frames[0].shape)
        padding = header_padding_range(
            ds.get("PixelPaddingValue"), ds.get("PixelPaddingRangeLimit"),
            signed=bool(np.issubdtype(stored.dtype, np.signedinteger)),
            bits_stored=int(ds.get("BitsStored") or 16),
            bits_allocated=int(ds.get("BitsAllocated") or 16))
    except DECODE_ERRORS as exc:
        return [], f"{frames[0].path}: pixel data could not be decoded ({exc})"
    done = []
    for f, slot in zip(frames, slots, strict=True):
        if f.frame >= len(stored):
            continue
        raw, plane = stored[f.frame], out[slot]
        # dtype=float32 computes in float32 like astype(float32) * slope + intercept did, so
        # HU are bit-identical (int32 pixels would otherwise be multiplied in float64).
        np.multiply(raw, np.float32(f.slope), out=plane, dtype=np.float32, casting="unsafe")
        plane += np.float32(f.intercept)
        if padding is not None:
            # Padding marks pixels outside the reconstruction circle, not a measured value;
            # read it as air like the training data.
            mask = (raw == padding[0]) if padding[0] == padding[1] else (
                (raw >= padding[0]) & (raw <= padding[1]))
            n_padding = int(np.count_nonzero(mask))
            if n_padding:
                plane[mask] = PADDING_HU
                header_padding[describe_header_range(padding)] += n_padding
        done.append(slot)
    return done, None



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
