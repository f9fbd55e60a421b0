"""What is done to a valid instance: damage recipes and the encoder that applies them.

Values that are not what their VR says, deleted or contradictory attributes, deeply nested
sequences, pixel data of the wrong length, declared transfer syntaxes that do not match the
bytes, and byte-level damage after encoding (truncation, flipped bytes, lengths of 4 GiB,
swapped VR codes, inserted and cut runs), plus streams of plain garbage. A damage is a small
frozen record, so hypothesis prints a failing input as a readable recipe, replayable by hand
with ``encode(ct_slice(SliceSpec()), recipe)``.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from tests.fuzz.generators import _GROUP_LENGTH_TBD

# --- what is done to it -------------------------------------------------------------------
# Edits are small frozen records so that hypothesis prints a failing input as a readable
# recipe, replayable by hand with ``encode(ct_slice(SliceSpec()), recipe)``.


@dataclass(frozen=True)
class Raw:
    """Element ``key`` replaced by ``value`` under ``vr`` (any two letters: a wrong VR)."""

    key: str | int
    vr: str
    value: bytes


@dataclass(frozen=True)
class Text:
    """Element ``keyword`` set to ``value`` as its dictionary VR, whatever the VR allows."""

    keyword: str
    value: str


@dataclass(frozen=True)
class Number:
    """A binary integer element (US, UL…) or an IS set to ``value`` (wrapped to the VR)."""

    keyword: str
    value: int


@dataclass(frozen=True)
class Delete:
    """Element removed (dataset or file meta)."""

    keyword: str


@dataclass(frozen=True)
class SopClass:
    """Another SOP class and Modality; ``in_meta`` False leaves the file meta disagreeing."""

    uid: str
    modality: str
    in_meta: bool


@dataclass(frozen=True)
class PixelFill:
    """PixelData of ``n_bytes`` bytes (None: unchanged length) of one repeated 16-bit value."""

    n_bytes: int | None
    value: int


@dataclass(frozen=True)
class Nest:
    """A sequence nested ``depth`` deep at ``key``; unclosed items run to the end of file.

    Defined-length nesting stops at :data:`MAX_DEFINED_DEPTH` (it costs O(depth²) to build).
    """

    key: str | int
    depth: int
    defined_length: bool
    closed: bool


@dataclass(frozen=True)
class Encapsulated:
    """Encapsulated (compressed-style) PixelData of ``fragments`` under ``syntax``."""

    syntax: str
    fragments: tuple[bytes, ...]


Edit = Raw | Text | Number | Delete | SopClass | PixelFill | Nest | Encapsulated


@dataclass(frozen=True)
class Truncate:
    """The stream cut at ``at`` (modulo its length + 1)."""

    at: int


@dataclass(frozen=True)
class Flip:
    """One byte at ``at`` XORed with ``mask``."""

    at: int
    mask: int


@dataclass(frozen=True)
class Insert:
    """``data`` inserted at ``at``."""

    at: int
    data: bytes


@dataclass(frozen=True)
class Cut:
    """``length`` bytes removed at ``at``."""

    at: int
    length: int


@dataclass(frozen=True)
class Repeat:
    """``length`` bytes at ``at`` repeated ``times`` times in place."""

    at: int
    length: int
    times: int


@dataclass(frozen=True)
class HugeLength:
    """The declared length of the element ``key`` overwritten (e.g. 0xFFFFFFF0)."""

    key: str | int
    length: int


@dataclass(frozen=True)
class SwapVR:
    """The two VR bytes of the element ``key`` overwritten (explicit VR only)."""

    key: str | int
    vr: bytes


ByteEdit = Truncate | Flip | Insert | Cut | Repeat | HugeLength | SwapVR

#: (implicit VR, little endian, transfer syntax UID) of the encodings the bytes can be in.
ENCODINGS: dict[str, tuple[bool, bool, str]] = {
    "explicit-le": (False, True, ExplicitVRLittleEndian),
    "implicit-le": (True, True, ImplicitVRLittleEndian),
    "explicit-be": (False, False, ExplicitVRBigEndian),
    "deflated": (False, True, DeflatedExplicitVRLittleEndian),
}


@dataclass(frozen=True)
class Layout:
    """How the dataset is framed: its encoding, what the file meta claims, what is present."""

    encoding: str = "explicit-le"
    #: TransferSyntaxUID written in the file meta; None: the encoding's own.
    declared: str | None = None
    preamble: bool = True
    meta: bool = True


@dataclass(frozen=True)
class Recipe:
    """One adversarial input: edits to the dataset, its framing, then damage to the bytes."""

    edits: tuple[Edit, ...] = ()
    layout: Layout = field(default_factory=Layout)
    damage: tuple[ByteEdit, ...] = ()


@dataclass(frozen=True)
class Garbage:
    """Bytes that never were a dataset, optionally behind a valid preamble and prefix."""

    data: bytes
    dicm: bool


_BINARY_VRS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "US or SS": "H", "AT": "I"}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: Defined-length nesting is built inside out in O(depth²); deeper ones use undefined length.
MAX_DEFINED_DEPTH = 3000


def _tag(key: str | int) -> int:
    if isinstance(key, int):
        return key
    tag = tag_for_keyword(key)
    if tag is None:
        raise KeyError(f"unknown keyword {key}")
    return int(tag)


def _holder(ds: Dataset, tag: int) -> Dataset:
    # Group 2 lives in the file meta, which pydicom keeps apart from the dataset.
    return ds.file_meta if tag >> 16 == 2 else ds


def _put_raw(ds: Dataset, tag: int, vr: str, value: bytes, *, undefined: bool = False) -> None:
    if vr.encode("latin-1", "replace") not in _LONG_VRS and len(value) > 0xFFFE:
        value = value[:0xFFFE]  # a 2-byte length cannot say more; HugeLength lies instead
    length = 0xFFFFFFFF if undefined else len(value)
    _holder(ds, tag)[tag] = RawDataElement(Tag(tag), vr, length, value, 0, False, True)


def _element_header(tag: int, vr: bytes, length: int, implicit: bool, little: bool) -> bytes:
    """Tag, VR (explicit only) and length field of one element, as the encoding lays it out."""
    order = "<" if little else ">"
    head = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
    if implicit or tag >> 16 == 0xFFFE:  # items and delimiters never carry a VR
        return head + struct.pack(order + "I", length)
    if vr in _LONG_VRS:
        return head + vr + b"\x00\x00" + struct.pack(order + "I", length)
    return head + vr + struct.pack(order + "H", length)


def nested_sequence(tag: int, depth: int, *, defined_length: bool, closed: bool,
                    implicit: bool, little: bool) -> tuple[bytes, int]:
    """Value bytes and declared length of a sequence holding itself ``depth`` times.

    Undefined lengths are built in O(depth) so that depths of tens of thousands stay cheap;
    defined lengths need the inner size first and are built inside out (depth ≤ a few
    thousand).
    """
    inner = _element_header(0x00080100, b"SH", 2, implicit, little) + b"X "
    if not defined_length:
        open_ = (_element_header(_ITEM, b"", 0xFFFFFFFF, implicit, little)
                 + _element_header(tag, b"SQ", 0xFFFFFFFF, implicit, little))
        close = (_element_header(_SEQ_END, b"", 0, implicit, little)
                 + _element_header(_ITEM_END, b"", 0, implicit, little))
        value = (_element_header(_ITEM, b"", 0xFFFFFFFF, implicit, little)
                 + open_ * (depth - 1) + inner)
        if closed:
            value += close * (depth - 1) + _element_header(_ITEM_END, b"", 0, implicit, little)
            value += _element_header(_SEQ_END, b"", 0, implicit, little)
        return value, 0xFFFFFFFF
    content = inner
    for level in range(depth):
        item = _element_header(_ITEM, b"", len(content), implicit, little) + content
        if level == depth - 1:
            return item, len(item)
        content = _element_header(tag, b"SQ", len(item), implicit, little) + item
    raise AssertionError("depth must be positive")


def _pack_number(vr: str, value: int, little: bool) -> bytes:
    code = _BINARY_VRS[vr]
    bits = struct.calcsize(code) * 8
    wrapped = value % (1 << bits)
    if code.islower() and wrapped >= 1 << (bits - 1):
        wrapped -= 1 << bits
    return struct.pack(("<" if little else ">") + code, wrapped)


def _even(text: bytes) -> bytes:
    return text + b" " if len(text) % 2 else text


def apply_edit(ds: Dataset, edit: Edit, implicit: bool, little: bool) -> None:
    """Apply one dataset-level edit in place (value validation must be off)."""
    match edit:
        case Raw(key, vr, value):
            _put_raw(ds, _tag(key), vr, value)
        case Text(keyword, value):
            tag = _tag(keyword)
            vr = dictionary_VR(tag)
            _put_raw(ds, tag, vr if len(vr) == 2 else "OB",
                     value.encode("utf-8", "surrogatepass"))
        case Number(keyword, value):
            tag = _tag(keyword)
            vr = dictionary_VR(tag)
            if vr in _BINARY_VRS:
                _put_raw(ds, tag, "US" if vr == "US or SS" else vr,
                         _pack_number(vr, value, little or tag >> 16 == 2))
            else:
                _put_raw(ds, tag, vr, _even(str(value).encode()))
        case Delete(keyword):
            tag = _tag(keyword)
            holder = _holder(ds, tag)
            if tag in holder:
                del holder[tag]
        case SopClass(uid, modality, in_meta):
            # Raw writes only: assigning through pydicom would decode earlier damage.
            _put_raw(ds, 0x00080016, "UI", _even(uid.encode()))
            _put_raw(ds, 0x00080060, "CS", _even(modality.encode()))
            if in_meta:
                _put_raw(ds, 0x00020002, "UI", _even(uid.encode()))
        case PixelFill(n_bytes, value):
            size = n_bytes or 0
            if n_bytes is None:
                element = ds.get_item(0x7FE00010)
                size = 0 if element is None else len(element.value or b"")
            word = struct.pack("<H" if little else ">H", value & 0xFFFF)
            _put_raw(ds, 0x7FE00010, "OW", (word * (size // 2 + 1))[:size])
        case Nest(key, depth, defined_length, closed):
            tag = _tag(key)
            if defined_length:
                depth = min(depth, MAX_DEFINED_DEPTH)
            value, length = nested_sequence(tag, depth, defined_length=defined_length,
                                            closed=closed, implicit=implicit, little=little)
            _holder(ds, tag)[tag] = RawDataElement(Tag(tag), "SQ", length, value, 0, False,
                                                   True)
        case Encapsulated(syntax, fragments):
            _put_raw(ds, 0x00020010, "UI", _even(syntax.encode()))
            value = _element_header(_ITEM, b"", 0, implicit, little)  # empty offset table
            for fragment in fragments:
                fragment = _even(fragment)
                value += _element_header(_ITEM, b"", len(fragment), implicit, little) + fragment
            value += _element_header(_SEQ_END, b"", 0, implicit, little)
            _put_raw(ds, 0x7FE00010, "OB", value, undefined=True)


def _locate(data: bytes, key: str | int, layout: Layout, start: int
            ) -> tuple[int, bool, str]:
    """Offset of the first header of element ``key``, whether its VR is explicit, byte order.

    A plain search for the tag bytes: a hit inside some value just damages another spot.
    """
    implicit, little, _ = ENCODINGS[layout.encoding]
    tag = _tag(key)
    in_meta = tag >> 16 == 2  # the file meta is always explicit VR little endian
    order = "<" if little or in_meta else ">"
    at = data.find(struct.pack(order + "HH", tag >> 16, tag & 0xFFFF), 0 if in_meta else start)
    return at, in_meta or not implicit, order


def apply_damage(data: bytes, edit: ByteEdit, layout: Layout, start: int = 132) -> bytes:
    """Apply one byte-level edit (positions are taken modulo the current length).

    ``start``: where dataset elements are searched from (after preamble and prefix).
    """
    n = len(data)
    match edit:
        case Truncate(at):
            return data[: at % (n + 1)]
        case Flip(at, mask):
            if not n:
                return data
            i = at % n
            return data[:i] + bytes([data[i] ^ (mask or 1)]) + data[i + 1:]
        case Insert(at, extra):
            i = at % (n + 1)
            return data[:i] + extra + data[i:]
        case Cut(at, length):
            i = at % (n + 1)
            return data[:i] + data[i + length:]
        case Repeat(at, length, times):
            i = at % (n + 1)
            return data[:i] + data[i:i + length] * times + data[i + length:]
        case SwapVR(key, vr):
            p, explicit, _ = _locate(data, key, layout, start)
            if p < 0 or not explicit:
                return data
            return data[:p + 4] + vr[:2].ljust(2, b"\x00") + data[p + 6:]
        case HugeLength(key, length):
            p, explicit, order = _locate(data, key, layout, start)
            if p < 0:
                return data
            if explicit and data[p + 4:p + 6] not in _LONG_VRS:
                at, field_ = p + 6, struct.pack(order + "H", length & 0xFFFF)
            else:
                at = p + (8 if explicit else 4)
                field_ = struct.pack(order + "I", length & 0xFFFFFFFF)
            return data[:at] + field_ + data[at + len(field_):]
    raise AssertionError(f"unknown byte edit {edit!r}")


def _pop_charset(ds: Dataset, implicit: bool, little: bool) -> bytes:
    """Remove (0008,0005) from ``ds`` and return it encoded."""
    element = ds.get_item(0x00080005)
    if element is None:
        return b""
    del ds[0x00080005]
    if element.is_raw:
        vr, value = str(element.VR), bytes(element.value or b"")
    else:
        vr, value = "CS", _even(str(element.value).encode("utf-8", "surrogatepass"))
    return _element_header(0x00080005, vr.encode("latin-1", "replace"), len(value), implicit,
                           little) + value


def encode(ds: Dataset, recipe: Recipe | Garbage, *, keep_meta: bool = False) -> bytes:
    """The bytes of ``ds`` after ``recipe`` (a Part 10 stream unless the recipe says not).

    ``keep_meta`` confines the byte damage to the dataset after the file meta (for senders
    that must read the meta to send the file at all).
    """
    if isinstance(recipe, Garbage):
        return (b"\x00" * 128 + b"DICM" if recipe.dicm else b"") + recipe.data
    layout = recipe.layout
    implicit, little, syntax = ENCODINGS[layout.encoding]
    with pydicom_config.disable_value_validation():
        ds.file_meta.TransferSyntaxUID = UID(syntax if layout.declared is None
                                             else layout.declared)
        for edit in recipe.edits:
            apply_edit(ds, edit, implicit, little)
        # SpecificCharacterSet is written by hand, in front (it is the first tag): pydicom
        # would try to look a hostile value up as a codec while writing the rest.
        charset = _pop_charset(ds, implicit, little)
        body = DicomBytesIO()
        body.is_implicit_VR, body.is_little_endian = implicit, little
        body.write(charset)
        # Same "original" encoding as the output: raw elements are written byte for byte
        # instead of being decoded and re-encoded (which would undo the damage).
        ds.set_original_encoding(implicit, little, ds._character_set)
        write_dataset(body, ds)
        meta = ds.file_meta
        group_length = meta.get_item(0x00020000)
        computed = group_length is not None and not group_length.is_raw \
            and group_length.value == _GROUP_LENGTH_TBD
        if computed:
            del meta[0x00020000]
        meta_io = DicomBytesIO()
        meta_io.is_implicit_VR, meta_io.is_little_endian = False, True
        meta.set_original_encoding(False, True, meta._character_set)
        write_dataset(meta_io, meta)
    meta_bytes = meta_io.getvalue()
    if computed:
        meta_bytes = _element_header(0x00020000, b"UL", 4, False, True) + struct.pack(
            "<I", len(meta_bytes)) + meta_bytes
    payload = body.getvalue()
    if layout.encoding == "deflated":
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        payload = compressor.compress(payload) + compressor.flush()
    head = (b"\x00" * 128 + b"DICM" if layout.preamble else b"") \
        + (meta_bytes if layout.meta else b"")
    if keep_meta:
        for damage in recipe.damage:
            payload = apply_damage(payload, damage, layout, start=0)
        return head + payload
    data = head + payload
    for damage in recipe.damage:
        data = apply_damage(data, damage, layout)
    return data


