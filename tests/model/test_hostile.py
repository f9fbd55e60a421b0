"""Rules for hostile files shared by the reader and the node (model.reading.hostile)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.headers import BadInstanceError, read_header
from model.reading.dicom import read_dicom_series
from model.reading.hostile import MAX_UNCLOSED_ITEMS, unclosed_items
from tests.fuzz.damage import Layout, Nest, PixelFill, Recipe, encode
from tests.fuzz.generators import SliceSpec, ct_slice


def nested(depth: int, *, closed: bool, fill: int = 0) -> bytes:
    """A CT slice whose SOPInstanceUID holds items nested ``depth`` deep."""
    edits = (Nest(key=0x00091010, depth=depth, defined_length=False, closed=closed),
             *((PixelFill(n_bytes=fill, value=0xFFFF),) if fill else ()))
    return encode(ct_slice(SliceSpec(size=16)), Recipe(edits=edits, layout=Layout()))


def test_closed_nesting_is_not_hostile() -> None:
    assert unclosed_items(nested(200, closed=True)) is None


def test_a_few_unclosed_items_are_tolerated() -> None:
    # A truncated file leaves some items open; parsing it costs a few scans, not thousands.
    assert unclosed_items(nested(MAX_UNCLOSED_ITEMS, closed=False)) is None


def test_many_unclosed_items_are_refused_before_parsing(tmp_path: Path) -> None:
    # Fuzzing found this shape: parsed as is, it held pydicom for over 20 s per file.
    data = nested(159, closed=False, fill=1 << 20)
    reason = unclosed_items(data)
    assert reason is not None and "without their delimiter" in reason
    with pytest.raises(BadInstanceError, match="without their delimiter"):
        read_header(data)
    path = tmp_path / "hostile.dcm"
    path.write_bytes(data)
    result = read_dicom_series([path])
    assert result.volumes == [] and result.headers == []
    assert result.errors == [f"{path}: {reason}"]
