"""Limits and the error every image reader shares (PNG/JPEG in imaging, DICOM in dicom)."""

# A real chest film is at most ~3000 x 3000 px; anything far beyond that is a decompression bomb.
MAX_PIXELS = 40_000_000
# Smaller than this a side is a thumbnail or an icon, not a chest film.
MIN_SIDE = 32
# Longer side over shorter: films are decoded to at most 512 px a side (imaging.DECODE_SIDE), and the
# shorter side must keep MIN_SIDE after that; no chest film is anywhere near this narrow.
MAX_ASPECT = 512 // MIN_SIDE


def size_problem(width: int, height: int, kind: str = "image") -> str | None:
    """Why a width x height image is no chest film this service can screen; None when it may be."""
    if width * height > MAX_PIXELS:
        return f"{kind} is {width}x{height} px, over the {MAX_PIXELS:,} pixel limit"
    if min(width, height) < MIN_SIDE:
        return f"{kind} is {width}x{height} px, too small for a chest film"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return f"{kind} is {width}x{height} px, too narrow for a chest film (sides over {MAX_ASPECT}:1)"
    return None


class ImageDecodeError(ValueError):
    """The bytes are not a chest film this service can read; the message says why."""
