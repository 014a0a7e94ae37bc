"""The film as stored, for the diagnostic viewer: its real pixel values at their bit depth, at most MAX_SIDE a side.

Screening decodes to [0, 1] floats at 512 px (models.imaging); a reader needs the original values to window them.
Memory: the stored integers are kept as they are (uint16, 2 bytes a pixel); the DICOM rescale is sent as a slope
and an intercept instead of being applied to every pixel; a film over MAX_SIDE is reduced by box filtering
(a 40 Mpx film, the largest accepted, becomes at most 4096 px a side: ~32 MB, once, while it is encoded).
"""
import io
import json
import logging
import struct
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

from models.dicom import first_number, header_problem, is_dicom, read_dataset
from models.imaging import check_image
from models.limits import ImageDecodeError

logger = logging.getLogger(__name__)
MAX_SIDE = 4096
MAGIC = b"PSF1"


@dataclass
class Film:
    """Pixel values as unsigned 16-bit integers; the real value of one is `value * slope + intercept`."""

    pixels: np.ndarray
    bits: int  # significant bits of the stored values (8 for an ordinary PNG/JPEG)
    slope: float = 1.0
    intercept: float = 0.0
    invert: bool = False  # MONOCHROME1: low values are white
    original: tuple[int, int] = (0, 0)  # width, height before any reduction
    kind: str = "dicom"
    presets: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (center, width), pixel units
    dicom_window: bool = False  # the default preset is the DICOM header's window (or VOI LUT)


def read_film(data: bytes, max_side: int = MAX_SIDE) -> Film:
    """Decode an upload (DICOM, PNG, JPEG) for viewing; ImageDecodeError says why it cannot be."""
    film = _read_dicom(data) if is_dicom(data) else _read_picture(data)
    height, width = film.pixels.shape
    film.original = (width, height)
    scale = max_side / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        film.pixels = np.asarray(Image.fromarray(film.pixels).resize(size, Image.Resampling.BOX), dtype=np.uint16)
    _add_presets(film)
    return film


def _read_dicom(data: bytes) -> Film:
    from pydicom.pixels import apply_modality_lut

    ds = read_dataset(data)
    problem = header_problem(ds)
    if problem:
        raise ImageDecodeError(problem)
    try:
        ds.pixel_array_options(index=0)
        stored = ds.pixel_array
    except Exception as exc:  # a missing codec, a truncated frame: the film cannot be shown
        raise ImageDecodeError(f"cannot decode DICOM pixel data: {exc}") from None
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if "ModalityLUTSequence" in ds:  # rare for radiographs: apply it, then send the result as it comes
        stored, slope, intercept = apply_modality_lut(stored, ds), 1.0, 0.0
    pixels, shift, step = _as_uint16(stored)
    film = Film(pixels, bits=min(16, int(ds.get("BitsStored", 16) or 16)), slope=slope * step,
                intercept=intercept + slope * shift,
                invert=str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1")
    window = _dicom_window(ds)
    if window is not None:  # real units -> pixel units
        center, width = window
        film.presets["default"] = ((center - film.intercept) / film.slope, width / abs(film.slope))
        film.dicom_window = True
    return film


def _as_uint16(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Values as uint16 with (shift, step): value = pixel * step + shift. Integers in range are kept exactly."""
    if values.dtype == np.uint16 or values.dtype == np.uint8:
        return values.astype(np.uint16, copy=False), 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(values.dtype, np.integer) and high - low <= 65535:
        return (values - low).astype(np.uint16), low, 1.0
    step = (high - low) / 65535 if high > low else 1.0
    return np.rint((values - low) / step).astype(np.uint16), low, step


def _dicom_window(ds) -> tuple[float, float] | None:
    """The header's default view in real units: WindowCenter/Width, or the input range of a VOI LUT."""
    try:
        if "WindowCenter" in ds and "WindowWidth" in ds:
            return first_number(ds.WindowCenter), max(1.0, first_number(ds.WindowWidth))
        if "VOILUTSequence" in ds:
            entries, first, _ = (int(value) for value in ds.VOILUTSequence[0].LUTDescriptor)
            entries = entries or 65536
            return first + entries / 2, float(entries)
    except (TypeError, ValueError, IndexError, AttributeError):
        logger.info("unreadable DICOM window: ignored")
    return None


def _read_picture(data: bytes) -> Film:
    problem = check_image(data)
    if problem:
        raise ImageDecodeError(problem)
    with Image.open(io.BytesIO(data)) as image:
        kind = (image.format or "png").lower()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            pixels, shift, step = _as_uint16(np.asarray(image).astype(np.int64 if image.mode == "I" else np.uint16))
            return Film(pixels, bits=16, slope=step, intercept=shift, kind=kind)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image.convert("RGBA"))
        return Film(np.asarray(image.convert("L"), dtype=np.uint16), bits=8, kind=kind)


def _add_presets(film: Film) -> None:
    """default (the header's window, else the 0.5-99.5 percentile stretch), lung (the darker three quarters of
    the film spread over the grey scale: lung fields in detail) and full range; centre and width in pixel units."""
    sample = film.pixels[::4, ::4]  # percentiles from a sixteenth of the pixels; the extremes from all
    p_half, p25, p75, p_top = (float(v) for v in np.percentile(sample, (0.5, 25, 75, 99.5)))
    low, high = float(film.pixels.min()), float(film.pixels.max())
    film.presets.setdefault("default", ((p_half + p_top) / 2, max(1.0, p_top - p_half)))
    # Dark lungs are low values in MONOCHROME2 and high ones in MONOCHROME1.
    lung_low, lung_high = (p25, high) if film.invert else (low, p75)
    film.presets["lung"] = ((lung_low + lung_high) / 2, max(1.0, lung_high - lung_low))
    film.presets["full"] = ((low + high) / 2, max(1.0, high - low))


def encode_film(film: Film) -> bytes:
    """MAGIC, a 4-byte little-endian header length, the JSON header (padded to 8 bytes), then the pixels as
    little-endian uint16, row by row: what web/static/viewer.js reads."""
    height, width = film.pixels.shape
    header = json.dumps({
        "width": width, "height": height, "bits": film.bits, "slope": film.slope, "intercept": film.intercept,
        "invert": film.invert, "original_width": film.original[0], "original_height": film.original[1],
        "kind": film.kind, "dicom_window": film.dicom_window,
        "presets": {name: [round(c, 3), round(w, 3)] for name, (c, w) in film.presets.items()},
    }).encode()
    header += b" " * (-(len(MAGIC) + 4 + len(header)) % 8)
    return MAGIC + struct.pack("<I", len(header)) + header + film.pixels.astype("<u2", copy=False).tobytes()


def unpack_film(payload: bytes) -> tuple[dict, np.ndarray]:
    """The inverse of encode_film (tests, scripts)."""
    if payload[:4] != MAGIC:
        raise ValueError("not a pneumoscreen film")
    (length,) = struct.unpack("<I", payload[4:8])
    header = json.loads(payload[8:8 + length])
    pixels = np.frombuffer(payload[8 + length:], dtype="<u2").reshape(header["height"], header["width"])
    return header, pixels
