"""Slice preprocessing shared by training and inference (thesis §4.1, bpreg).

HU are clipped to [HU_MIN, HU_MAX] and mapped linearly to [-1, 1]; slices are resampled
in-plane to PIXEL_SPACING_MM with an anti-aliased filter and centre-cropped or padded
(with the value of air) to INPUT_SIZE × INPUT_SIZE.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model.reading.volume import FloatArray

#: Lower HU clip; air and everything below map to -1.
HU_MIN = -1000.0
#: Upper HU clip; dense bone and metal map to +1.
HU_MAX = 1500.0
#: In-plane pixel size of the network input in mm (bpreg uses 3.5 mm).
PIXEL_SPACING_MM = 3.5
#: Network input side in pixels: 128 × 3.5 mm = 448 mm field of view.
INPUT_SIZE = 128
#: Slices resampled per torch call; bounds peak memory on 512² series.
CHUNK_SLICES = 64


def clip_slice(hu: FloatArray) -> None:
    """Clip HU to [HU_MIN, HU_MAX] in place: the one full-size step of
    :func:`preprocess_slices`, for a reader to run while a slice is in cache."""
    np.clip(hu, HU_MIN, HU_MAX, out=hu)


def _crop_or_pad(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop or pad (with -1, air) the last two axes to ``size``."""
    out = x.new_full((*x.shape[:-2], size, size), -1.0)
    h, w = x.shape[-2:]
    src_r, dst_r = max((h - size) // 2, 0), max((size - h) // 2, 0)
    src_c, dst_c = max((w - size) // 2, 0), max((size - w) // 2, 0)
    nh, nw = min(h, size), min(w, size)
    src = x[..., src_r : src_r + nh, src_c : src_c + nw]
    out[..., dst_r : dst_r + nh, dst_c : dst_c + nw] = src
    return out


def preprocess_slices(
    hu: FloatArray | np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    *,
    size: int = INPUT_SIZE,
    spacing_mm: float = PIXEL_SPACING_MM,
    clipped: bool = False,
) -> FloatArray:
    """Turn HU slices into network input.

    Parameters
    ----------
    hu : ndarray, shape (n, rows, cols)
        Slices in Hounsfield units.
    pixel_spacing_mm : (float, float)
        Row and column spacing of ``hu``.
    clipped : bool
        ``hu`` is already clipped to [HU_MIN, HU_MAX] (:func:`clip_slice`, e.g. by the
        reader while each slice was in cache): no pass is made at full size.

    Returns
    -------
    ndarray, shape (n, size, size), float32 in [-1, 1]
    """
    n, rows, cols = hu.shape
    out_h = max(1, round(rows * pixel_spacing_mm[0] / spacing_mm))
    out_w = max(1, round(cols * pixel_spacing_mm[1] / spacing_mm))
    result = np.empty((n, size, size), dtype=np.float32)
    scale = 2.0 / (HU_MAX - HU_MIN)
    resized = (out_h, out_w) != (rows, cols)
    buffer = (None if clipped and resized
              else torch.empty((min(n, CHUNK_SLICES), rows, cols), dtype=torch.float32))
    with torch.no_grad():
        for start in range(0, n, CHUNK_SLICES):
            chunk = torch.from_numpy(np.ascontiguousarray(hu[start : start + CHUNK_SLICES]))
            # Into a reused buffer: full-size temporaries of a 512² series cost more in page
            # faults than the arithmetic itself. The clip is the only pass at full size; the
            # linear map to [-1, 1] commutes with the (linear) resampling, so it runs on the
            # small output.
            if buffer is None:
                x4 = chunk.unsqueeze(1)  # only read: interpolate makes the small copy
            elif clipped:
                x4 = buffer[: len(chunk)].copy_(chunk).unsqueeze(1)
            else:
                x4 = torch.clamp(chunk, HU_MIN, HU_MAX, out=buffer[: len(chunk)]).unsqueeze(1)
            if resized:
                # antialias=True widens the triangle filter when downsampling, so fine
                # in-plane detail does not alias into the coarse network grid.
                x4 = F.interpolate(x4, size=(out_h, out_w), mode="bilinear", antialias=True,
                                   align_corners=False)
            x4 = x4.sub_(HU_MIN).mul_(scale).sub_(1.0).clamp_(-1.0, 1.0)
            result[start : start + CHUNK_SLICES] = _crop_or_pad(x4[:, 0], size).numpy()
    return result
