"""Read DICOM chest films: pixels as float32 [0, 1] as a radiologist would see them, and safe header facts."""
import datetime
import io
import logging
from dataclasses import dataclass

import numpy as np

from models.limits import ImageDecodeError, size_problem

logger = logging.getLogger(__name__)
# Pixels and inflated data set of one DICOM file: a chest film of 40 M px at 16 bits is 80 MB.
MAX_DICOM_BYTES = 128 * 2**20

# Groups a DICOM data set without preamble and file meta can start with (little endian).
_BARE_GROUPS = (b"\x02\x00", b"\x08\x00")
_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
# What pydicom needs to read pixel data (PS3.3 C.7.6.3), checked at the door rather than in the worker.
_PIXEL_MODULE = ("PhotometricInterpretation", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation")
# Header attributes kept on a study row, with the column width; never patient name or id.
META_FIELDS = {
    "study_instance_uid": ("StudyInstanceUID", 64), "series_instance_uid": ("SeriesInstanceUID", 64),
    "sop_instance_uid": ("SOPInstanceUID", 64), "modality": ("Modality", 16),
    "view_position": ("ViewPosition", 16), "patient_age": ("PatientAge", 8),
    "body_part": ("BodyPartExamined", 32), "accession_number": ("AccessionNumber", 16),
    "study_date": ("StudyDate", 8), "patient_sex": ("PatientSex", 1), "sop_class_uid": ("SOPClassUID", 64),
}


@dataclass(frozen=True)
class DicomMeta:
    """Header facts kept on a study row (META_FIELDS), each cut to its column width; None when absent."""

    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    modality: str | None = None
    view_position: str | None = None
    patient_age: str | None = None
    body_part: str | None = None
    accession_number: str | None = None
    study_date: str | None = None  # YYYYMMDD
    patient_sex: str | None = None  # M, F, O
    sop_class_uid: str | None = None
    acquired_at: datetime.datetime | None = None  # with its zone; UTC when the header names none


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part 10 file, or a bare data set (no preamble/meta) starting at group 0002/0008."""
    if data[128:132] == b"DICM":
        return True
    if data[:2] not in _BARE_GROUPS or len(data) < 8:
        return False
    # Explicit VR: two upper-case letters; implicit VR: a 4-byte length well inside the file.
    explicit_vr = data[4:6].isalpha() and data[4:6].isupper()
    return explicit_vr or int.from_bytes(data[4:8], "little") < len(data)


def read_dataset(data: bytes, pixels: bool = True):
    """Parse DICOM bytes with pydicom; a bare data set gets the transfer syntax it was read with."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    problem = _inflation_problem(data)
    if problem:
        raise ImageDecodeError(problem)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=not pixels)
    except Exception as exc:  # pydicom raises many kinds on a broken file; all mean "unreadable"
        raise ImageDecodeError(f"not a readable DICOM file: {exc}") from None
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        implicit, little = ds.original_encoding
        if not little:
            raise ImageDecodeError("big-endian DICOM without file meta is not supported")
        ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def _inflation_problem(data: bytes) -> str | None:
    """A deflated data set (Deflated Explicit VR Little Endian) inflates to at most MAX_DICOM_BYTES: checked by
    inflating into a bounded buffer before pydicom inflates it whole (a 600 KB file can hold gigabytes)."""
    import zlib

    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    if data[128:132] != b"DICM":
        return None  # no file meta: not deflated
    try:
        handle = io.BytesIO(data)
        read_preamble(handle, force=False)
        meta = _read_file_meta_info(handle)
    except Exception:  # unreadable meta: dcmread says why
        return None
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data[handle.tell():], MAX_DICOM_BYTES + 1)
    except zlib.error as exc:
        return f"deflated DICOM data set is corrupt: {exc}"
    if len(inflated) > MAX_DICOM_BYTES or inflater.unconsumed_tail:
        return f"deflated DICOM data set inflates beyond {MAX_DICOM_BYTES // 2**20} MB (possible bomb): refused"
    return None


def check_dicom(data: bytes) -> str | None:
    """A look at the header at the door: None when the file carries a grayscale image we can decode."""
    try:
        ds = read_dataset(data)  # parsing is cheap: pixels are only decoded by pixel_array
    except ImageDecodeError as exc:
        return str(exc)
    return header_problem(ds)


def header_problem(ds) -> str | None:
    if "PixelData" not in ds or "Rows" not in ds or "Columns" not in ds:
        return "DICOM file has no image (no pixel data): send the radiograph, not a report or structure"
    if missing := [keyword for keyword in _PIXEL_MODULE if ds.get(keyword) in (None, "")]:
        return f"DICOM image lacks {', '.join(missing)}: its pixels cannot be read"
    bits, used, sign = (_int_or(ds.get(key), -1) for key in ("BitsAllocated", "BitsStored", "PixelRepresentation"))
    if bits not in (1, 8, 16, 32, 64) or not 1 <= used <= bits or sign not in (0, 1):
        return (f"DICOM pixel description is invalid (BitsAllocated {bits}, BitsStored {used}, "
                f"PixelRepresentation {sign})")
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        try:
            value = ds.get(keyword) if ds.get(keyword) not in (None, "") else []  # empty: as if absent
            [float(item) for item in ([value] if isinstance(value, (str, bytes, int, float)) else list(value))]
        except (TypeError, ValueError):
            return f"DICOM {keyword} is not a number ({str(ds[keyword].value)[:32]!r})"
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in _GRAYSCALE:
        return f"DICOM image is {photometric}, not a grayscale radiograph"
    if _int_or(ds.get("SamplesPerPixel"), 1) != 1:
        return f"DICOM image has {ds.SamplesPerPixel} samples per pixel, not one grayscale plane"
    frames, rows, columns = _int_or(ds.get("NumberOfFrames"), 1), _int_or(ds.Rows, -1), _int_or(ds.Columns, -1)
    stored = frames * rows * columns * max(1, (bits + 7) // 8)
    if frames < 1 or stored > MAX_DICOM_BYTES:
        return (f"DICOM image holds {frames} frame(s) of {ds.Columns}x{ds.Rows} px, {stored / 2**20:.0f} MB of "
                f"pixels (limit {MAX_DICOM_BYTES // 2**20} MB): send the radiograph alone")
    syntax = ds.file_meta.TransferSyntaxUID
    expected = (frames * rows * columns * bits + 7) // 8
    if syntax.is_transfer_syntax and not syntax.is_compressed and len(ds.PixelData) < expected:
        return f"DICOM pixel data is truncated: {len(ds.PixelData):,} of {expected:,} bytes"
    return size_problem(columns, rows, "DICOM image")  # the rule PNG/JPEG meet (models.imaging)


def _int_or(value, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return -1  # a malformed count: refused above


def decode_dicom(data: bytes) -> np.ndarray:
    """Decode to a 2-D float32 array in [0, 1], bright bone: modality LUT, VOI LUT or window, MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = read_dataset(data)
    problem = header_problem(ds)
    if problem:
        raise ImageDecodeError(problem)
    try:
        ds.pixel_array_options(index=0)  # the first frame only: a multi-frame file is never decoded whole
        stored = ds.pixel_array
    except Exception as exc:  # a missing codec plugin, a truncated frame, a broken JPEG 2000 stream...
        syntax = ds.file_meta.TransferSyntaxUID.name
        raise ImageDecodeError(f"cannot decode DICOM pixel data ({syntax}): {exc}") from None
    if stored.ndim != 2:
        raise ImageDecodeError(f"DICOM frame has shape {stored.shape}, not one grayscale plane")
    try:
        pixels = _grayscale(ds, stored, apply_modality_lut, apply_voi_lut)
    except Exception as exc:  # a malformed rescale, window or LUT in a hostile header: this file alone fails
        raise ImageDecodeError(f"cannot apply the DICOM grayscale transforms (rescale, window, VOI LUT): {exc}") \
            from None
    return np.ascontiguousarray(pixels, dtype=np.float32)


def _grayscale(ds, stored: np.ndarray, apply_modality_lut, apply_voi_lut) -> np.ndarray:
    """Modality LUT, then the VOI LUT, the window, or without either the used range; MONOCHROME1 inverted."""
    values = apply_modality_lut(stored, ds)
    padding = _padding(ds, stored)
    if ds.get("VOILUTSequence"):
        # A LUT is indexed by whole numbers: rescaled values are rounded back to integers first.
        values = apply_voi_lut(np.rint(values).astype(np.int32), ds, prefer_lut=True)
        out_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        pixels = _stretch(values.astype(np.float32), 0.0, float(2 ** out_bits - 1))
    elif ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, ""):
        pixels = _window(values.astype(np.float32), first_number(ds.WindowCenter), first_number(ds.WindowWidth))
    else:
        # No window: the minimum to maximum of the values used, as PACS JPEG exports and viewers show such
        # films (bench/voi_rendering.py: on 60 full-size films mean |p - p_JPEG| 0.0002, against 0.010 for the
        # 0.5-99.5 % stretch used before). Padding (PixelPaddingValue) is outside the image: excluded, then black.
        values = values.astype(np.float32)
        used = values[~padding] if padding is not None and not padding.all() else values
        pixels = _stretch(values, float(used.min()), float(used.max()))
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        pixels = 1.0 - pixels  # MONOCHROME1: low values are white; the models expect bright bone
    if padding is not None:
        pixels[padding] = 0.0
    return pixels


def _padding(ds, stored: np.ndarray) -> np.ndarray | None:
    """Where the stored values are PixelPaddingValue (up to PixelPaddingRangeLimit); None without padding."""
    if "PixelPaddingValue" not in ds:
        return None
    value = int(ds.PixelPaddingValue)
    limit = int(ds.get("PixelPaddingRangeLimit", value))
    return (stored >= min(value, limit)) & (stored <= max(value, limit))


def first_number(value) -> float:
    """Window centre/width may be multi-valued: the first is the default view."""
    return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear VOI window (PS3.3 C.11.2.1.2.1), straight to [0, 1]. `values`: a float32 copy, changed in place
    (a full-size film is millions of pixels: each step in place, not a new array, halves the time)."""
    if width <= 1.0:  # the narrowest window is a step at center - 0.5 (the linear formula would divide by 0)
        return (values > center - 0.5).astype(np.float32)
    values -= center - 0.5
    values /= width - 1.0
    values += 0.5
    return np.clip(values, 0.0, 1.0, out=values)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`values` (a float32 copy, changed in place) from [low, high] to [0, 1]."""
    if high <= low:
        return np.zeros(values.shape, np.float32)
    values -= low
    values /= high - low
    return np.clip(values, 0.0, 1.0, out=values)


def header_meta(data: bytes) -> DicomMeta | None:
    """Study-row attributes from the header (UIDs, modality, view, age, body part); None if unreadable."""
    try:
        return meta_of(read_dataset(data, pixels=False))
    except ImageDecodeError:
        return None


def meta_of(ds) -> DicomMeta:
    """Study-row attributes of a data set read with read_dataset."""
    values = {}
    for column, (keyword, width) in META_FIELDS.items():
        value = str(ds.get(keyword, "") or "").strip()
        if keyword in ("Modality", "ViewPosition", "PatientSex"):
            value = value.upper()
        values[column] = value[:width] or None
    if values["study_date"] and not _date(values["study_date"]):
        values["study_date"] = None
    if values["patient_sex"] not in ("M", "F", "O"):
        values["patient_sex"] = None
    if values["patient_age"] is None:
        values["patient_age"] = _age_from_dates(ds.get("PatientBirthDate"),
                                                ds.get("StudyDate") or ds.get("ContentDate"))
    values["acquired_at"] = acquisition_time(ds)
    return DicomMeta(**values)


def _date(text: str) -> datetime.date | None:
    try:
        return datetime.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def acquisition_time(ds) -> datetime.datetime | None:
    """When the film was taken, in UTC: AcquisitionDateTime, else Acquisition/Content/Study date and time, in the
    zone TimezoneOffsetFromUTC names (UTC when none). None when no date in the header can be read."""
    zone = datetime.timezone.utc
    offset = str(ds.get("TimezoneOffsetFromUTC", "") or "")
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        minutes = int(offset[1:3]) * 60 + int(offset[3:])
        zone = datetime.timezone(datetime.timedelta(minutes=minutes if offset[0] == "+" else -minutes))
    candidates = [str(ds.get("AcquisitionDateTime", "") or "")[:14]]
    for date_key, time_key in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"),
                               ("StudyDate", "StudyTime")):
        candidates.append(str(ds.get(date_key, "") or "")[:8] + str(ds.get(time_key, "") or "").split(".")[0][:6])
    for text in candidates:
        if len(text) < 8 or not text.isdigit() or _date(text[:8]) is None:
            continue
        clock = (text[8:] + "000000")[:6]
        try:
            moment = datetime.datetime.strptime(text[:8] + clock, "%Y%m%d%H%M%S")
        except ValueError:
            moment = datetime.datetime.strptime(text[:8], "%Y%m%d")
        return moment.replace(tzinfo=zone).astimezone(datetime.timezone.utc)  # databases keep UTC
    return None


def _age_from_dates(birth, taken) -> str | None:
    """PatientAge as DICOM writes it ('064Y', '007M'), from birth and study dates; only the age is kept."""
    try:
        born, seen = (datetime.datetime.strptime(str(value), "%Y%m%d").date() for value in (birth, taken))
    except (TypeError, ValueError):
        return None
    days = (seen - born).days
    if days < 0:
        return None
    return f"{int(days / 365.25):03d}Y" if days >= 366 else f"{int(days / 30.44):03d}M"


# De-identification at rest: DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile with the Retain
# UIDs, Retain Longitudinal Temporal Information (full dates) and Retain Patient Characteristics options, written as
# an allow list: an attribute is stored only if it is named here, so everything the profile's table E.1-1 removes,
# blanks or replaces is gone (names, ids, birth date, addresses, phone numbers, institution, physicians, operators,
# device serials, descriptions, comments), and so is any attribute the table does not know of, every private tag,
# curve and overlay (50xx, 60xx) and the preamble. Kept: what the service and the pixels need.
DEIDENTIFY_KEPT = frozenset({
    # Retain UIDs: how images group into a study and how results go back to the PACS.
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID",
    # What the screening rules and the report read. AccessionNumber goes beyond the profile (which blanks it):
    # it is how the RIS matches our result to its order.
    "AccessionNumber", "Modality", "BodyPartExamined", "ViewPosition", "ImageLaterality", "Laterality",
    "PatientOrientation", "ImageType", "ConversionType", "PresentationIntentType", "SeriesNumber", "InstanceNumber",
    # Retain Patient Characteristics (only these two of the option's list).
    "PatientAge", "PatientSex",
    # Retain Longitudinal Temporal Information, full dates: when the film was taken is part of the report.
    "StudyDate", "StudyTime", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime",
    "AcquisitionDateTime", "ContentDate", "ContentTime", "TimezoneOffsetFromUTC",
    "SpecificCharacterSet",
    # Image pixel module and everything decoding reads: frames, palettes, modality and VOI LUT, presentation.
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "PlanarConfiguration", "PixelAspectRatio", "SmallestImagePixelValue",
    "LargestImagePixelValue", "PixelPaddingValue", "PixelPaddingRangeLimit", "NumberOfFrames", "FrameIncrementPointer",
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
    "ICCProfile", "ColorSpace", "PaletteColorLookupTableUID",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData", "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData", "SegmentedBluePaletteColorLookupTableData",
    "RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "PresentationLUTShape", "PixelIntensityRelationship", "PixelIntensityRelationshipSign",
    "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod", "BurnedInAnnotation",
    "RecognizableVisualFeatures", "PixelSpacing", "ImagerPixelSpacing", "PixelSpacingCalibrationType",
    "EstimatedRadiographicMagnificationFactor",
})
# Sequences kept, with what their items may hold (a LUT item carries no text we need).
DEIDENTIFY_SEQUENCES = {
    "ModalityLUTSequence": frozenset({"LUTDescriptor", "ModalityLUTType", "LUTData"}),
    "VOILUTSequence": frozenset({"LUTDescriptor", "LUTData"}),
}
# Type 2 attributes of the patient and study modules: present and empty (the profile's "Z"), so the file stays valid.
DEIDENTIFY_EMPTIED = ("PatientName", "PatientID", "PatientBirthDate", "ReferringPhysicianName", "StudyID")
# CID 7050 codes (DCM) for the profile and the options applied.
_DEIDENTIFY_CODES = (("113100", "Basic Application Confidentiality Profile"), ("113110", "Retain UIDs Option"),
                     ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
                     ("113108", "Retain Patient Characteristics Option"))
_DEIDENTIFY_METHOD = "PS3.15 E.1 basic; UIDs, dates, age, sex, accession kept"
# Who wrote the stored file (PS3.10 file meta): a fixed UUID-derived UID, so the bytes never depend on a library
# version (duplicates are found by the hash of the stored bytes).
IMPLEMENTATION_UID = "2.25.230914448081868464058903349836930306778"


def deidentify(data: bytes) -> bytes:
    """The DICOM file with patient-identifying attributes removed (DEIDENTIFY_KEPT), as Part 10 bytes.

    Deterministic and idempotent: the same input always gives the same bytes, and a de-identified file comes back
    unchanged. Kept elements are copied as received (pixels byte for byte), in the encoding they were read in.
    Raises ImageDecodeError (never with a header value in its message) when the file cannot be rewritten.
    """
    ds = read_dataset(data)
    try:
        out = _kept(ds)
    except Exception as exc:  # a hostile header pydicom cannot convert: refuse the file rather than keep it whole
        raise ImageDecodeError(f"DICOM header cannot be de-identified ({type(exc).__name__})") from None
    return _part10(ds, out)


def _kept(ds):
    """A new data set of the allowed elements (raw, as received), blanked Type 2 ones, age and the method."""
    from pydicom.datadict import keyword_for_tag
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

    out = Dataset()
    for tag in list(ds.keys()):
        keyword = keyword_for_tag(tag)
        if keyword in DEIDENTIFY_KEPT:
            out[tag] = ds.get_item(tag)
        elif keyword in DEIDENTIFY_SEQUENCES and ds[tag].VR == "SQ":
            allowed = DEIDENTIFY_SEQUENCES[keyword]
            items = [_items_kept(item, allowed) for item in ds[tag].value]
            out[tag] = DataElement(tag, "SQ", items)
    for keyword in DEIDENTIFY_EMPTIED:
        setattr(out, keyword, "")
    if not str(out.get("PatientAge", "") or "").strip():
        age = _age_from_dates(ds.get("PatientBirthDate"), ds.get("StudyDate") or ds.get("ContentDate"))
        if age:
            out.PatientAge = age  # Retain Patient Characteristics: the age survives the birth date
        elif "PatientAge" in out:
            del out.PatientAge
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = _DEIDENTIFY_METHOD
    codes = []
    for value, meaning in _DEIDENTIFY_CODES:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
        codes.append(code)
    out.DeidentificationMethodCodeSequence = codes
    out.LongitudinalTemporalInformationModified = "UNMODIFIED"
    return out


def _items_kept(item, allowed: frozenset):
    from pydicom.datadict import keyword_for_tag
    from pydicom.dataset import Dataset

    kept = Dataset()
    for tag in list(item.keys()):
        if keyword_for_tag(tag) in allowed:
            kept[tag] = item.get_item(tag)
    return kept


def _part10(ds, out) -> bytes:
    """Preamble (zeros), a file meta of our own (the sender's AE titles and private meta go) and the data set, in
    the encoding the elements were read in (a file whose meta lies about it is written as it really is)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = ds.original_encoding
    raw = next((elem for elem in map(ds.get_item, ds.keys()) if elem is not None and elem.is_raw), None)
    if raw is not None:  # how the elements were really read: pydicom falls back to implicit VR when meta lies
        implicit, little = raw.is_implicit_VR, raw.is_little_endian
    syntax = ds.file_meta.TransferSyntaxUID
    if (implicit, little) != (syntax.is_implicit_VR, syntax.is_little_endian) or syntax.is_deflated and implicit:
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = str(out.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    meta.MediaStorageSOPInstanceUID = str(out.get("SOPInstanceUID", "")
                                          or ds.file_meta.get("MediaStorageSOPInstanceUID", ""))
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PNEUMOSCREEN"
    out.file_meta = meta
    out.set_original_encoding(implicit, little, ds.original_character_set)
    buffer = io.BytesIO()
    try:
        out.save_as(buffer, enforce_file_format=True)
    except Exception as exc:  # e.g. an ambiguous VR pydicom cannot settle: refused, never stored as received
        raise ImageDecodeError(f"DICOM file cannot be rewritten de-identified ({type(exc).__name__})") from None
    return buffer.getvalue()
