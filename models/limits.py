"""Limits and the error every image reader shares (PNG/JPEG in imaging, DICOM in dicom)."""

# A real chest film is at most ~3000 x 3000 px; anything far beyond that is a decompression bomb.
MAX_PIXELS = 40_000_000
# Smaller than this a side is a thumbnail or an icon, not a chest film.
MIN_SIDE = 32


class ImageDecodeError(ValueError):
    """The bytes are not a chest film this service can read; the message says why."""
