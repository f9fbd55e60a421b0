"""A DICOM series to network input chunk by chunk: the full-resolution volume is never held.

A 1,000-slice 512² series is 1 GB of float32 HU; its network input is 65 MB. Slices are
decoded :data:`CHUNK_SLICES` at a time into one reused buffer and preprocessed from there;
what the image checks need is kept as a :class:`~model.reading.volume.ContentSample`. The
results equal those of reading the whole volume first: preprocessing works slice by slice,
and the below-air padding rule (:func:`~model.reading.padding.pad_below_air`) changes no
network input, since both padding and −1024 HU clip to the same value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.reading.dicom_assembly import DecodedSlices, SeriesPlan, decode_slices, describe_series
from model.reading.padding import BELOW_AIR_HU, MAX_PADDING_FRACTION, PADDING_HU
from model.reading.volume import (
    ContentSample,
    CTInputError,
    FloatArray,
    SeriesDescription,
    content_step,
)
from model.scoring import preprocess

#: Slices decoded per chunk: 64 slices of 512² float32 are 64 MB.
CHUNK_SLICES = 64


@dataclass
class StreamedSeries:
    """A series read chunk by chunk: its description, network input and content sample."""

    description: SeriesDescription
    #: Network input, shape (n, S, S), as :func:`~model.scoring.preprocess.preprocess_slices`.
    slices: FloatArray
    sample: ContentSample


def stream_series(plan: SeriesPlan, errors: list[str]) -> StreamedSeries:
    """Decode and preprocess ``plan`` chunk by chunk; undecodable frames go to ``errors``.

    Raises
    ------
    CTInputError
        When no slice can be decoded or the slice positions are not distinct.
    """
    n, (rows, cols) = len(plan.frames), plan.shape
    step = content_step(plan.shape)
    size = preprocess.INPUT_SIZE
    slices = np.empty((n, size, size), np.float32)
    sample = np.empty((n, -(-rows // step), -(-cols // step)), np.float32)
    chunk = np.empty((min(n, CHUNK_SLICES), rows, cols), np.float32)
    chunk_sample = np.empty((len(chunk), *sample.shape[1:]), np.float32)

    def sample_and_clip(i: int, hu: FloatArray) -> None:
        # the image checks see HU as read; the network input only the clipped range
        chunk_sample[i] = hu[::step, ::step]
        preprocess.clip_slice(hu)

    decoded = DecodedSlices()
    for start in range(0, n, CHUNK_SLICES):
        part = chunk[:min(CHUNK_SLICES, n - start)]
        got = decode_slices(plan, start, part, errors, finish=sample_and_clip)
        local = [k - start for k in got.kept]
        good = part if len(local) == len(part) else part[local]
        at = len(decoded.kept)
        slices[at:at + len(good)] = preprocess.preprocess_slices(good, plan.pixel_spacing_mm,
                                                                 clipped=True)
        sample[at:at + len(good)] = chunk_sample[local]
        decoded.extend(got)
    kept = len(decoded.kept)
    if not kept:
        raise CTInputError(f"{plan.label}: no slice could be decoded")
    slices, sample = slices[:kept], sample[:kept]
    n_voxels = kept * rows * cols
    # pad_below_air's rule on the whole series, applied where the pixels still exist.
    below_air = decoded.below_air
    withheld = below_air > MAX_PADDING_FRACTION * n_voxels
    if withheld:
        below_air = 0
    elif below_air:
        sample[sample < BELOW_AIR_HU] = PADDING_HU
    description = describe_series(plan, decoded, n_voxels=n_voxels, below_air=below_air,
                                  withheld=withheld)
    spacing = (plan.pixel_spacing_mm[0] * step, plan.pixel_spacing_mm[1] * step)
    return StreamedSeries(description, slices, ContentSample(sample, spacing))
