"""A corpus of hostile and awkward uploads, made on the fly: (name, bytes, the reason expected)."""
import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

from tests.helpers import zip_bytes


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def film(height: int = 64, width: int = 48, seed: int = 0) -> Image.Image:
    """A small grayscale picture with structure (so it compresses like a photo, not like zeros)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, height * width).reshape(height, width)
    return Image.fromarray((ramp + rng.integers(0, 50, (height, width))).astype(np.uint8))


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims a huge size (a decompression bomb's header)."""
    data = bytearray(encode(film(), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_with_corrupt_pixels() -> bytes:
    """Valid chunk structure and checksums, but the compressed pixel stream is garbage."""
    data = bytearray(encode(film(), "PNG"))
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8:start - 4])[0]
    data[start + 10:start + length] = bytes(length - 10)
    crc = zlib.crc32(bytes(data[start - 4:start + length])) & 0xFFFFFFFF
    data[start + length:start + length + 4] = struct.pack(">I", crc)
    return bytes(data)


def _encrypted_zip() -> bytes:
    """A zip whose member is marked encrypted (Python cannot write real ZipCrypto; the flag is what counts)."""
    data = bytearray(zip_bytes({"secret.png": encode(film(), "PNG")}))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature) + offset
        data[at] |= 0x01
    return bytes(data)


def _zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.png", bytes(40 * 1024 * 1024))
    return buffer.getvalue()


def _many_members() -> bytes:
    return zip_bytes({f"f{i}.png": b"x" for i in range(5001)})


def bad_at_the_door() -> list[tuple[str, bytes, str]]:
    """Uploads refused at the door: (file name, bytes, words the reason must contain)."""
    png, jpeg = encode(film(), "PNG"), encode(film(), "JPEG")
    return [
        ("empty.png", b"", "empty file"),
        ("blank.jpeg", b"   \n", "not a PNG, JPEG or DICOM"),
        ("truncated.jpeg", jpeg[: len(jpeg) // 2], "truncated"),
        ("truncated.png", png[: len(png) // 2], "truncated"),
        ("header-only.jpeg", jpeg[:20], "not a PNG, JPEG or DICOM"),
        ("signature-only.png", png[:8], "not a PNG, JPEG or DICOM"),
        ("soi-eoi.jpeg", b"\xff\xd8\xff\xd9", "not a PNG, JPEG or DICOM"),
        ("notes.png", b"patient notes, not a film\n" * 20, "not a PNG, JPEG or DICOM"),
        ("program.jpeg", b"MZ\x90\x00\x03" + bytes(200), "not a PNG, JPEG or DICOM"),
        ("binary.png", b"\x7fELF\x02\x01\x01" + bytes(200), "not a PNG, JPEG or DICOM"),
        ("script.jpeg", b"#!/bin/sh\nrm -rf /\n", "not a PNG, JPEG or DICOM"),
        ("page.png", b"<html><script>alert(1)</script></html>", "not a PNG, JPEG or DICOM"),
        ("drawing.png", b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="9"/></svg>', "not a PNG, JPEG or DICOM"),
        ("report.jpeg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "not a PNG, JPEG or DICOM"),
        ("bomb-20000.png", encode(Image.new("1", (20000, 20000)), "PNG"), "pixel limit"),
        ("bomb-8000.png", encode(Image.new("1", (8000, 8000)), "PNG"), "pixel limit"),
        ("bomb-header.jpeg", _jpeg_claiming(30000, 30000), "pixel limit"),
        ("film.gif", encode(film(), "GIF"), "unsupported image format GIF"),
        ("film.bmp", encode(film(), "BMP"), "unsupported image format BMP"),
        ("film.tiff", encode(film(), "TIFF"), "unsupported image format TIFF"),
        ("film.webp", encode(film(), "WEBP"), "unsupported image format WEBP"),
        ("dot.png", encode(film(1, 1), "PNG"), "too small"),
        ("sliver.png", encode(film(2000, 3), "PNG"), "too small"),
        ("bomb.zip", _zip_bomb(), "zip bomb"),
        ("traversal.zip", zip_bytes({"../../etc/cron.d/evil.png": png}), "unsafe path"),
        ("absolute.zip", zip_bytes({"/etc/evil.png": png}), "unsafe path"),
        ("windows.zip", zip_bytes({"C:\\Windows\\evil.png": png}), "unsafe path"),
        ("nested.zip", zip_bytes({"inner.zip": zip_bytes({"a.png": png})}), "nested zip"),
        ("disguised.zip", zip_bytes({"inner.png": zip_bytes({"a.png": png})}), "nested zip"),
        ("encrypted.zip", _encrypted_zip(), "encrypted"),
        ("corrupt.zip", b"PK\x03\x04" + bytes(100), "not a readable zip"),
        ("renamed.zip", b"just text with a zip name", "not a readable zip"),
        ("empty.zip", zip_bytes({}), "holds no files"),
        ("text-inside.zip", zip_bytes({"readme.txt": b"hello"}), "not a PNG, JPEG or DICOM"),
        ("crowded.zip", _many_members(), "over the limit"),
    ]


def bad_inside() -> list[tuple[str, bytes, str]]:
    """Files that look fine at the door but cannot be decoded: the study ends in error with a reason."""
    return [("corrupt-pixels.png", png_with_corrupt_pixels(), "corrupt")]


def good() -> dict[str, bytes]:
    """Awkward but valid films: every one must be screened."""
    base = film()
    rgba = base.convert("RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    sixteen = Image.fromarray((np.asarray(base, np.uint16) * 200 + 1000).astype(np.uint16))
    trns = base.convert("P")
    trns.info["transparency"] = 0
    return {
        "gray.png": encode(base, "PNG"),
        "gray16.png": encode(sixteen, "PNG"),
        "rgba.png": encode(rgba, "PNG"),
        "la.png": encode(base.convert("LA"), "PNG"),
        "palette.png": encode(base.convert("P"), "PNG"),
        "palette-transparent.png": encode(trns, "PNG"),
        "bilevel.png": encode(base.convert("1"), "PNG"),
        "rgb.jpeg": encode(base.convert("RGB"), "JPEG"),
        "cmyk.jpeg": encode(base.convert("CMYK"), "JPEG"),
        "rotated.jpeg": encode(base.convert("RGB"), "JPEG", exif=exif),
        "progressive.jpeg": encode(base, "JPEG", progressive=True),
        "no-extension": encode(base, "PNG"),
        "wrong-extension.jpeg": encode(base, "PNG"),
    }
