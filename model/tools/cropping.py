"""Known region cropping (thesis §4.3.2): keep only the slices an algorithm knows.

An image algorithm trained on, say, abdomen CT has a *known region*: the scores
``[s_min, s_max]`` of the anatomy it saw in training. Slices of a new volume whose cleaned
score lies outside that range show anatomy the algorithm never saw; cropping them away
before the algorithm runs saves time, and zeroing its output there afterwards removes
false positives (thesis table 5.17: of 177 volumes with false-positive segmentations by
eight nnU-Nets, 164 were caught this way, 86 % on average per model).

The known range comes from

* explicit scores (:func:`known_range_from_scores`),
* two landmark names, looked up in the model's reference table and, for names it lacks,
  bpreg's published table (:func:`known_range_from_landmarks`, via
  :func:`model.interpretation.bodypart.landmark_table`), or
* the algorithm's training volumes, data-driven (:func:`known_range_from_training`): the
  ``q_min`` quantile of the per-volume minimum cleaned scores and the ``q_max`` quantile
  of the per-volume maximum cleaned scores (thesis defaults 25 % and 75 %).

:func:`crop_range` turns a score curve into the kept slice run; the writers produce a
cropped NIfTI, the SOP Instance UIDs inside the range (DICOM input) and a segmentation
mask zeroed outside the range.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from model.interpretation.analysis import score_with_content
from model.interpretation.bodypart import landmark_score, landmark_table
from model.interpretation.postprocess import (
    SMOOTHING_SIGMA_MM,
    CleanedScores,
    clean_scores,
    gaussian_smooth,
)
from model.reading.volume import CTInputError, CTVolume
from model.scoring.inference import BodyPartRegressor, ModelMeta

FloatVector = npt.NDArray[np.float64]
BoolVector = npt.NDArray[np.bool_]

#: Quantiles of the per-volume minimum and maximum scores (thesis §5.2.2: 25 % / 75 %).
DEFAULT_QUANTILES = (0.25, 0.75)


# --- known range ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownRange:
    """The score range an algorithm knows.

    Attributes
    ----------
    s_min, s_max : float
        Lowest and highest known score, ``s_min <= s_max``.
    source : str
        How the range was found, for reports.
    """

    s_min: float
    s_max: float
    source: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.s_min) and math.isfinite(self.s_max)):
            raise ValueError(f"known range must be finite, got [{self.s_min}, {self.s_max}]")
        if self.s_min > self.s_max:
            raise ValueError(f"known range is reversed: [{self.s_min}, {self.s_max}]")

    def widened(self, margin: float) -> KnownRange:
        """The range grown by ``margin`` score units at both ends."""
        if margin == 0:
            return self
        return KnownRange(self.s_min - margin, self.s_max + margin,
                          f"{self.source} ± {margin:g}")


def known_range_from_scores(a: float, b: float) -> KnownRange:
    """Known range from two explicit scores (either order)."""
    lo, hi = sorted((float(a), float(b)))
    return KnownRange(lo, hi, f"scores {lo:g}..{hi:g}")


def known_range_from_landmarks(start: str, end: str, meta: ModelMeta | None = None
                               ) -> KnownRange:
    """Known range between the expected scores of two landmarks (either order).

    The thesis' manual approach: e.g. a kidney algorithm knows ``femur_end`` .. ``Th12``.
    Scores come from :func:`~model.interpretation.bodypart.landmark_table`: the model's
    reference table
    (our names, e.g. ``lung_bottom``) over bpreg's published table (e.g. ``lung_start``)
    with interpolated vertebral levels.

    Raises
    ------
    KeyError
        If a name is in neither table; the message lists the known names.
    """
    table = landmark_table(meta.reference_table if meta is not None else None)
    a, b = landmark_score(table, start, math.nan), landmark_score(table, end, math.nan)
    lo, hi = sorted((a, b))
    return KnownRange(lo, hi, f"landmarks {start} ({a:.1f}) .. {end} ({b:.1f})")


def known_range_from_training(curves: Iterable[npt.ArrayLike],
                              quantiles: tuple[float, float] = DEFAULT_QUANTILES
                              ) -> KnownRange:
    """Data-driven known range from the cleaned score curves of an algorithm's training set.

    Parameters
    ----------
    curves : iterable of array_like
        Cleaned slice scores of each training volume; NaN marks removed slices.
    quantiles : (float, float)
        ``(q_min, q_max)`` in [0, 1]: ``s_min`` is the ``q_min`` quantile of the
        per-volume minima, ``s_max`` the ``q_max`` quantile of the per-volume maxima.

    Returns
    -------
    KnownRange

    Raises
    ------
    ValueError
        If no curve has a finite score or the quantiles are outside [0, 1].
    """
    q_min, q_max = quantiles
    if not (0.0 <= q_min <= 1.0 and 0.0 <= q_max <= 1.0):
        raise ValueError(f"quantiles must lie in [0, 1], got {quantiles}")
    mins, maxs = [], []
    for curve in curves:
        s = np.asarray(curve, dtype=np.float64)
        s = s[np.isfinite(s)]
        if s.size:
            mins.append(float(s.min()))
            maxs.append(float(s.max()))
    if not mins:
        raise ValueError("no training volume has a finite score")
    s_min = float(np.quantile(mins, q_min))
    s_max = float(np.quantile(maxs, q_max))
    if s_min > s_max:
        raise ValueError(f"quantiles {quantiles} give an empty range [{s_min:.2f}, {s_max:.2f}]")
    return KnownRange(s_min, s_max,
                      f"training data, {len(mins)} volumes, quantiles {q_min:g}/{q_max:g}")


# --- score curves --------------------------------------------------------------------------


def as_score_array(scores: Sequence[float | None] | npt.ArrayLike) -> FloatVector:
    """Scores as float64 with NaN for removed slices (``None`` in JSON documents)."""
    if isinstance(scores, Sequence) and not isinstance(scores, str):
        return np.array([np.nan if s is None else float(s) for s in scores], dtype=np.float64)
    return np.asarray(scores, dtype=np.float64)


def score_and_clean(volume: CTVolume, regressor: BodyPartRegressor) -> CleanedScores:
    """Score every slice and clean the curve as :func:`model.interpretation.analysis.analyze` does.

    Only the scores are needed here, so tag, regions and sanity checks are skipped.
    """
    scored, body_pixels = score_with_content(volume, regressor)
    return clean_scores(volume.z_mm, scored.scores, body_pixels=body_pixels,
                        statistics=regressor.meta.statistics)


# --- crop range ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CropRange:
    """The run of slices inside a known range.

    Attributes
    ----------
    start, stop : int
        Kept slices ``start <= k < stop`` (feet → head order of :class:`CTVolume`);
        ``start == stop`` when nothing is inside.
    n_slices : int
        Slices of the whole volume.
    z_min_mm, z_max_mm : float or None
        Centres of the first and last kept slice.
    lower_mm, upper_mm : float or None
        Slab bounds: halfway to the first removed neighbour, or half a spacing beyond
        the volume end; what a mask on another z grid is cut at.
    s_min, s_max : float
        The known range that was applied.
    """

    start: int
    stop: int
    n_slices: int
    z_min_mm: float | None
    z_max_mm: float | None
    lower_mm: float | None
    upper_mm: float | None
    s_min: float
    s_max: float

    @property
    def n_kept(self) -> int:
        return self.stop - self.start

    @property
    def is_empty(self) -> bool:
        return self.stop <= self.start

    def mask(self) -> BoolVector:
        """Per-slice bool: True for kept slices."""
        keep = np.zeros(self.n_slices, dtype=bool)
        keep[self.start : self.stop] = True
        return keep

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus ``n_kept``."""
        return {**asdict(self), "n_kept": self.n_kept}

    def describe(self) -> str:
        """One line for the terminal."""
        if self.is_empty:
            return (f"no slice lies in the known range [{self.s_min:.1f}, {self.s_max:.1f}]"
                    f" ({self.n_slices} slices)")
        return (f"slices {self.start}..{self.stop - 1} ({self.n_kept} of {self.n_slices}), "
                f"z {self.z_min_mm:.1f}..{self.z_max_mm:.1f} mm, "
                f"scores [{self.s_min:.1f}, {self.s_max:.1f}]")


def _fill_interior(z: FloatVector, s: FloatVector) -> FloatVector:
    """Interpolate NaN slices between valid ones; NaN before the first/after the last stay."""
    valid = np.flatnonzero(np.isfinite(s))
    out = s.copy()
    if valid.size == 0:
        return out
    inner = np.arange(valid[0], valid[-1] + 1)
    out[inner] = np.interp(z[inner], z[valid], s[valid])
    return out


def _longest_run(inside: BoolVector, z: FloatVector) -> tuple[int, int]:
    """``(start, stop)`` of the run of True with the largest z extent; (0, 0) if none."""
    edges = np.diff(np.concatenate([[0], inside.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if starts.size == 0:
        return 0, 0
    # extent by position, not slice count, so a thin-slice stretch does not outweigh it
    extent = z[stops - 1] - z[starts]
    best = int(np.argmax(extent + 1e-6 * (stops - starts)))
    return int(starts[best]), int(stops[best])


def _slab_bounds(z: FloatVector, start: int, stop: int) -> tuple[float, float]:
    half = 0.5 * float(np.median(np.diff(z))) if z.size > 1 else 0.5
    lower = 0.5 * (z[start - 1] + z[start]) if start > 0 else z[0] - half
    upper = 0.5 * (z[stop - 1] + z[stop]) if stop < z.size else z[-1] + half
    return float(lower), float(upper)


def crop_range(scores: Sequence[float | None] | npt.ArrayLike, z_mm: npt.ArrayLike,
               s_min: float, s_max: float, *, sigma_mm: float = SMOOTHING_SIGMA_MM
               ) -> CropRange:
    """Slice run of a volume whose smoothed score lies in ``[s_min, s_max]``.

    Parameters
    ----------
    scores : array_like or sequence of float or None, shape (n,)
        Slice scores (raw or cleaned); NaN or None for removed slices. Removed slices
        between valid ones take the interpolated score, so a gap does not split the run;
        removed slices at either end (padding, cut tails) are never kept.
    z_mm : array_like, shape (n,)
        Slice positions, increasing.
    s_min, s_max : float
        Known range.
    sigma_mm : float
        σ of the Gaussian smoothing in mm
        (:func:`~model.interpretation.postprocess.gaussian_smooth`),
        so single-slice noise cannot cut the run; 0 for scores that are cleaned already.

    Returns
    -------
    CropRange
        The longest (in mm) contiguous run of slices inside the range: a noisy curve may
        touch the range at a few scattered slices far from the anatomy, which must not
        be kept; non-monotonic dips inside the run are bridged by the smoothing.
    """
    s = as_score_array(scores)
    z = np.asarray(z_mm, dtype=np.float64)
    if s.shape != z.shape:
        raise ValueError(f"{s.size} scores for {z.size} slice positions")
    lo, hi = sorted((float(s_min), float(s_max)))
    curve = _fill_interior(z, gaussian_smooth(z, s, sigma_mm))
    with np.errstate(invalid="ignore"):
        inside = (curve >= lo) & (curve <= hi)
    start, stop = _longest_run(inside, z)
    if stop <= start:
        return CropRange(0, 0, z.size, None, None, None, None, lo, hi)
    lower, upper = _slab_bounds(z, start, stop)
    return CropRange(start, stop, z.size, float(z[start]), float(z[stop - 1]), lower, upper,
                     lo, hi)


# --- writers -------------------------------------------------------------------------------


SpatialImage = nib.spatialimages.SpatialImage


def _load_image(path: Path) -> SpatialImage:
    """A NIfTI (or other spatial) image; a clear error for anything else."""
    try:
        img = nib.load(str(path))
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise ValueError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if not isinstance(img, SpatialImage) or len(img.shape) not in (3, 4):
        raise ValueError(f"{path}: not a 3D image")
    return img


def _superior_axis(img: SpatialImage) -> tuple[int, bool]:
    """Stored array axis that runs along the patient's S axis, and whether it runs S → I."""
    ornt = nib.orientations.io_orientation(img.affine)  # type: ignore[no-untyped-call]
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    return axis, bool(ornt[axis, 1] < 0)


def _stored_slab(img: SpatialImage, start: int, stop: int
                 ) -> tuple[int, int, int]:
    """Axis and index range in the stored array of canonical (feet → head) slices."""
    axis, flipped = _superior_axis(img)
    n = int(img.shape[axis])
    return (axis, n - stop, n - start) if flipped else (axis, start, stop)


def write_cropped_nifti(source: Path, crop: CropRange, out: Path) -> Path:
    """Write the kept slices of a NIfTI volume, in its stored orientation and data type.

    The affine is shifted to the first kept voxel, so every kept voxel keeps its world
    position.

    Raises
    ------
    ValueError
        If the crop is empty or was computed for another number of slices.
    """
    if crop.is_empty:
        raise ValueError("nothing to write: no slice lies in the known range")
    img = _load_image(source)
    axis, lo, hi = _stored_slab(img, crop.start, crop.stop)
    if img.shape[axis] != crop.n_slices:
        raise ValueError(f"{source}: {img.shape[axis]} slices, crop is for {crop.n_slices}")
    index: list[slice] = [slice(None)] * len(img.shape)
    index[axis] = slice(lo, hi)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img.slicer[tuple(index)], str(out))
    return out


def uids_in_range(volume: CTVolume, crop: CropRange) -> list[str]:
    """SOP Instance UIDs of the kept slices, feet → head, each once (multi-frame repeats).

    Raises
    ------
    ValueError
        If the volume has no UIDs (not read from DICOM) or does not match the crop.
    """
    if len(volume.sop_instance_uids) != volume.n_slices:
        raise ValueError(f"{volume.source}: no SOP Instance UID per slice (not a DICOM series)")
    if volume.n_slices != crop.n_slices:
        raise ValueError(f"{volume.source}: {volume.n_slices} slices, crop is for "
                         f"{crop.n_slices}")
    return list(dict.fromkeys(volume.sop_instance_uids[crop.start : crop.stop]))


def write_uids(uids: Iterable[str], out: Path) -> Path:
    """One UID per line."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{u}\n" for u in uids))
    return out


@dataclass(frozen=True)
class MaskFilterResult:
    """What zeroing a mask outside the known range did.

    Attributes
    ----------
    removed_voxels : int
        Non-zero voxels set to zero (false positives outside the known region).
    kept_voxels : int
        Non-zero voxels left.
    removed_slices : int
        Mask slices that had labels and were zeroed.
    """

    removed_voxels: int
    kept_voxels: int
    removed_slices: int


def _slice_z(img: SpatialImage) -> tuple[FloatVector, int, bool]:
    """World S of every slice along the stored S axis (as :func:`read_nifti` computes it)."""
    axis, flipped = _superior_axis(img)
    canonical = nib.as_closest_canonical(img)  # type: ignore[no-untyped-call]
    ni, nj, nk = canonical.shape[:3]
    a = canonical.affine
    centre = a @ np.array([(ni - 1) / 2, (nj - 1) / 2, 0.0, 1.0])
    z = centre[2] + a[2, 2] * np.arange(nk, dtype=np.float64)
    return (z[::-1] if flipped else z), axis, flipped


def filter_mask(mask_path: Path, crop: CropRange, out: Path) -> MaskFilterResult:
    """Zero a segmentation mask outside the cropped slab (false-positive filter, table 5.17).

    Slices are kept by world position (:attr:`CropRange.lower_mm` ..
    :attr:`CropRange.upper_mm`), so the mask may be stored in any orientation; on the
    CT's own grid this keeps exactly the cropped slices. Header and data type stay.

    Parameters
    ----------
    mask_path : Path
        NIfTI label map (0 = background).
    crop : CropRange
        From :func:`crop_range` on the CT the mask belongs to.
    out : Path
        Where to write the filtered mask.

    Returns
    -------
    MaskFilterResult
    """
    img = _load_image(mask_path)
    data = np.asarray(img.dataobj)
    z, axis, _ = _slice_z(img)
    if crop.is_empty or crop.lower_mm is None or crop.upper_mm is None:
        keep = np.zeros(z.size, dtype=bool)
    else:
        keep = (z >= crop.lower_mm) & (z < crop.upper_mm)
    labelled = np.moveaxis(data != 0, axis, 0).reshape(z.size, -1).sum(1)
    filtered = data.copy()
    drop: list[slice | npt.NDArray[np.intp]] = [slice(None)] * data.ndim
    drop[axis] = np.flatnonzero(~keep)
    filtered[tuple(drop)] = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(type(img)(filtered, img.affine, img.header), str(out))
    return MaskFilterResult(
        removed_voxels=int(labelled[~keep].sum()), kept_voxels=int(labelled[keep].sum()),
        removed_slices=int(np.count_nonzero(labelled[~keep])),
    )


# --- training data and command line --------------------------------------------------------


def training_volume_paths(source: Path) -> list[Path]:
    """Inputs of an algorithm's training set: a CSV list (column ``file``) or a folder.

    A CSV is read like ``manifest.csv`` (paths relative to its folder, every row counts,
    whatever its ``split``); a folder or file is one input for
    :func:`~model.reading.load.load_volumes`.
    """
    from model.training.dataset import read_list

    if source.suffix.lower() == ".csv":
        return [entry.path for entry in read_list(source)]
    return [source]


def training_curves(source: Path, regressor: BodyPartRegressor) -> tuple[list[FloatVector],
                                                                        list[str]]:
    """Cleaned score curves of every series under a training-set source.

    Returns
    -------
    curves : list of ndarray
        One cleaned curve per readable series.
    errors : list of str
        One message per unreadable file or series; they never stop the others.
    """
    from model.reading.load import load_volumes

    curves: list[FloatVector] = []
    errors: list[str] = []
    for path in training_volume_paths(source):
        try:
            loaded = load_volumes(path)
        except CTInputError as exc:
            errors.append(str(exc))
            continue
        errors += loaded.errors
        for volume in loaded.volumes:
            curves.append(score_and_clean(volume, regressor).scores)
    return curves, errors


def add_crop_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bpr crop`` (known region cropping) on the ``bpr`` subparsers."""
    from model.paths import DEFAULT_WEIGHTS

    p = subparsers.add_parser(
        "crop", help="known region cropping: keep the slices inside a score range",
        description="Crop a CT series to the slices whose cleaned score lies in a known range "
                    "(thesis §4.3.2) and optionally zero a segmentation mask outside it.")
    p.add_argument("input", type=Path, help="NIfTI file, DICOM file or folder of one series")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--scores", type=float, nargs=2, metavar=("MIN", "MAX"),
                     help="known range as scores")
    src.add_argument("--landmarks", nargs=2, metavar=("START", "END"),
                     help="known range between two landmarks' expected scores "
                          "(model reference table, else bpreg's published table)")
    src.add_argument("--from-training", type=Path, metavar="FOLDER_OR_CSV",
                     help="known range from an algorithm's training volumes")
    p.add_argument("--quantiles", type=float, nargs=2, default=DEFAULT_QUANTILES,
                   metavar=("QMIN", "QMAX"),
                   help="quantiles of the per-volume min/max scores for --from-training "
                        "(default 0.25 0.75, as in the thesis)")
    p.add_argument("--margin", type=float, default=0.0,
                   help="widen the known range by this many score units at both ends")
    p.add_argument("--out-nifti", type=Path, help="write the cropped volume (NIfTI input only)")
    p.add_argument("--out-uids", type=Path,
                   help="write the SOP Instance UIDs inside the range (DICOM input only)")
    p.add_argument("--mask", type=Path, help="segmentation mask (NIfTI) to filter")
    p.add_argument("--out-mask", type=Path, help="where to write the filtered mask")
    p.add_argument("--json", type=Path, help="write range and known range as JSON")
    p.add_argument("--model", type=Path, default=DEFAULT_WEIGHTS, help="weights (.pt)")
    p.set_defaults(func=run_crop_command)


def _known_range(args: argparse.Namespace, regressor: BodyPartRegressor) -> KnownRange:
    if args.scores is not None:
        known = known_range_from_scores(*args.scores)
    elif args.landmarks is not None:
        known = known_range_from_landmarks(args.landmarks[0], args.landmarks[1],
                                           regressor.meta)
    else:
        curves, errors = training_curves(args.from_training, regressor)
        for err in errors:
            print(f"warning: {err}", file=sys.stderr)
        known = known_range_from_training(curves, tuple(args.quantiles))
    return known.widened(args.margin)


def _single_volume(path: Path) -> CTVolume:
    from model.reading.load import load_volumes

    loaded = load_volumes(path)
    for err in loaded.errors:
        print(f"warning: {err}", file=sys.stderr)
    if len(loaded.volumes) != 1:
        raise CTInputError(f"{path}: expected one CT series, found {len(loaded.volumes)}")
    return loaded.volumes[0]


def _check_outputs(args: argparse.Namespace, volume: CTVolume) -> None:
    """Refuse impossible outputs before any slice is scored."""
    from model.reading.nifti import is_nifti

    if (args.mask is None) != (args.out_mask is None):
        raise ValueError("--mask and --out-mask go together")
    if args.out_nifti is not None and not is_nifti(args.input):
        raise ValueError("--out-nifti needs a NIfTI input")
    if args.out_uids is not None and len(volume.sop_instance_uids) != volume.n_slices:
        raise ValueError(f"{volume.source}: --out-uids needs a DICOM series "
                         "(no SOP Instance UID per slice)")


def _message(exc: Exception) -> str:
    # str() of a KeyError is the repr of its key, quotes included
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _write_outputs(args: argparse.Namespace, volume: CTVolume, crop: CropRange
                   ) -> dict[str, Any]:
    """Write the requested files; returns what the JSON report adds about them."""
    extra: dict[str, Any] = {}
    if args.out_nifti is not None:
        print(f"wrote {write_cropped_nifti(args.input, crop, args.out_nifti)}")
    if args.out_uids is not None:
        uids = uids_in_range(volume, crop)
        print(f"wrote {len(uids)} UIDs to {write_uids(uids, args.out_uids)}")
    if args.mask is not None:
        result = filter_mask(args.mask, crop, args.out_mask)
        extra["mask"] = asdict(result)
        print(f"wrote {args.out_mask}: removed {result.removed_voxels} labelled voxels "
              f"in {result.removed_slices} slices, kept {result.kept_voxels}")
    return extra


def run_crop_command(args: argparse.Namespace) -> int:
    """Handler of ``bpr crop``; returns the exit status."""
    from model.evaluation.evaluate import load_regressor

    try:
        volume = _single_volume(args.input)
        _check_outputs(args, volume)
        regressor = load_regressor(args.model)
        known = _known_range(args, regressor)
        crop = crop_range(score_and_clean(volume, regressor).scores, volume.z_mm,
                          known.s_min, known.s_max, sigma_mm=0.0)
    except (CTInputError, ValueError, KeyError, OSError, RuntimeError) as exc:
        print(f"error: {_message(exc)}", file=sys.stderr)
        return 1
    print(f"{volume.identity}: {crop.describe()} ({known.source})")
    document: dict[str, Any] = {"input": volume.source, "known_range": asdict(known),
                                "crop": crop.to_dict()}
    status = 0
    try:
        document.update(_write_outputs(args, volume, crop))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 1
    if args.json is not None:
        _write_json(document, args.json)
    return status


def _write_json(document: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
