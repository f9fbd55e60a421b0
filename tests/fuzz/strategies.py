"""Hypothesis strategies that draw the fuzz inputs, and the hand-written recipes.

``recipes``, ``index_inputs``, ``series_recipes``, ``analysis_edits`` and ``worker_edits``
draw damage (:mod:`tests.fuzz.damage`) for the valid starting points of
:mod:`tests.fuzz.generators`; :data:`HANDWRITTEN` holds one hand-written recipe per family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from pydicom.uid import (
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

from tests.fuzz.damage import (
    ENCODINGS,
    ByteEdit,
    Cut,
    Delete,
    Edit,
    Encapsulated,
    Flip,
    Garbage,
    HugeLength,
    Insert,
    Layout,
    Nest,
    Number,
    PixelFill,
    Raw,
    Recipe,
    Repeat,
    SopClass,
    SwapVR,
    Text,
    Truncate,
    encode,
)
from tests.fuzz.generators import SOAK, SliceSpec, T, ct_slice, enhanced_ct, fresh_uid

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


#: Hand-written inputs, one per family the issue names (the generated recipes mix them).
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
