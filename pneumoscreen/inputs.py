"""Turn what people hand over (image files, .zip archives, folders) into named images, safely."""
import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image, UnidentifiedImageError

from models.imaging import MAX_PIXELS, SUPPORTED_FORMATS

logger = logging.getLogger(__name__)

MAX_MEMBERS = 5000
MAX_MEMBER_BYTES = 100 * 1024 * 1024
MAX_ARCHIVE_BYTES = 4 * 1024 * 1024 * 1024


@dataclass
class Item:
    """One image handed over: its name as found, and its bytes or the reason it was refused."""

    name: str
    data: bytes | None = None
    error: str | None = None


def is_zip(name: str, data: bytes) -> bool:
    return name.lower().endswith(".zip") or data[:4] == b"PK\x03\x04"


def expand(name: str, data: bytes) -> Iterator[Item]:
    """Yield the images in one upload: the file itself, or the members of a zip archive."""
    if not is_zip(name, data):
        yield Item(name, data, check_image(data))
        return
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir() and not _is_junk(m.filename)]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        yield Item(name, error=f"not a readable zip archive: {exc}")
        return
    if len(members) > MAX_MEMBERS:
        yield Item(name, error=f"zip holds {len(members)} files, over the limit of {MAX_MEMBERS}")
        return
    total = 0
    for member in members:
        label = f"{name}/{member.filename}"
        total += member.file_size
        if member.flag_bits & 0x1:
            yield Item(label, error="encrypted zip member: send it unencrypted")
        elif member.file_size > MAX_MEMBER_BYTES or total > MAX_ARCHIVE_BYTES:
            yield Item(label, error="zip member too large when uncompressed (possible zip bomb)")
        elif member.filename.lower().endswith(".zip"):
            yield Item(label, error="nested zip archives are not accepted: send the images directly")
        else:
            yield _read_member(archive, member, label)


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, label: str) -> Item:
    try:
        with archive.open(member) as handle:
            data = handle.read(MAX_MEMBER_BYTES + 1)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        return Item(label, error=f"cannot read zip member: {exc}")
    if len(data) > MAX_MEMBER_BYTES:
        return Item(label, error="zip member too large when uncompressed (possible zip bomb)")
    return Item(label, data, check_image(data))


def _is_junk(filename: str) -> bool:
    """macOS resource forks and hidden files that archivers add: not studies."""
    base = filename.rsplit("/", 1)[-1]
    return filename.startswith("__MACOSX/") or base.startswith(".")


def check_image(data: bytes) -> str | None:
    """A quick look at the header at the door: None when it looks like a PNG/JPEG we can read."""
    if not data:
        return "empty file"
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in SUPPORTED_FORMATS:
                return f"unsupported image format {image.format}; send PNG or JPEG"
            if image.width * image.height > MAX_PIXELS:
                return f"image is {image.width}x{image.height} px, over the {MAX_PIXELS:,} pixel limit"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return "not a PNG or JPEG image"
    return None


def walk(paths: list[Path]) -> Iterator[Item]:
    """Images under files, folders (recursive) and zip files, named by the path as found."""
    for root in paths:
        if not root.exists():
            yield Item(str(root), error="no such file or folder")
            continue
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            if _is_junk(path.name):
                continue
            try:
                data = path.read_bytes()
            except OSError as exc:
                yield Item(str(path), error=f"cannot read file: {exc.strerror}")
                continue
            yield from expand(str(path), data)
