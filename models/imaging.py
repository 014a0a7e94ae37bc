"""Chest films at the door and in decoding: check_image (cheap, on upload) and decode_image (PNG/JPEG/DICOM)."""
import io
import logging

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.dicom import check_dicom, decode_dicom, is_dicom
from models.limits import MAX_PIXELS, ImageDecodeError, size_problem

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS = ("PNG", "JPEG")
# Films are decoded to at most this many px a side: pictures for people (studies/pictures.py) want no more.
DECODE_SIDE = 512
# Screening squashes films to 224 px: a JPEG is decoded at the smallest of 1/8, 1/4, 1/2 scale that keeps both
# sides at least this long. Full-size films (1-2 k px) decode mostly at 1/4 instead of 1/2: 3.2 instead of 6.1 ms a
# film; over the 200 kermany-fullsize films every call and flag stayed as at 512 (bench/fullsize_decode.py).
SCREEN_SIDE = 256


def check_image(data: bytes) -> str | None:
    """A quick look at the header at the door: None when it looks like a PNG/JPEG/DICOM film we can read."""
    if not data:
        return "empty file"
    if is_dicom(data):
        return check_dicom(data)
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_header(image)
            if problem := size_problem(image.width, image.height):
                return problem
            return _check_complete(image)
    except ImageDecodeError as exc:
        return str(exc)
    except Image.DecompressionBombError:
        return f"image has too many pixels (over the {MAX_PIXELS:,} pixel limit): refused"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "not a PNG, JPEG or DICOM image"


def _check_header(image: Image.Image) -> None:
    """The format and size rules, at the door and in decoding alike; ImageDecodeError names the breach."""
    if image.format not in SUPPORTED_FORMATS:
        raise ImageDecodeError(f"unsupported image format {image.format}; send PNG or JPEG")
    if image.width * image.height > MAX_PIXELS:
        raise ImageDecodeError(f"image is {image.width}x{image.height} px, over the {MAX_PIXELS:,} pixel limit")


def _check_complete(image: Image.Image) -> str | None:
    """Catch truncated files at the door, cheaply: PNG chunk checksums, JPEG decoded at 1/8 scale."""
    try:
        if image.format == "PNG":
            image.verify()
        else:
            image.draft("L", (image.width // 8 or 1, image.height // 8 or 1))
            image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        return f"corrupt or truncated {image.format} image: {exc}"
    return None


def decode_image(data: bytes, max_side: int = DECODE_SIDE, draft_side: int | None = None) -> np.ndarray:
    """Decode PNG/JPEG bytes to a 2-D float32 array in [0, 1], at most `max_side` px on the long side.

    A JPEG is decoded at reduced scale while both its sides stay at least `draft_side` (default `max_side`).
    """
    if not data:
        raise ImageDecodeError("empty file")
    if is_dicom(data):
        return _fit(decode_dicom(data), max_side)
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_header(image)
            if image.format == "JPEG":
                # JPEG can decode at 1/2, 1/4, 1/8 scale directly: far faster for full-size films.
                image.draft("L", (draft_side or max_side,) * 2)
            image = ImageOps.exif_transpose(image)
            pixels = _to_gray(image)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not a PNG, JPEG or DICOM image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None
    return _fit(pixels, max_side)


def _to_gray(image: Image.Image) -> np.ndarray:
    """Grayscale float32 in [0, 1]; high bit depths are stretched to their own range."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        if high <= low:
            return np.zeros(pixels.shape, np.float32)
        return (pixels - low) / (high - low)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent regions become black, like the film border.
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _fit(pixels: np.ndarray, max_side: int) -> np.ndarray:
    height, width = pixels.shape
    scale = max_side / max(height, width)
    if scale >= 1:
        return pixels
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(pixels.astype(np.float32, copy=False)).resize(size, Image.Resampling.BILINEAR,
                                                                             reducing_gap=2.0)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def to_png(pixels: np.ndarray, max_side: int | None = None) -> bytes:
    """Encode a [0, 1] grayscale array as an 8-bit PNG (thumbnails, crops, overlays)."""
    image = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if max_side:
        image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast: optimize=True cost ~25 ms a film for ~15% bytes
    return buffer.getvalue()
