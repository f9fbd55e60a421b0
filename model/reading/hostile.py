"""Rules for files a peer controls, shared by the model's reader and the node's ingest.

Both wings decode headers that anyone on the network may have written; these rules decide
what counts as a malformed file, so that the two cannot drift apart. The node reaches them
through :mod:`model.api`.
"""

from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.tag import BaseTag, Tag

#: What reading a malformed header can raise. pydicom has no single exception type for it;
#: the list comes from fuzzing (tests/fuzz). OSError is among them: pydicom raises it for
#: truncated sequences in memory, not only for the disk.
READ_ERRORS: tuple[type[Exception], ...] = (
    InvalidDicomError, OSError, EOFError, ValueError, AttributeError, KeyError, TypeError,
    IndexError, OverflowError, NotImplementedError, RecursionError, BytesLengthException,
    struct.error, zlib.error,
)
#: :data:`READ_ERRORS` and what decoding PixelData adds (pydicom's handlers raise
#: RuntimeError for a missing decoder or a broken stream).
DECODE_ERRORS: tuple[type[Exception], ...] = (*READ_ERRORS, RuntimeError)

#: Most items of undefined length left without their delimiter that a file may hold. pydicom
#: scans to the end of the file for the delimiter of each such item, so their number times
#: the file size is the parse time: 159 of them in a 1 MB file took it over 20 s. A real
#: file has none (a truncated one, a few).
MAX_UNCLOSED_ITEMS = 8
#: Item start with undefined length and item delimiter, little and big endian.
_UNDEFINED_ITEMS = (b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xff\xfe\xe0\x00\xff\xff\xff\xff")
_ITEM_DELIMITERS = (b"\xfe\xff\x0d\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\x0d\x00\x00\x00\x00")

#: What parsing a header can raise: :data:`READ_ERRORS`, and MemoryError for a length field
#: that asks for more than the machine has.
PARSE_FAILURES: tuple[type[BaseException], ...] = (*READ_ERRORS, MemoryError)
#: Bytes in which the header of a CT file (a few kB) ends, nearly always.
HEADER_PREFIX_BYTES = 64 * 1024
#: The PixelData tag as it lies in a little-endian file.
PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"

#: File meta attributes that are read as text.
_META_KEYWORDS = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID")


def disguised_sequence(ds: Dataset, keywords: tuple[str, ...]) -> str | None:
    """The first of ``keywords`` (or of the file meta UIDs) that holds a sequence, if any.

    A sequence where a string or number belongs is hostile: turning it into text recurses
    through its nesting (seconds and gigabytes at a depth of 1000). The check reads the raw
    element, so it costs no decoding.
    """
    meta = getattr(ds, "file_meta", None) or Dataset()
    for source, names in ((ds, keywords), (meta, _META_KEYWORDS)):
        for keyword, tag in zip(names, _tags(names), strict=True):
            raw = source.get_item(tag)
            if raw is not None and (raw.VR == "SQ" or getattr(raw, "length", 0) == 0xFFFFFFFF):
                return keyword
    return None


@lru_cache(maxsize=64)
def _tags(keywords: tuple[str, ...]) -> tuple[BaseTag, ...]:
    # looked up once per keyword list, not once per file
    return tuple(Tag(keyword) for keyword in keywords)


def unclosed_items(data: bytes) -> str | None:
    """Why parsing ``data`` would take pathologically long; None when it would not.

    Counts items of undefined length and item delimiters in the raw bytes (one linear pass,
    before any parsing): more than :data:`MAX_UNCLOSED_ITEMS` unclosed items are hostile.
    """
    if data.count(b"\xff\xff\xff\xff") <= MAX_UNCLOSED_ITEMS:
        return None  # every undefined length is written FFFFFFFFH: one pass clears most files
    opened = sum(data.count(marker) for marker in _UNDEFINED_ITEMS)
    closed = sum(data.count(marker) for marker in _ITEM_DELIMITERS)
    if opened - closed > MAX_UNCLOSED_ITEMS:
        return f"{opened - closed} sequence items without their delimiter (malformed file)"
    return None


def parse_header(data: bytes) -> tuple[Dataset, int | None]:
    """pydicom's parse of ``data`` up to its pixels, and the offset of its top-level
    PixelData element (None when the parse did not stop at one, e.g. a deflated stream).

    Check ``data`` with :func:`unclosed_items` first. Raises one of :data:`PARSE_FAILURES`.
    """
    stream = io.BytesIO(data)
    ds = dcmread(stream, stop_before_pixels=True)
    stopped_at = stream.tell()
    return ds, stopped_at if data[stopped_at:stopped_at + 4] == PIXEL_DATA_TAG_LE else None


def header_from_prefix(data: bytes) -> tuple[Dataset, int] | None:
    """The header (no pixel data) of a Part 10 file from a prefix of its bytes, and the
    offset of its top-level PixelData element.

    None when the prefix does not hold the whole header (a longer header, a deflated
    stream), looks hostile (:func:`unclosed_items`) or does not parse: the caller then
    parses the whole file and reports what is wrong with it. Checking and parsing a prefix
    costs the same for a 512 kB slice as for a 5 kB one; the hostility check over a whole
    file (its pixels included) took longer than pydicom's parse of the header.
    """
    if unclosed_items(data) is not None:
        return None
    try:
        ds, pixels_at = parse_header(data)
    except PARSE_FAILURES:
        return None
    if pixels_at is None or pixels_at + 12 > len(data):
        return None
    return ds, pixels_at
