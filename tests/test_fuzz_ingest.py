"""Fuzzing the dataset-to-index path and the series-to-volume path with adversarial files.

Every input starts as a valid small CT instance built with pydicom here and is then damaged
in the ways a hostile or broken peer could: values that are not what their VR says (wrong
VRs, numbers that are not numbers, UIDs such as ``..`` or ``../../x``), deleted or
contradictory attributes (SOP class differing from the file meta, non-image SOP classes),
deeply nested sequences, pixel data of the wrong length or with values overflowing
BitsStored, inconsistent geometry across a series, declared transfer syntaxes that do not
match the bytes, and byte-level damage after encoding (truncation, flipped bytes, lengths of
4 GiB, swapped VR codes, inserted and cut runs), plus streams of plain garbage.

Properties checked, one input at a time:

- **dataset → index** (:func:`dicom_node.headers.read_header` + :func:`~dicom_node.ingest.ingest`
  into a fresh :class:`~dicom_node.storage.FileStore`): either ``BadInstanceError`` with a
  failure status and nothing written, or exactly one file, at a server-generated
  ``YYYY/MM/DD/<32 hex>.dcm`` path strictly under the storage root, holding the bytes
  received, with the index row that points at it (a series that is not CT is marked
  SKIPPED with its reason). No other exception escapes, and no file ever appears anywhere
  else in the sandbox the test runs in (the working directory included).
- **series → volume** (:func:`model.reading.dicom.read_dicom_series`): never raises; bad files
  and rejected series come back as error messages, volumes keep their invariants.
- **series → analysis** (:func:`model.api.analyze_series` with the shipped model): returns,
  or raises ``CTInputError``; nothing else.
- **worker**: a series made of what ingest accepted, queued and run through the node's
  :class:`~dicom_node.analysis_worker.AnalysisWorker` (SR writing included), ends DONE or
  FAILED with a reason — never left PROCESSING by an escaped exception.

Every input must also finish within :data:`EXAMPLE_SECONDS` (a hang is a denial of
service), and the module runs with its address space capped at :data:`ADDRESS_SPACE_HEADROOM`
above its start: a header that makes the code reserve gigabytes fails as the MemoryError it
would be on a host without overcommit, instead of going unnoticed (or swapping).

The default run is bounded for CI (see ``*_EXAMPLES``: ≥ 10,000 generated inputs plus the
hand-written ones, about a minute on two cores) and reports failures unshrunk;
``BPR_SOAK=1`` multiplies every example count by 20 (``BPR_SOAK=<n>`` with n > 1 by n) and
shrinks failures for a soak run. Generation is derandomized, so a CI failure replays
identically. The last test prints how many inputs each property tried and what became of
them.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import shutil
import signal
import struct
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import count
from pathlib import Path
from types import FrameType
from typing import TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    BasicTextSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EncapsulatedPDFStorage,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    KeyObjectSelectionDocumentStorage,
    LegacyConvertedEnhancedCTImageStorage,
    MediaStorageDirectoryStorage,
    MRImageStorage,
    RawDataStorage,
    RLELossless,
    RTStructureSetStorage,
    SecondaryCaptureImageStorage,
)
from sqlalchemy import select

from dicom_node.analysis_worker import AnalysisWorker
from dicom_node.config import config_from_dict
from dicom_node.headers import BadInstanceError, is_valid_uid, read_header
from dicom_node.index import Index, Instance, Series, SeriesState
from dicom_node.ingest import ingest
from dicom_node.storage import FileStore
from model.api import CTInputError, analyze_series
from model.reading.dicom import DicomReadResult, read_dicom_series
from model.scoring.inference import BodyPartRegressor


def _soak_factor() -> int:
    """Example-count multiplier from ``BPR_SOAK`` (unset/0: CI run; 1: ×20; n > 1: ×n)."""
    raw = os.environ.get("BPR_SOAK", "").strip()
    if raw in ("", "0"):
        return 1
    if not raw.isdigit():
        raise ValueError(f"BPR_SOAK must be a non-negative integer, got {raw!r}")
    return 20 if raw == "1" else int(raw)


SOAK = _soak_factor()
#: Inputs per property in the CI run (× SOAK). Sized so that the whole module stays near a
#: minute on two cores: ingest costs ~4 ms an input, a series read ~9 ms, an analysis of
#: 8–12 slices of 64² 30–250 ms (depending on what else the cores run).
INDEX_EXAMPLES = 8400 * SOAK
READ_EXAMPLES = 1500 * SOAK
ANALYSIS_EXAMPLES = 150 * SOAK
#: Series stored and analyzed by the node's worker (SR included), ~0.1–0.5 s each.
WORKER_EXAMPLES = 60 * SOAK
#: The issue asks for at least this many adversarial inputs per CI run.
REQUIRED_TOTAL = 10_000
#: One input taking longer than this is a denial of service, reported as a failure.
EXAMPLE_SECONDS = 10.0
#: Address space the process may grow by while fuzzing: turns a header that claims a
#: terabyte image into a prompt MemoryError instead of swapping the shared machine to death.
ADDRESS_SPACE_HEADROOM = 4 << 30

SERVER_NAME = re.compile(r"^\d{4}/\d{2}/\d{2}/[0-9a-f]{32}\.dcm$")
ANALYZED = ("CT",)

# Hostile values make pydicom warn on almost every input; that is expected, not news.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")
#: What each property did with its inputs ("<property>: <outcome>" → count).
OUTCOMES: Counter[str] = Counter()
_uids = count(1)
T = TypeVar("T")


def fresh_uid() -> str:
    """A valid UID never used before in this process (so most inputs are not duplicates)."""
    return f"2.25.{os.getpid()}{next(_uids):09d}"


# --- the valid starting point -------------------------------------------------------------


def phantom_plane(size: int) -> np.ndarray:
    """Stored values (HU + 1024, uint16) of an axial slice: air, body, lungs and a spine."""
    yy, xx = (np.mgrid[0:size, 0:size] - (size - 1) / 2) / (size / 2)
    hu = np.full((size, size), -1000.0)
    hu[(xx / 0.8) ** 2 + (yy / 0.55) ** 2 <= 1] = 40.0
    for side in (-1, 1):
        hu[((xx - side * 0.35) / 0.25) ** 2 + (yy / 0.35) ** 2 <= 1] = -820.0
    hu[xx**2 + (yy - 0.35) ** 2 <= 0.015] = 700.0
    return (hu + 1024.0).astype(np.uint16)


@dataclass(frozen=True)
class SliceSpec:
    """Geometry and identity of one generated CT slice (the series-level knobs)."""

    z: float = 0.0
    instance: int = 1
    size: int = 8
    spacing: tuple[str, str] = ("6", "6")
    orientation: tuple[str, ...] = ("1", "0", "0", "0", "1", "0")
    series_uid: str = "2.25.1"
    study_uid: str = "2.25.2"
    frame_of_reference_uid: str = "2.25.3"
    sop_uid: str | None = None
    localizer: bool = False
    rescale: tuple[str, str] = ("1", "-1024")


def ct_slice(spec: SliceSpec) -> Dataset:
    """A valid single-frame CT Image Storage instance (file meta and preamble included)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if spec.localizer else "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = spec.sop_uid or fresh_uid()
    ds.StudyDate = ds.SeriesDate = "20240102"
    ds.StudyTime = "030405"
    ds.AccessionNumber = "ACC1"
    ds.Modality = "CT"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "fuzz"
    ds.SeriesDescription = "fuzz series"
    ds.PatientName = "Fuzz^Test"
    ds.PatientID = "FUZZ-1"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "5"
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = spec.instance
    half = (spec.size - 1) / 2 * float(spec.spacing[0])
    # The slice centre sits on the z axis, like a scanner's reconstruction centre.
    ds.ImagePositionPatient = [f"{-half:g}", f"{-half:g}", f"{spec.z:g}"]
    ds.ImageOrientationPatient = list(spec.orientation)
    ds.FrameOfReferenceUID = spec.frame_of_reference_uid
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = spec.size
    ds.PixelSpacing = list(spec.spacing)
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = spec.rescale[1], spec.rescale[0]
    ds.RescaleType = "HU"
    ds.PixelData = phantom_plane(spec.size).tobytes()
    ds["PixelData"].VR = "OW"  # the encoder below writes VRs as they are, never guesses
    _add_meta(ds)
    return ds


def enhanced_ct(specs: Sequence[SliceSpec]) -> Dataset:
    """A valid Enhanced CT multi-frame instance with one frame per spec (geometry shared)."""
    ref = specs[0]
    ds = ct_slice(ref)
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                    "RescaleIntercept", "RescaleSlope", "RescaleType", "SliceThickness"):
        del ds[keyword]
    ds.NumberOfFrames = len(specs)
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([_item(PixelSpacing=list(ref.spacing),
                                                        SliceThickness="5")])
    shared.PlaneOrientationSequence = DicomSequence(
        [_item(ImageOrientationPatient=list(ref.orientation))])
    shared.PixelValueTransformationSequence = DicomSequence(
        [_item(RescaleIntercept=ref.rescale[1], RescaleSlope=ref.rescale[0], RescaleType="HU")])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    half = (ref.size - 1) / 2 * float(ref.spacing[0])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([
        _item(PlanePositionSequence=DicomSequence(
            [_item(ImagePositionPatient=[f"{-half:g}", f"{-half:g}", f"{s.z:g}"])]))
        for s in specs])
    ds.PixelData = np.stack([phantom_plane(ref.size)] * len(specs)).tobytes()
    ds["PixelData"].VR = "OW"
    _add_meta(ds)
    return ds


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


#: Placeholder for a group length that :func:`encode` computes.
_GROUP_LENGTH_TBD = 0xDEADBEEF


def _add_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = _GROUP_LENGTH_TBD
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128


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


# --- strategies ---------------------------------------------------------------------------

UID_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
                "FrameOfReferenceUID", "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                "TransferSyntaxUID")
EVIL_UIDS = (
    "..", "../../x", "1.2.3/../../etc", "../../../../../../tmp/evil", "/etc/passwd",
    "1.2.3\\..\\..\\x", ".", "", "\x00", "\x00" * 64, "1.2.3\x00", "1.2.3\x00\x00\x00",
    " 1.2.3 ", "1." + "2" * 63, "1." + "2" * 62, "1.2.03", "1..2", "1.2.", ".1.2", "1.2.3\n",
    "C:\\Windows\\x", "%2e%2e%2fx", "１.２", "1.2.3" * 200, "~", "$(touch pwned)", "NaN",
    "1.2.840.10008.5.1.4.1.1.2", "0", "00", "1.2.3.4\\5.6.7", "x" * 70000,
)
NUMBER_KEYWORDS = ("InstanceNumber", "SeriesNumber", "SliceThickness", "RescaleSlope",
                   "RescaleIntercept", "NumberOfFrames", "PixelSpacing", "ImagePositionPatient",
                   "ImageOrientationPatient", "PixelPaddingValue", "StudyID")
EVIL_NUMBERS = (
    "nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e-400", "99999999999999999999",
    "-99999999999999999999", "9" * 400, "", " ", "\\", "\\\\\\", "1\\2", "1\\2\\3\\4\\5\\6\\7",
    "abc", "0x10", "1,5", "\x00", "0", "-0", "+1", "1e308\\1e308\\1e308", "nan\\nan\\nan",
    "0\\0\\0\\0\\0\\0", "1\\0\\0\\0\\0\\1", "0\\1\\0\\0\\0\\-1", "1\\0\\0\\1\\0\\0",
    "1e-300\\1e-300", "1e300\\1e300", "-1\\-1", "0\\0", "2147483648", "-2147483649", "1.5",
    "4294967296", "65536", "1e6\\1e6", "1e-7\\0\\0\\0\\1e-7\\0",
)
TEXT_KEYWORDS = ("PatientName", "PatientID", "StudyDate", "StudyTime", "Modality",
                 "BodyPartExamined", "SeriesDescription", "StudyDescription", "AccessionNumber",
                 "SpecificCharacterSet", "ImageType", "PhotometricInterpretation",
                 "ReferringPhysicianName", "PatientSex", "RescaleType", "ImplementationClassUID")
EVIL_TEXTS = (
    "\x00" * 16, "ISO_IR 192", "ISO 2022 IR 87", "ISO 2022 IR 149\\ISO 2022 IR 87", "GB18030",
    "bogus charset", "\\" * 64, "\x1b$B\x1b(B", "=?utf-8?", "A" * 64, "A" * 5000,
    "ORIGINAL\\PRIMARY\\LOCALIZER", "CT", "ct", "MR", "", "../../etc/passwd", "%s%s%n",
    "\ud800", "Doe^Jane=山田^太郎=やまだ^たろう", "\x7f\x80\xff",
)
INTEGER_KEYWORDS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                    "PixelRepresentation", "SamplesPerPixel", "PlanarConfiguration",
                    "FileMetaInformationGroupLength", "InstanceNumber", "SeriesNumber",
                    "NumberOfFrames", "PixelPaddingValue")
EVIL_INTEGERS = (0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 31, 32, 33, 64, 255, 256, 4095, 4096,
                 32767, 32768, 65535, 65536, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**32 + 1,
                 999_999_999, 10**19, -(10**19))
VRS = ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD",
       "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI",
       "UL", "UN", "UR", "US", "UT", "UV", "XX", "\x00\x00", "  ", "ss")
BASE_KEYWORDS = ("SpecificCharacterSet", "ImageType", "SOPClassUID", "SOPInstanceUID",
                 "StudyDate", "Modality", "PatientName", "PatientID", "BodyPartExamined",
                 "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "InstanceNumber",
                 "ImagePositionPatient", "ImageOrientationPatient", "FrameOfReferenceUID",
                 "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns",
                 "PixelSpacing", "BitsAllocated", "BitsStored", "HighBit",
                 "PixelRepresentation", "RescaleIntercept", "RescaleSlope", "PixelData",
                 "SliceThickness", "FileMetaInformationGroupLength", "MediaStorageSOPClassUID",
                 "MediaStorageSOPInstanceUID", "TransferSyntaxUID", "ImplementationClassUID")
OTHER_TAGS = (0x00091001, 0x00080000, 0x7FE00000, 0xFFFEE000, 0xFFFEE0DD, 0x00280008,
              0x52009229, 0x52009230, 0x00081140, 0x0002FFFF, 0x7FE00008, 0xFFFFFFFF)
SOP_CLASSES = (CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage,
               MRImageStorage, SecondaryCaptureImageStorage, BasicTextSRStorage,
               RTStructureSetStorage, EncapsulatedPDFStorage, RawDataStorage,
               GrayscaleSoftcopyPresentationStateStorage, KeyObjectSelectionDocumentStorage,
               MediaStorageDirectoryStorage, "1.2.840.10008.1.1", "1.2.3.4")
MODALITIES = ("CT", "MR", "SR", "RTSTRUCT", "OT", "PR", "KO", "DOC", "", "ct", "CT\\MR",
              "C" * 20)
SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, JPEG2000Lossless, JPEGLSLossless,
            JPEGLosslessSV1, RLELossless, "1.2.840.10008.1.2.4.201", "1.2.3.4.5", "", "\x00",
            "../../x")
SEQUENCE_TAGS: tuple[str | int, ...] = ("ReferencedImageSequence",
                                        "SharedFunctionalGroupsSequence",
                                        "PerFrameFunctionalGroupsSequence", "SOPInstanceUID",
                                        0x00091010)
DEPTHS = (1, 2, 8, 64, 200, 500, 1000, 3000, 20000)
HUGE = (0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFF0, 0x7FFFFFFF, 0x80000000, 1 << 30, 0xFFFF, 0xFFFE,
        0x10001, 3, 1)

positions = st.integers(0, 4096)
uid_text = st.sampled_from(EVIL_UIDS) | st.text(max_size=80) | st.from_regex(
    r"[0-9.]{1,80}", fullmatch=True)
number_text = st.sampled_from(EVIL_NUMBERS) | st.builds(
    lambda xs: "\\".join(repr(x) for x in xs),
    st.lists(st.floats(width=64), min_size=0, max_size=7)) | st.text(max_size=24)
free_text = st.sampled_from(EVIL_TEXTS) | st.text(max_size=100)
raw_value = st.sampled_from((b"", b"\x00", b"\xff" * 8, b"1\\2\\3", b"nan", b"\x00\x00\x00\x80",
                             b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xff\xfe\xe0\xdd")) \
    | st.binary(max_size=48)

edits: st.SearchStrategy[Edit] = st.one_of(
    st.builds(Text, st.sampled_from(UID_KEYWORDS), uid_text),
    st.builds(Text, st.sampled_from(NUMBER_KEYWORDS), number_text),
    st.builds(Text, st.sampled_from(TEXT_KEYWORDS), free_text),
    st.builds(Number, st.sampled_from(INTEGER_KEYWORDS),
              st.sampled_from(EVIL_INTEGERS) | st.integers(-(2**33), 2**33)),
    st.builds(Raw, st.sampled_from(BASE_KEYWORDS) | st.sampled_from(OTHER_TAGS),
              st.sampled_from(VRS), raw_value),
    st.builds(Delete, st.sampled_from(BASE_KEYWORDS)),
    st.builds(SopClass, st.sampled_from(SOP_CLASSES), st.sampled_from(MODALITIES),
              st.booleans()),
    st.builds(PixelFill, st.none() | st.sampled_from((0, 1, 2, 127, 129, 130, 255, 1 << 20))
              | st.integers(0, 600),
              st.sampled_from((0xFFFF, 0x8000, 0x7FFF, 0x0FFF, 0x1000, 0)) | st.integers(0,
                                                                                       0xFFFF)),
    st.builds(Nest, st.sampled_from(SEQUENCE_TAGS), st.sampled_from(DEPTHS) | st.integers(1, 300),
              st.booleans(), st.booleans()),
    st.builds(Encapsulated, st.sampled_from((JPEGBaseline8Bit, JPEG2000Lossless, JPEGLSLossless,
                                             JPEGLosslessSV1, RLELossless,
                                             "1.2.840.10008.1.2.4.201")),
              st.lists(st.binary(max_size=64) | st.sampled_from(
                  (b"\xff\xd8\xff\xe0", b"\xff\x4f\xff\x51\x00\x2f", b"\x00\x00\x00\x0c")),
                  max_size=3).map(tuple)),
)
byte_edits: st.SearchStrategy[ByteEdit] = st.one_of(
    st.builds(Truncate, positions),
    st.builds(Flip, positions, st.integers(1, 255)),
    st.builds(Insert, positions, st.binary(min_size=1, max_size=32)),
    st.builds(Cut, positions, st.integers(1, 64)),
    st.builds(Repeat, positions, st.integers(1, 32), st.integers(2, 200)),
    st.builds(HugeLength, st.sampled_from(BASE_KEYWORDS), st.sampled_from(HUGE)),
    st.builds(SwapVR, st.sampled_from(BASE_KEYWORDS),
              st.sampled_from((b"SQ", b"UN", b"OB", b"OW", b"UT", b"US", b"XX", b"\x00\x00"))),
)
layouts = st.builds(
    Layout,
    st.sampled_from(tuple(ENCODINGS)),
    st.none() | st.none() | st.sampled_from(SYNTAXES),
    st.booleans() | st.just(True),
    st.booleans() | st.just(True),
)


@st.composite
def recipes(draw: st.DrawFn, edit_strategy: st.SearchStrategy[Edit] = edits,
            max_damage: int = 3) -> Recipe:
    """An adversarial recipe: at least one edit, one byte damage or a non-default layout."""
    kind = draw(st.sampled_from(("edits", "edits", "damage", "both", "layout")))
    chosen = tuple(draw(st.lists(edit_strategy, min_size=1, max_size=4))) \
        if kind in ("edits", "both") else ()
    damage = tuple(draw(st.lists(byte_edits, min_size=1, max_size=max_damage))) \
        if kind in ("damage", "both") and max_damage else ()
    layout = draw(layouts) if kind == "layout" or draw(st.integers(0, 3)) == 0 else Layout()
    return Recipe(chosen, layout, damage)


garbage = st.builds(Garbage, st.binary(max_size=600), st.booleans())
index_inputs: st.SearchStrategy[Recipe | Garbage] = st.one_of(recipes(), recipes(), recipes(),
                                                              garbage)


# --- guards and bookkeeping ---------------------------------------------------------------


class ExampleTimeoutError(BaseException):
    """One input ran longer than :data:`EXAMPLE_SECONDS` (BaseException: nothing swallows it)."""


@contextmanager
def time_limit(what: object, seconds: float = EXAMPLE_SECONDS) -> Iterator[None]:
    """Fail (instead of hanging CI) when the block takes longer than ``seconds``."""

    def expire(_signum: int, _frame: FrameType | None) -> None:
        # from None: what was running may hold a gigantic half-built message; pytest would
        # try to print it as this error's context.
        raise ExampleTimeoutError(f"input took more than {seconds:g} s: {what!r}"[:4000]) from None

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _address_space() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def quiet_pydicom() -> Iterator[None]:
    """pydicom logs each oddity it meets; pytest would keep gigabytes of them for one test."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def bounded_memory(quiet_pydicom: None) -> Iterator[None]:
    """Cap the address space for the module: hostile sizes fail fast instead of swapping."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    current = _address_space()
    if current:
        limit = current + ADDRESS_SPACE_HEADROOM
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@dataclass
class Sandbox:
    """The folder tree the fuzzing runs in; the working directory is its ``work`` folder.

    Storage roots live deep inside ``work`` so that a path built from ``..`` UIDs would
    still land inside ``work``, where the per-input check sees it.
    """

    base: Path
    work: Path
    inputs: Path

    def storage_root(self) -> Path:
        return self.work / "node" / "a" / "b" / "storage"

    def reset(self) -> None:
        for child in self.work.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def files(self) -> list[Path]:
        """Every non-directory entry below ``work`` (links and specials included)."""
        found: list[Path] = []
        for folder, dirs, names in os.walk(self.work):
            found.extend(Path(folder) / name for name in names)
            found.extend(Path(folder) / d for d in dirs if (Path(folder) / d).is_symlink())
        return sorted(found)


@pytest.fixture(scope="module")
def sandbox(bounded_memory: None) -> Iterator[Sandbox]:
    """A private tree on tmpfs when there is one (fsync-heavy storage is 3× faster there)."""
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    base = Path(tempfile.mkdtemp(prefix="bpr-fuzz-", dir=parent)).resolve()
    box = Sandbox(base, base / "work", base / "inputs")
    box.work.mkdir()
    box.inputs.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        # Any write relative to the working directory lands where the checks look.
        patch.chdir(box.work)
        yield box
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def index() -> Iterator[Index]:
    """One in-memory index for all inputs (rows accumulate like on a long-running node)."""
    made = Index("sqlite://")
    yield made
    made.close()


# --- the properties -----------------------------------------------------------------------


def check_dataset_to_index(data: bytes, index: Index, sandbox: Sandbox, what: object) -> str:
    """One input through read_header + ingest; asserts the property and returns the outcome."""
    sandbox.reset()
    root = sandbox.storage_root()
    store = FileStore(root)
    try:
        with time_limit(what):
            header = read_header(data)
            result = ingest(index, store, data, header, source_ae="FUZZSCU",
                            analyzed_modalities=ANALYZED)
    except BadInstanceError as exc:
        assert exc.status == 0xA900 or 0xC000 <= exc.status <= 0xCFFF, hex(exc.status)
        assert sandbox.files() == [], "a rejected instance left files behind"
        return f"rejected 0x{exc.status:04X}"
    files = sandbox.files()
    if result.duplicate:
        assert files == [], "a duplicate was written again"
        return "duplicate"
    assert len(files) == 1, f"expected one stored file, found {files}"
    stored = files[0]
    assert stored.is_file() and not stored.is_symlink()
    assert stored.resolve().is_relative_to(root) and stored.resolve() != root
    relative = stored.relative_to(root).as_posix()
    assert SERVER_NAME.match(relative), relative
    assert stored.read_bytes() == data
    with index.session() as session:
        row = session.get_one(Instance, result.instance_pk)
        assert row.path == relative and row.size_bytes == len(data)
        assert row.series_pk == result.series_pk
        assert is_valid_uid(row.sop_instance_uid) and is_valid_uid(row.sop_class_uid)
        assert session.scalars(select(Instance).where(Instance.path == relative)).one() is row
        series = session.get_one(Series, result.series_pk)
        if series.modality not in ANALYZED:
            # Stored but marked: not analyzed, and the index says why.
            assert series.state is SeriesState.SKIPPED and series.error, series.state
        else:
            assert series.state is SeriesState.RECEIVING
    return "stored"


def write_inputs(folder: Path, blobs: Sequence[bytes]) -> list[Path]:
    """Write the files of one series input (the folder is emptied first)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    paths = []
    for i, blob in enumerate(blobs):
        path = folder / f"IM{i:04d}.dcm"
        path.write_bytes(blob)
        paths.append(path)
    return paths


def check_series_read(paths: Sequence[Path], sandbox: Sandbox, what: object) -> str:
    """read_dicom_series never raises; what it returns is well formed."""
    sandbox.reset()
    with time_limit(what):
        result = read_dicom_series(paths)
    assert isinstance(result, DicomReadResult)
    for volume in result.volumes:
        assert volume.hu.ndim == 3 and volume.n_slices >= 1
        assert volume.hu.shape[0] == len(volume.z_mm) == len(volume.sop_instance_uids)
        assert np.all(np.diff(volume.z_mm) > 0)
    # No volume and no error is allowed: files claiming the DICOMDIR class are skipped quietly.
    assert all(isinstance(e, str) and e for e in result.errors)
    assert sandbox.files() == [], "reading wrote files"
    return f"{len(result.volumes)} volume(s)" if result.volumes else "no volume"


def check_series_analysis(paths: Sequence[Path], regressor: BodyPartRegressor,
                          sandbox: Sandbox, what: object) -> str:
    """analyze_series returns or raises CTInputError; nothing else."""
    sandbox.reset()
    try:
        with time_limit(what):
            analysis = analyze_series(paths, regressor)
    except CTInputError:
        return "CTInputError"
    assert analysis.results and len(analysis.results) == len(analysis.slice_sop_instance_uids)
    assert sandbox.files() == [], "analysis wrote files"
    return "analyzed"


# --- series inputs ------------------------------------------------------------------------

ORIENTATIONS = (("1", "0", "0", "0", "1", "0"), ("-1", "0", "0", "0", "1", "0"),
                ("0", "1", "0", "0", "0", "-1"), ("1", "0", "0", "0", "0", "-1"),
                ("0", "0", "0", "0", "0", "0"), ("1e-7", "0", "0", "0", "1e-7", "0"),
                ("1", "0", "0", "1", "0", "0"), ("0.7071", "0", "0.7071", "0", "1", "0"),
                ("1", "0", "0", "0", "0.9", "0.4359"), ("nan", "0", "0", "0", "1", "0"),
                ("1e308", "1e308", "0", "0", "1e308", "0"))
SPACINGS = (("6", "6"), ("0", "6"), ("-1", "-1"), ("1e-300", "1e-300"), ("1e-6", "1e-6"),
            ("1e3", "1e3"), ("1e6", "1e6"), ("1e300", "1e300"), ("nan", "1"), ("inf", "1"),
            ("6", "0.6"), ("0.01", "0.01"))
COORDINATES = st.sampled_from((0.0, -0.0, 1e-9, 1e308, -1e308, float("nan"), float("inf"),
                               5.0, 10.0, 2.5)) | st.floats(-1e4, 1e4) | st.floats()


@dataclass(frozen=True)
class SeriesRecipe:
    """A series of ``n`` slices (or one multi-frame file of ``n`` frames) and its damage.

    ``z``, ``orientations``, ``spacings``, ``sizes`` and ``rescales`` are cycled over the
    slices when given (inconsistent geometry); ``files`` damages single files further.
    """

    n: int
    size: int
    multiframe: bool = False
    z: tuple[float, ...] = ()
    orientations: tuple[tuple[str, ...], ...] = ()
    spacings: tuple[tuple[str, str], ...] = ()
    sizes: tuple[int, ...] = ()
    rescales: tuple[tuple[str, str], ...] = ()
    localizers: tuple[int, ...] = ()
    uid_scheme: str = "normal"
    files: tuple[tuple[int, Recipe], ...] = ()


def _cycle(values: Sequence[T], i: int, default: T) -> T:
    return values[i % len(values)] if values else default


def series_specs(recipe: SeriesRecipe) -> list[SliceSpec]:
    """The per-slice geometry and identity of a series recipe."""
    series_uid, study_uid, shared_sop = fresh_uid(), fresh_uid(), fresh_uid()
    specs = []
    for i in range(recipe.n):
        series = series_uid + ".2" if recipe.uid_scheme == "two-series" and i % 2 else series_uid
        specs.append(SliceSpec(
            z=_cycle(recipe.z, i, 5.0 * i),
            instance=i + 1,
            size=_cycle(recipe.sizes, i, recipe.size),
            spacing=_cycle(recipe.spacings, i, ("6", "6")),
            orientation=_cycle(recipe.orientations, i, ("1", "0", "0", "0", "1", "0")),
            series_uid=series, study_uid=study_uid,
            sop_uid=shared_sop if recipe.uid_scheme == "same-sop" else None,
            localizer=i in recipe.localizers,
            rescale=_cycle(recipe.rescales, i, ("1", "-1024")),
        ))
    return specs


def series_blobs(recipe: SeriesRecipe) -> list[bytes]:
    """The encoded files of a series recipe, damaged files included."""
    specs = series_specs(recipe)
    datasets = [enhanced_ct(specs)] if recipe.multiframe else [ct_slice(s) for s in specs]
    damage = dict((i % len(datasets), r) for i, r in recipe.files)
    blobs = []
    for i, ds in enumerate(datasets):
        if recipe.uid_scheme == "no-series-uid":
            del ds.SeriesInstanceUID
        blobs.append(encode(ds, damage.get(i, Recipe())))
    return blobs


RESCALES = (("1", "-1024"), ("1e30", "0"), ("-1e38", "1e38"), ("nan", "0"), ("inf", "-inf"),
            ("0", "0"), ("1e-45", "-1024"), ("65536", "-3e9"))


@st.composite
def series_recipes(draw: st.DrawFn, *, min_n: int, max_n: int, size: int,
                   file_damage: bool = True) -> SeriesRecipe:
    """A series recipe; geometry knobs are drawn independently so they combine."""
    n = draw(st.integers(min_n, max_n))

    def knob(values: st.SearchStrategy[T]) -> tuple[T, ...]:
        # Two times in three a knob keeps the valid default: damage stays spread out.
        if draw(st.integers(0, 2)):
            return ()
        return tuple(draw(st.lists(values, min_size=1, max_size=n)))

    files: tuple[tuple[int, Recipe], ...] = ()
    if file_damage and draw(st.booleans()):
        files = tuple(draw(st.lists(st.tuples(st.integers(0, max_n - 1), recipes()),
                                    min_size=1, max_size=3)))
    return SeriesRecipe(
        n=n, size=size, multiframe=draw(st.integers(0, 4)) == 0,
        z=knob(COORDINATES),
        orientations=knob(st.sampled_from(ORIENTATIONS)),
        spacings=knob(st.sampled_from(SPACINGS)),
        sizes=knob(st.sampled_from((size, 1, 2, size // 2, size + 1))),
        rescales=knob(st.sampled_from(RESCALES)),
        localizers=knob(st.integers(0, n - 1)),
        uid_scheme=draw(st.sampled_from(("normal", "normal", "normal", "two-series",
                                         "same-sop", "no-series-uid"))),
        files=files,
    )


# --- tests --------------------------------------------------------------------------------

def fuzz_settings(max_examples: int) -> settings:
    """Bounded, reproducible runs: fixed derandomized seed, no example database on disk.

    The CI run does not shrink: a failure is reported as generated (recipes read well
    enough), so a slow failing input cannot stretch CI by minutes of shrinking. Soak runs
    shrink to the smallest reproducer.
    """
    phases = tuple(Phase) if SOAK > 1 else tuple(p for p in Phase if p is not Phase.shrink)
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    print_blob=False, phases=phases,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


def test_base_instances_are_valid(index: Index, sandbox: Sandbox) -> None:
    """The unmutated starting points are stored and read (else the fuzzing proves nothing)."""
    assert check_dataset_to_index(encode(ct_slice(SliceSpec()), Recipe()), index, sandbox,
                                  "base") == "stored"
    for multiframe in (False, True):
        recipe = SeriesRecipe(n=4, size=16, multiframe=multiframe)
        paths = write_inputs(sandbox.inputs / "base", series_blobs(recipe))
        result = read_dicom_series(paths)
        assert not result.errors and len(result.volumes) == 1
        assert result.volumes[0].hu.shape == (4, 16, 16)


#: Hand-written inputs, one per family the issue names (the fuzzing below mixes them).
HANDWRITTEN: dict[str, Recipe | Garbage] = {
    "empty stream": Garbage(b"", dicm=False),
    "prefix only": Garbage(b"", dicm=True),
    "truncated in file meta": Recipe(damage=(Truncate(150),)),
    "truncated in header": Recipe(damage=(Truncate(400),)),
    "truncated in pixels": Recipe(damage=(Truncate(-20),)),
    "uid ..": Recipe((Text("SOPInstanceUID", ".."),)),
    "uid ../../x": Recipe((Text("SeriesInstanceUID", "../../x"),)),
    "uid path in study": Recipe((Text("StudyInstanceUID", "1.2.3/../../etc"),)),
    "uid 65 chars": Recipe((Text("SOPInstanceUID", "1." + "2" * 63),)),
    "uid empty": Recipe((Text("SOPInstanceUID", ""),)),
    "uid NUL": Recipe((Text("SOPInstanceUID", "\x00" * 8),)),
    "uid traversal in meta": Recipe((Text("MediaStorageSOPInstanceUID", "../../../x"),)),
    "no file meta": Recipe(layout=Layout(meta=False)),
    "no preamble": Recipe(layout=Layout(preamble=False)),
    "sop class differs from meta": Recipe((SopClass(MRImageStorage, "MR", in_meta=False),)),
    "non-image sop class": Recipe((SopClass(RTStructureSetStorage, "RTSTRUCT", in_meta=True),)),
    "sr with modality CT": Recipe((SopClass(BasicTextSRStorage, "CT", in_meta=True),)),
    "wrong VR on Rows": Recipe((Raw("Rows", "DS", b"abc "),)),
    "wrong VR on a UID": Recipe((Raw("SOPInstanceUID", "US", b"\x01\x00"),)),
    "UID as a sequence": Recipe((Nest("SOPInstanceUID", 3, True, True),)),
    "huge PixelData length": Recipe(damage=(HugeLength("PixelData", 0xFFFFFFF0),)),
    "huge undefined length": Recipe(damage=(HugeLength("PatientName", 0xFFFFFFFF),)),
    "huge meta group length": Recipe((Number("FileMetaInformationGroupLength", 2**32 - 1),)),
    "sequence 20000 deep": Recipe((Nest("ReferencedImageSequence", 20000, False, True),)),
    "sequence 3000 deep, defined": Recipe((Nest("ReferencedImageSequence", 3000, True, True),)),
    "unclosed deep sequence": Recipe((Nest("ReferencedImageSequence", 5000, False, False),)),
    "pixel data too short": Recipe((PixelFill(10, 0x1234),)),
    "pixel data odd length": Recipe((PixelFill(127, 0xFFFF),)),
    "16-bit overflow": Recipe((PixelFill(None, 0xFFFF), Number("BitsStored", 12),
                               Number("PixelRepresentation", 1))),
    "bits allocated 0": Recipe((Number("BitsAllocated", 0),)),
    "rows 65535": Recipe((Number("Rows", 65535), Number("Columns", 65535))),
    "instance number 1e400": Recipe((Text("InstanceNumber", "1e400"),)),
    "instance number 2**64": Recipe((Text("InstanceNumber", "99999999999999999999"),)),
    "series number 2**64": Recipe((Text("SeriesNumber", "99999999999999999999"),)),
    "utf-8 charset with invalid bytes": Recipe((Text("SpecificCharacterSet", "ISO_IR 192"),
                                                Raw("PatientName", "PN", b"\xff\xfe\xed\xa0"))),
    "declared deflate, not deflated": Recipe(
        layout=Layout(declared=DeflatedExplicitVRLittleEndian)),
    "declared big endian": Recipe(layout=Layout(declared=ExplicitVRBigEndian)),
    "declared implicit, explicit bytes": Recipe(layout=Layout(declared=ImplicitVRLittleEndian)),
    "garbage jpeg 2000": Recipe((Encapsulated(JPEG2000Lossless, (b"\xff\x4f\xff\x51junk",)),)),
    "garbage jpeg": Recipe((Encapsulated(JPEGBaseline8Bit, (b"\xff\xd8\xff\xe0junk",)),)),
    "garbage rle": Recipe((Encapsulated(RLELossless, (b"\x01\x00\x00\x00" + b"\xff" * 60,)),)),
    "number of frames 2**31": Recipe((SopClass(EnhancedCTImageStorage, "CT", in_meta=True),
                                      Text("NumberOfFrames", "2147483647"))),
}


@pytest.mark.parametrize("name", list(HANDWRITTEN))
def test_handwritten_inputs(name: str, index: Index, sandbox: Sandbox) -> None:
    """Each named family on both paths: ingest as one instance, and read inside a series."""
    recipe = HANDWRITTEN[name]
    data = encode(ct_slice(SliceSpec(size=16)), recipe)
    OUTCOMES["handwritten ingest: " + check_dataset_to_index(data, index, sandbox, name)] += 1
    specs = series_specs(SeriesRecipe(n=4, size=16))
    blobs = [encode(ct_slice(spec), recipe if i == 1 else Recipe())
             for i, spec in enumerate(specs)]
    paths = write_inputs(sandbox.inputs / "handwritten", blobs)
    OUTCOMES["handwritten read: " + check_series_read(paths, sandbox, name)] += 1


@fuzz_settings(INDEX_EXAMPLES)
@given(recipe=index_inputs, series_slot=st.integers(0, 5))
def test_fuzz_dataset_to_index(recipe: Recipe | Garbage, series_slot: int, index: Index,
                               sandbox: Sandbox) -> None:
    """Any input is rejected with a failure status, or stored once, under the root, indexed."""
    # A few shared series and studies, so inputs also land in series that already exist.
    spec = SliceSpec(series_uid=f"2.25.77{series_slot}", study_uid=f"2.25.88{series_slot % 2}")
    data = encode(ct_slice(spec), recipe)
    OUTCOMES["dataset→index: " + check_dataset_to_index(data, index, sandbox, recipe)] += 1


@fuzz_settings(READ_EXAMPLES)
@given(recipe=series_recipes(min_n=2, max_n=6, size=16))
def test_fuzz_series_to_volume(recipe: SeriesRecipe, sandbox: Sandbox) -> None:
    """read_dicom_series on damaged series never raises; bad files become error messages."""
    paths = write_inputs(sandbox.inputs / "read", series_blobs(recipe))
    OUTCOMES["series→volume: " + check_series_read(paths, sandbox, recipe)] += 1


analysis_edits: st.SearchStrategy[Edit] = st.one_of(
    st.builds(Text, st.sampled_from(("ImagePositionPatient", "ImageOrientationPatient",
                                     "PixelSpacing", "RescaleSlope", "RescaleIntercept",
                                     "InstanceNumber", "PixelPaddingValue")), number_text),
    st.builds(Number, st.sampled_from(("BitsStored", "HighBit", "PixelRepresentation",
                                       "PixelPaddingValue")), st.sampled_from(EVIL_INTEGERS)),
    st.builds(PixelFill, st.none(), st.sampled_from((0xFFFF, 0x8000, 0x7FFF, 0x0FFF, 0))),
    st.builds(SopClass, st.sampled_from(SOP_CLASSES), st.sampled_from(MODALITIES),
              st.booleans()),
)


@fuzz_settings(ANALYSIS_EXAMPLES)
@given(recipe=series_recipes(min_n=8, max_n=12, size=64, file_damage=False),
       damage=st.lists(st.tuples(st.integers(0, 15), recipes(analysis_edits, max_damage=0)),
                       max_size=3))
def test_fuzz_series_analysis(recipe: SeriesRecipe, damage: list[tuple[int, Recipe]],
                              regressor: BodyPartRegressor, sandbox: Sandbox) -> None:
    """analyze_series on readable-but-hostile series returns or raises CTInputError only."""
    recipe = replace(recipe, files=tuple(damage))
    paths = write_inputs(sandbox.inputs / "analysis", series_blobs(recipe))
    OUTCOMES["series→analysis: " + check_series_analysis(paths, regressor, sandbox,
                                                         recipe)] += 1


@pytest.fixture(scope="module")
def worker(index: Index, sandbox: Sandbox, regressor: BodyPartRegressor
           ) -> Iterator[AnalysisWorker]:
    """The node's analysis worker on the fuzzing index and storage, SR writing on."""
    config = config_from_dict({"storage": {"root": str(sandbox.storage_root()),
                                           "min_free_bytes": 0},
                               "peers": [{"ae_title": "FUZZSCU"}]}, sandbox.base)
    made = AnalysisWorker(index, FileStore(sandbox.storage_root()), config)
    made._regressor = regressor  # the session's model: loaded once, not twice
    yield made
    made.shutdown()


def check_worker(blobs: Sequence[bytes], index: Index, worker: AnalysisWorker,
                 sandbox: Sandbox, what: object) -> str:
    """Store what ingest accepts, queue the series, run the worker: it ends DONE or FAILED."""
    sandbox.reset()
    store = FileStore(sandbox.storage_root())
    series_pks = set()
    for blob in blobs:
        try:
            result = ingest(index, store, blob, read_header(blob), source_ae="FUZZSCU",
                            analyzed_modalities=ANALYZED)
        except BadInstanceError:
            continue
        series_pks.add(result.series_pk)
    if not series_pks:
        return "nothing stored"
    outcome = []
    for series_pk in sorted(series_pks):
        with index.session() as session:
            series = session.get_one(Series, series_pk)
            if series.state is not SeriesState.RECEIVING:
                continue  # not CT: marked SKIPPED at ingest
            series.state = SeriesState.QUEUED
        with time_limit(what):
            state = worker.run(series_pk)
        with index.session() as session:
            series = session.get_one(Series, series_pk)
            assert series.state is state, (series.state, state)
            assert state in (SeriesState.DONE, SeriesState.FAILED), state
            assert state is SeriesState.DONE or series.error
        outcome.append(state.value)
    files = sandbox.files()
    root = sandbox.storage_root()
    assert all(SERVER_NAME.match(f.relative_to(root).as_posix()) for f in files), files
    return ",".join(outcome) or "skipped"


#: Header damage that ingest lets through (identifiers intact) but analysis must survive.
IMAGE_KEYWORDS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                  "RescaleSlope", "RescaleIntercept", "InstanceNumber", "PixelPaddingValue",
                  "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation",
                  "SamplesPerPixel", "NumberOfFrames", "ImageType", "PixelData",
                  "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
                  "PatientName", "StudyDate", "BodyPartExamined")
worker_edits: st.SearchStrategy[Edit] = st.one_of(
    analysis_edits,
    st.builds(Raw, st.sampled_from(IMAGE_KEYWORDS), st.sampled_from(VRS), raw_value),
    st.builds(Nest, st.sampled_from(IMAGE_KEYWORDS), st.sampled_from(DEPTHS)
              | st.integers(1, 300), st.booleans(), st.booleans()),
)


@fuzz_settings(WORKER_EXAMPLES)
@given(recipe=series_recipes(min_n=8, max_n=10, size=64, file_damage=False),
       damage=st.lists(st.tuples(st.integers(0, 9), recipes(worker_edits, max_damage=0)),
                       min_size=1, max_size=3))
def test_fuzz_analysis_worker(recipe: SeriesRecipe, damage: list[tuple[int, Recipe]],
                              index: Index, worker: AnalysisWorker, sandbox: Sandbox) -> None:
    """Whatever the node accepted, the worker finishes the series DONE or FAILED (with why)."""
    blobs = series_blobs(replace(recipe, files=tuple(damage)))
    OUTCOMES["worker: " + check_worker(blobs, index, worker, sandbox, (recipe, damage))] += 1


def test_report_and_nothing_outside_storage(capsys: pytest.CaptureFixture[str],
                                            sandbox: Sandbox) -> None:
    """Last: the sandbox holds nothing stray, and the counts are printed."""
    sandbox.reset()
    stray = [p for p in sandbox.base.rglob("*")
             if not p.is_relative_to(sandbox.inputs) and p != sandbox.work]
    assert stray == [], f"files outside the storage roots: {stray[:10]}"
    configured = INDEX_EXAMPLES + READ_EXAMPLES + ANALYSIS_EXAMPLES + WORKER_EXAMPLES
    assert configured >= REQUIRED_TOTAL
    per_property: Counter[str] = Counter()
    for key, n in OUTCOMES.items():
        per_property[key.split(":")[0]] += n
    lines = [f"fuzz inputs tried: {sum(OUTCOMES.values())} (configured {configured}, "
             f"BPR_SOAK factor {SOAK})"]
    lines += [f"  {prop}: {n}" for prop, n in sorted(per_property.items())]
    lines += [f"    {key}: {n}" for key, n in sorted(OUTCOMES.items())]
    with capsys.disabled():  # shown even when pytest captures output
        print("\n" + "\n".join(lines))
