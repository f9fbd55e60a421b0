"""Header values converted once per distinct encoding, not once per file."""

from __future__ import annotations

from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

#: Converted values of raw header elements, keyed by their encoded bytes. The files of a
#: series repeat most attributes (matrix, spacing, orientation, rescale), and converting
#: values is most of the cost of reading a header.
_converted: dict[tuple[Any, ...], Any] = {}
_MISSING = object()
#: Entries kept before the cache starts afresh (a few series' worth of distinct values).
CONVERTED_VALUES_MAX = 4096


def header_value(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword, default)``, converting each distinct encoded value only once.

    Only for attributes that repeat across files; a value unique to each file (a UID, a
    position) would just fill the cache.
    """
    tag = tag_for_keyword(keyword)
    element = None if tag is None else ds.get_item(tag)
    if element is None:
        return default
    if not isinstance(element, RawDataElement):
        return element.value
    key = (tag, element.VR, element.value, element.is_implicit_VR, element.is_little_endian)
    cached = _converted.get(key, _MISSING)  # one lookup: another thread may clear the cache
    if cached is not _MISSING:
        return cached
    value = ds[tag].value
    if len(_converted) >= CONVERTED_VALUES_MAX:
        _converted.clear()
    _converted[key] = value
    return value


def unique_value(ds: Dataset, keyword: str, vr: str) -> Any:
    """``ds.get(keyword)`` for a value unique to each file (a UID, a number, a position),
    with plain text read straight from the header's bytes.

    pydicom's conversion of one such value costs some 40 µs (validation, value classes);
    a series of 1,000 files asks for several per file. The fast path takes a raw element
    of VR ``vr`` (or implicit) whose bytes are ASCII: a ``UI`` gives its text, an ``IS``
    an int, a ``DS`` one float or a list of them. Anything else, a malformed value
    included, goes through pydicom as before, so errors are reported as they were.
    """
    tag = tag_for_keyword(keyword)
    element = None if tag is None else ds.get_item(tag)
    if element is None:
        return None
    if (isinstance(element, RawDataElement) and element.VR in (vr, None)
            and isinstance(element.value, bytes)):
        try:
            return _parse_text(element.value.decode("ascii"), vr)
        except (UnicodeDecodeError, ValueError):
            pass
    return ds.get(keyword)


def _parse_text(text: str, vr: str) -> Any:
    parts = text.rstrip(" \0").split("\\")
    if vr == "UI":
        if len(parts) != 1:
            raise ValueError("several UIDs")
        return parts[0]
    if vr == "IS" and len(parts) == 1:
        return int(parts[0])
    if vr == "DS":
        numbers = [float(p) for p in parts]
        return numbers[0] if len(numbers) == 1 else numbers
    raise ValueError(f"no fast path for {vr}")
