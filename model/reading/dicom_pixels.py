"""Where a DICOM file's pixels are, and how one frame of them becomes Hounsfield units.

The reader parses headers first and decodes pixels only for the frames a series keeps, so
geometry is checked before any pixel is touched and no file is held in memory between the
two passes. Native little-endian pixel data (what scanners and PACS send uncompressed) is
read straight from its offset in the file into a reused buffer and converted to HU in one
numpy pass; both steps release the GIL, so threads decode in parallel. Everything else
(JPEG, JPEG 2000, RLE, big endian, deflate) goes through pydicom's decoders.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from model.reading.header_values import header_value
from model.reading.hostile import unclosed_items
from model.reading.padding import PADDING_HU, header_padding_range

#: Transfer syntaxes whose pixel data are the stored values as they lie in the file.
NATIVE_LITTLE_ENDIAN = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
#: Bytes of the PixelData element's tag, VR and length (explicit VR; implicit VR has 8).
_EXPLICIT_ELEMENT_HEADER, _IMPLICIT_ELEMENT_HEADER = 12, 8
_UNDEFINED_LENGTH = 0xFFFFFFFF

_buffers = threading.local()


@dataclass(eq=False)
class PixelSource:
    """The pixels of one file: at an offset in the file (native) or for pydicom to decode.

    Shared by the frames of a multi-frame file. Decoding through pydicom keeps the decoded
    frames until the last frame is copied out, so a file is decoded only once.
    """

    path: Path
    #: Offset of the top-level PixelData element when the pixels are native little endian
    #: with a defined length; None when pydicom must decode them.
    element_offset: int | None
    implicit_vr: bool
    #: dtype of one stored value ('<u2', '<i2', ...), and the shift that clears unused
    #: high bits (BitsAllocated − BitsStored), as pydicom applies it.
    dtype: np.dtype[np.integer] | None
    unused_bits: int
    #: Inclusive range of stored values the header marks as padding (PixelPaddingValue).
    padding: tuple[int, int] | None
    #: Frames of this file that are still to be decoded (pydicom path: frees the cache).
    pending: int = 0
    _decoded: npt.NDArray[np.integer] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def of_header(cls, path: Path, ds: Dataset, element_offset: int | None) -> PixelSource:
        """Pixel source of a file whose header (no pixel data) is ``ds``.

        ``element_offset`` is where the top-level PixelData element starts, when known.
        """
        meta = getattr(ds, "file_meta", None) or Dataset()
        syntax = meta.get("TransferSyntaxUID")
        signed = int(header_value(ds, "PixelRepresentation") or 0) == 1
        allocated = int(header_value(ds, "BitsAllocated") or 16)
        stored = int(header_value(ds, "BitsStored") or allocated)
        native = (syntax in NATIVE_LITTLE_ENDIAN and allocated in (8, 16, 32)
                  and 0 < stored <= allocated)
        dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}") if native else None
        padding = header_padding_range(
            header_value(ds, "PixelPaddingValue"), header_value(ds, "PixelPaddingRangeLimit"),
            signed=signed,
            bits_stored=stored, bits_allocated=allocated)
        return cls(path=path, element_offset=element_offset if native else None,
                   implicit_vr=syntax == ImplicitVRLittleEndian, dtype=dtype,
                   unused_bits=allocated - stored, padding=padding)

    def stored_frame(self, index: int, shape: tuple[int, int]) -> npt.NDArray[np.integer]:
        """Stored values of frame ``index`` (rows, cols); the array may be reused later.

        Raises one of :data:`~model.reading.hostile.DECODE_ERRORS` (or MemoryError) when
        the pixels cannot be read or decoded.
        """
        if self.element_offset is not None and self.dtype is not None:
            return self._read_native(index, shape)
        with self._lock:
            if self._decoded is None:
                self._decoded = _decode_with_pydicom(self.path).reshape(-1, *shape)
            frames = self._decoded
            self.pending -= 1
            if self.pending <= 0:
                self._decoded = None  # the caller copies the frame out before the next read
        if index >= len(frames):
            raise ValueError(f"frame {index + 1} of {len(frames)} missing from the pixel data")
        frame: npt.NDArray[np.integer] = frames[index]
        return frame

    def _read_native(self, index: int, shape: tuple[int, int]) -> npt.NDArray[np.integer]:
        assert self.element_offset is not None and self.dtype is not None
        out = _buffer(shape, self.dtype)
        header = _IMPLICIT_ELEMENT_HEADER if self.implicit_vr else _EXPLICIT_ELEMENT_HEADER
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.element_offset + header - 4)
            length = int.from_bytes(f.read(4), "little")
            if length == _UNDEFINED_LENGTH:
                raise ValueError("native pixel data of undefined length")
            if (index + 1) * out.nbytes > length:
                raise ValueError(f"pixel data hold {length} bytes, fewer than frame "
                                 f"{index + 1} of {shape[0]}×{shape[1]} needs")
            f.seek(self.element_offset + header + index * out.nbytes)
            view, done = out.data.cast("B"), 0
            while done < out.nbytes:
                n = f.readinto(view[done:])
                if not n:
                    raise ValueError("file ends inside its pixel data")
                done += n
        if self.unused_bits:
            # As pydicom: the bits above BitsStored carry no value (sign-extends signed data).
            np.left_shift(out, self.unused_bits, out=out)
            np.right_shift(out, self.unused_bits, out=out)
        return out


def _buffer(shape: tuple[int, int], dtype: np.dtype[np.integer]) -> npt.NDArray[np.integer]:
    """This thread's reusable buffer for one frame: no allocation and page faults per slice."""
    cache: dict[tuple[tuple[int, int], str], npt.NDArray[np.integer]]
    cache = _buffers.__dict__.setdefault("frames", {})
    key = (shape, dtype.str)
    if key not in cache:
        cache.clear()
        cache[key] = np.empty(shape, dtype)
    return cache[key]


def _decode_with_pydicom(path: Path) -> npt.NDArray[np.integer]:
    """All frames of ``path`` decoded by pydicom (compressed or non-native pixel data)."""
    data = path.read_bytes()
    hostile = unclosed_items(data)
    if hostile is not None:
        raise ValueError(hostile)
    # MemoryError too: a hostile length can ask pydicom for gigabytes.
    try:
        pixels: npt.NDArray[np.integer] = pydicom.dcmread(io.BytesIO(data)).pixel_array
    except MemoryError as exc:
        raise ValueError("pixel data too large to decode") from exc
    return pixels


def frame_to_hu(raw: npt.NDArray[np.integer], slope: float, intercept: float,
                padding: tuple[int, int] | None, plane: npt.NDArray[np.float32]) -> int:
    """Write ``raw`` as HU into ``plane``; returns the pixels set to padding by the header.

    Computed in float32 like ``raw.astype(float32) * slope + intercept``, so HU are
    bit-identical to that (int32 pixels would otherwise be multiplied in float64).
    """
    if slope == 1.0:
        np.add(raw, np.float32(intercept), out=plane, dtype=np.float32, casting="unsafe")
    else:
        np.multiply(raw, np.float32(slope), out=plane, dtype=np.float32, casting="unsafe")
        plane += np.float32(intercept)
    if padding is None:
        return 0
    # Padding marks pixels outside the reconstruction circle, not a measured value; read it
    # as air like the training data.
    mask = (raw == padding[0]) if padding[0] == padding[1] else (
        (raw >= padding[0]) & (raw <= padding[1]))
    n_padding = int(np.count_nonzero(mask))
    if n_padding:
        plane[mask] = PADDING_HU
    return n_padding

