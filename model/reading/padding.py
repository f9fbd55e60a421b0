"""Scanner padding read as air, for every reader.

CT scanners fill the pixels outside the circular reconstruction field of view with a
padding value far below air: −2000, −2048 or −3024 HU, or the lowest stored value. Those
pixels were never measured; the training data hold them as air (−1024 HU), so every reader
maps them to :data:`PADDING_HU` before any check or the network sees them.

Two sources, applied in this order:

1. **The DICOM header** (:func:`header_padding_range`, used by
   :mod:`model.reading.dicom_assembly`): stored values equal to PixelPaddingValue, or
   between it and PixelPaddingRangeLimit (either order). A value that does not fit the
   pixels' representation (an unsigned 63536 beside signed pixels, a negative value beside
   unsigned ones) is read as the same bit pattern in the pixels' representation
   (63536 → −2000), as the writer evidently meant.
2. **The below-air rule** (:func:`pad_below_air`, for DICOM and NIfTI alike): voxels below
   :data:`BELOW_AIR_HU` are padding. Real air, noise included, stays above about −1100 HU,
   so this catches padding whose header value is absent or wrong without touching anything
   measured. When more than :data:`MAX_PADDING_FRACTION` of the volume lies below it, the
   data are not padded CT but shifted or wrongly rescaled, and are left as read for the
   content check (``not_ct_like``) to reject.

A volume in which padding was found carries one warning (:func:`padding_warning`) saying
what fraction was read as padding and why.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: HU given to padding (outside the reconstructed field of view): air, as in the training data.
PADDING_HU = -1024.0

#: Voxels below this are padding whatever the header says (HU). Real air noise stays above
#: about −1100 HU; scanners pad with −2000 HU or less.
BELOW_AIR_HU = -1200.0

#: Largest fraction of a volume the below-air rule may read as padding. Outside an inscribed
#: circle lies 1 − π/4 ≈ 21.5 % of a square slice; far more below air is a shifted or wrongly
#: rescaled volume, not padding.
MAX_PADDING_FRACTION = 0.6


def as_representation(value: int, *, signed: bool, bits_stored: int, bits_allocated: int
                      ) -> int:
    """``value`` as the same bit pattern in the pixels' representation.

    Parameters
    ----------
    value : int
        PixelPaddingValue or PixelPaddingRangeLimit as the header gives it.
    signed : bool
        Whether the pixels are signed (PixelRepresentation 1).
    bits_stored, bits_allocated : int
        Widths of the stored value and of its container.

    Returns
    -------
    int
        ``value`` where it fits the representation; otherwise its two's-complement
        counterpart (63536 → −2000 for signed 16-bit pixels, −2000 → 63536 for unsigned).
    """
    if signed:
        for width in dict.fromkeys((bits_stored, bits_allocated)):
            if 1 << (width - 1) <= value < 1 << width:
                return value - (1 << width)
        return value
    if value < 0:
        width = bits_stored if -(1 << (bits_stored - 1)) <= value else bits_allocated
        return value + (1 << width)
    return value


def header_padding_range(value: object, limit: object, *, signed: bool, bits_stored: int,
                         bits_allocated: int) -> tuple[int, int] | None:
    """Inclusive range of stored values that the header marks as padding.

    Parameters
    ----------
    value, limit : object
        PixelPaddingValue and PixelPaddingRangeLimit as read (None when absent); values
        that are not single integers are ignored.
    signed, bits_stored, bits_allocated
        The pixels' representation (see :func:`as_representation`).

    Returns
    -------
    (int, int) or None
        (lowest, highest) stored padding value; None without a usable PixelPaddingValue.
    """
    first = _integer(value)
    if first is None:
        return None
    ends = [first] if (second := _integer(limit)) is None else [first, second]
    ends = [as_representation(v, signed=signed, bits_stored=bits_stored,
                              bits_allocated=bits_allocated) for v in ends]
    return min(ends), max(ends)


def _integer(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def describe_header_range(padding: tuple[int, int]) -> str:
    """Header padding for messages: ``PixelPaddingValue -2000`` or a range."""
    lo, hi = padding
    if lo == hi:
        return f"PixelPaddingValue {lo} (stored value)"
    return f"PixelPaddingValue/RangeLimit {lo}…{hi} (stored values)"


def pad_below_air(hu: npt.NDArray[np.float32]) -> tuple[int, bool]:
    """Set the voxels below :data:`BELOW_AIR_HU` to :data:`PADDING_HU`, in place.

    Parameters
    ----------
    hu : ndarray, float32
        A whole volume in HU.

    Returns
    -------
    (int, bool)
        Voxels set, and whether the rule was withheld because more than
        :data:`MAX_PADDING_FRACTION` of the volume lies below air (then nothing is set).
    """
    below = hu < BELOW_AIR_HU
    count = int(np.count_nonzero(below))
    if hu.size and count > MAX_PADDING_FRACTION * hu.size:
        return 0, True
    if count:
        hu[below] = PADDING_HU
    return count, False


def padding_warning(n_voxels: int, *, header_voxels: int = 0, header: str | None = None,
                    below_air_voxels: int = 0, withheld: bool = False) -> str | None:
    """The volume warning about padding; None when none was found (or withheld).

    Parameters
    ----------
    n_voxels : int
        Voxels in the volume.
    header_voxels : int
        Voxels set by the header's padding values, described by ``header``.
    below_air_voxels : int
        Voxels set by the below-air rule.
    withheld : bool
        The below-air rule was withheld (:func:`pad_below_air`).
    """
    total = max(n_voxels, 1)
    reasons = []
    if header_voxels:
        reasons.append(f"{100 * header_voxels / total:.1f} % by {header or 'the header'}")
    if below_air_voxels:
        reasons.append(f"{100 * below_air_voxels / total:.1f} % below {BELOW_AIR_HU:g} HU "
                       "(no or a wrong padding value in the header)")
    parts = []
    if reasons:
        share = 100 * (header_voxels + below_air_voxels) / total
        parts.append(f"read {share:.1f} % of voxels as padding outside the field of view "
                     f"(set to {PADDING_HU:g} HU, air): " + "; ".join(reasons))
    if withheld:
        parts.append(f"more than {100 * MAX_PADDING_FRACTION:.0f} % of voxels lie below "
                     f"{BELOW_AIR_HU:g} HU: too many for padding, left as read")
    return "; ".join(parts) or None
