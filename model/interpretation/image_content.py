"""What the image itself says about the series' scope, before any score is trusted.

The model was trained on whole cross-sections of the head, neck and trunk. Tumour-centred
limb crops (the IBSI set of ``../shared/data``: 5 cm around a sarcoma of the thigh, hip or
arm, cut in-plane as well as along z) score like the neck and would get a wrong term or a
false z-spacing error. Two image facts tell them apart without any label:

* the body is **cut by the image edge**: tissue lies on a good part of the image border,
  where a full reconstruction shows air around the body;
* **no air inside the body** in most slices: a head, neck or trunk slice nearly always
  holds enclosed air (airway, lungs, sinuses, bowel gas); a limb holds none.

On the shared data 50 of the 51 limb crops have tissue on 12-73 % of the border and enclosed
air in at most 48 % of their slices (the 51st shows the whole thigh; its flat curve makes it
out of scope by the slope check); every other volume has tissue on at most 24 % of the
border or enclosed air in at least 50 % of its slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from model.interpretation.postprocess import BODY_HU
from model.interpretation.sanity import Anomaly, AnomalyCode, Severity
from model.reading.volume import CONTENT_MAX_PIXELS

#: A limb crop has tissue on at least this fraction of the image border (median slice).
MIN_BORDER_TISSUE = 0.10
#: ... and enclosed air in fewer than this fraction of its body slices.
MAX_AIR_SLICE_FRACTION = 0.5
#: Enclosed air counts from this area on (1 cm²: a trachea, not partial-volume noise).
MIN_ENCLOSED_AIR_MM2 = 100.0
#: A slice counts as a body slice from this tissue area on (as in postprocess).
MIN_BODY_MM2 = 1000.0
#: Slices and in-plane pixels sampled: bounds the cost on thin-slice 512² series.
MAX_SLICES = 64
MAX_PIXELS = CONTENT_MAX_PIXELS


@dataclass(frozen=True)
class ImageContent:
    """Image facts of one series (see the module docstring).

    Attributes
    ----------
    border_tissue_fraction : float
        Median over body slices of the fraction of border pixels above :data:`BODY_HU`.
    air_slice_fraction : float
        Fraction of body slices with at least :data:`MIN_ENCLOSED_AIR_MM2` of air enclosed
        by the body.
    body_slices : int
        Sampled slices that show a body.
    """

    border_tissue_fraction: float
    air_slice_fraction: float
    body_slices: int

    @property
    def limb_crop(self) -> bool:
        """In-plane crop without enclosed air: a limb crop, out of the model's scope."""
        return (self.body_slices > 0 and self.border_tissue_fraction >= MIN_BORDER_TISSUE
                and self.air_slice_fraction < MAX_AIR_SLICE_FRACTION)


def image_content(hu: npt.NDArray[np.floating[Any]], pixel_spacing_mm: tuple[float, float]
                  ) -> ImageContent:
    """:class:`ImageContent` from up to :data:`MAX_SLICES` slices of ``hu`` (n, rows, cols)."""
    n, rows, cols = hu.shape
    step = max(1, math.ceil(max(rows, cols) / MAX_PIXELS))
    pixel_mm2 = float(pixel_spacing_mm[0] * pixel_spacing_mm[1]) * step * step
    picks = np.unique(np.linspace(0, n - 1, min(n, MAX_SLICES)).round().astype(int))
    body = np.asarray(hu[picks, ::step, ::step]) > BODY_HU
    body = body[body.sum(axis=(1, 2)) * pixel_mm2 >= MIN_BODY_MM2]
    if not len(body):
        return ImageContent(0.0, 0.0, 0)
    edges = np.concatenate([body[:, 0], body[:, -1], body[:, :, 0], body[:, :, -1]], axis=1)
    enclosed = enclosed_background(body).sum(axis=(1, 2)) * pixel_mm2
    return ImageContent(float(np.median(edges.mean(axis=1))),
                        float(np.mean(enclosed >= MIN_ENCLOSED_AIR_MM2)), len(body))


def enclosed_background(masks: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Pixels of each 2D mask's background that the image edge cannot reach (its holes).

    ``scipy.ndimage.binary_fill_holes(mask) & ~mask`` per slice of ``masks`` (k, h, w), with
    the same 4-connectivity, in numpy: ``bpr predict`` then starts without importing
    scipy (0.2 s), and all slices grow together.
    """
    background = ~masks
    reached = np.zeros_like(masks)
    for edge in (np.s_[:, 0, :], np.s_[:, -1, :], np.s_[:, :, 0], np.s_[:, :, -1]):
        reached[edge] = background[edge]
    grown = np.empty_like(masks)
    while True:  # grow from the edge through the background, one pixel per step
        np.copyto(grown, reached)
        grown[:, 1:, :] |= reached[:, :-1, :]
        grown[:, :-1, :] |= reached[:, 1:, :]
        grown[:, :, 1:] |= reached[:, :, :-1]
        grown[:, :, :-1] |= reached[:, :, 1:]
        grown &= background
        if np.array_equal(grown, reached):
            return background & ~reached
        reached, grown = grown, reached


def limb_crop_anomaly(content: ImageContent) -> Anomaly | None:
    """An ``out_of_scope`` error for a limb crop (:attr:`ImageContent.limb_crop`)."""
    if not content.limb_crop:
        return None
    return Anomaly(
        AnomalyCode.OUT_OF_SCOPE, Severity.ERROR,
        f"the body is cut by the image edge ({100 * content.border_tissue_fraction:.0f} % of "
        f"the border is tissue) and only {100 * content.air_slice_fraction:.0f} % of slices "
        "hold air inside the body: a limb crop, which the model cannot place",
        details={"border_tissue_fraction": content.border_tissue_fraction,
                 "air_slice_fraction": content.air_slice_fraction,
                 "min_border_tissue": MIN_BORDER_TISSUE,
                 "max_air_slice_fraction": MAX_AIR_SLICE_FRACTION})
