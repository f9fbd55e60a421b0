"""Rules for files a peer controls, shared by the model's reader and the node's ingest.

Both wings decode headers that anyone on the network may have written; these rules decide
what counts as a malformed file, so that the two cannot drift apart. The node reaches them
through :mod:`model.api`.
"""

from __future__ import annotations

import struct
import zlib

from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError

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
        for keyword in names:
            raw = source.get_item(keyword)
            if raw is not None and (raw.VR == "SQ" or getattr(raw, "length", 0) == 0xFFFFFFFF):
                return keyword
    return None
