"""Rules for hostile files shared by the reader and the node (model.reading.hostile)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.headers import BadInstanceError, read_header
from model.reading.dicom import read_dicom_series
from model.reading.hostile import (
    HEADER_PREFIX_BYTES,
    MAX_UNCLOSED_ITEMS,
    PIXEL_DATA_TAG_LE,
    header_from_prefix,
    unclosed_items,
)
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


def test_only_the_header_part_of_a_full_size_slice_is_checked(tmp_path: Path) -> None:
    # Pixel values can spell an item start (FFFE,E000) of undefined length. A 512² slice is
    # checked and parsed within its first HEADER_PREFIX_BYTES, by the node and the reader
    # alike, so such values further on are not taken for structure (nor scanned for them).
    data = bytearray(encode(ct_slice(SliceSpec(size=512)), Recipe(edits=(), layout=Layout())))
    marker = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" * (4 * MAX_UNCLOSED_ITEMS)
    data[-len(marker):] = marker
    assert len(data) > HEADER_PREFIX_BYTES + len(marker)
    assert unclosed_items(bytes(data)) is not None  # the whole file looks hostile
    parsed = header_from_prefix(bytes(data[:HEADER_PREFIX_BYTES]))
    assert parsed is not None and data[parsed[1]:parsed[1] + 4] == PIXEL_DATA_TAG_LE
    assert read_header(bytes(data)).SOPInstanceUID == parsed[0].SOPInstanceUID
    path = tmp_path / "slice.dcm"
    path.write_bytes(data)
    assert read_dicom_series([path]).errors == []


def test_a_header_longer_than_the_prefix_is_read_whole() -> None:
    ds = ct_slice(SliceSpec(size=16))
    block = ds.private_block(0x0029, "BPR TEST", create=True)
    block.add_new(0x10, "OB", bytes(HEADER_PREFIX_BYTES + 1000))
    data = encode(ds, Recipe(edits=(), layout=Layout()))
    assert header_from_prefix(data[:HEADER_PREFIX_BYTES]) is None
    assert read_header(data).SOPInstanceUID == ds.SOPInstanceUID
