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
