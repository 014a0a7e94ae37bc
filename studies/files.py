"""Turn what people hand over (image files, .zip archives, folders) into named images, safely."""
import io
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from core.settings import RoutingRule
from models.dicom import DicomMeta, header_problem, is_dicom, meta_of, read_dataset
from models.imaging import check_image
from models.limits import ImageDecodeError
from studies.applicability import CANNOT_UNDERSTAND, IGNORE, REFUSE, route

logger = logging.getLogger(__name__)

MAX_MEMBERS = 5000
MAX_MEMBER_BYTES = 100 * 1024 * 1024
MAX_ARCHIVE_BYTES = 4 * 1024 * 1024 * 1024
# One file handed over directly (not in a zip); the request as a whole is capped by MAX_CONTENT_LENGTH.
MAX_FILE_BYTES = MAX_MEMBER_BYTES
# Films are already compressed: a zip that expands far beyond its size is a zip bomb.
MAX_ZIP_RATIO = 20
ZIP_RATIO_SLACK = 16 * 1024 * 1024
MAX_NAME = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class Item:
    """One image handed over: its name as found, and its bytes or the reason it was refused."""

    name: str
    data: bytes | None = None
    error: str | None = None
    # DICOM header facts for the study row; None for PNG/JPEG.
    meta: DicomMeta | None = None
    # Accepted but not screened, and why (studies/applicability.py): stored, answered success, never screened.
    not_applicable: str | None = None
    # For a refused DICOM instance: the status a DICOM peer is answered with (0x0122, 0xA900, 0xC000...).
    dicom_status: int | None = None


def is_zip(name: str, data: bytes) -> bool:
    return name.lower().endswith(".zip") or data[:4] == b"PK\x03\x04"


def expand(name: str, data: bytes, rules: tuple[RoutingRule, ...] = ()) -> Iterator[Item]:
    """Yield the images in one upload: the file itself, or the members of a zip archive. DICOM files are routed
    (studies.applicability) by the site's `rules` (Settings.routing_rules), then the built-in ones."""
    name = clean_name(name)
    if len(data) > MAX_FILE_BYTES and not is_zip(name, data):
        limit = MAX_FILE_BYTES // 2**20
        yield Item(name, error=f"file is {len(data) / 2**20:.0f} MB, over the {limit} MB per-file limit")
        return
    if not is_zip(name, data):
        yield _item(name, data, rules)
        return
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir() and not _is_junk(m.filename)]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        yield Item(name, error=f"not a readable zip archive: {exc}")
        return
    if not members:
        yield Item(name, error="zip archive holds no files")
        return
    if len(members) > MAX_MEMBERS:
        yield Item(name, error=f"zip holds {len(members)} files, over the limit of {MAX_MEMBERS}")
        return
    expanded = sum(m.file_size for m in members)
    if expanded > min(MAX_ARCHIVE_BYTES, MAX_ZIP_RATIO * len(data) + ZIP_RATIO_SLACK):
        yield Item(name, error=f"zip expands to {expanded / 2**20:.0f} MB from {len(data) / 2**20:.1f} MB "
                               "(possible zip bomb): send the images uncompressed or in smaller zips")
        return
    for member in members:
        label = clean_name(f"{name}/{member.filename}")
        if member.flag_bits & 0x1:
            yield Item(label, error="encrypted zip member: send it unencrypted")
        elif _unsafe_path(member.filename):
            yield Item(label, error="unsafe path in zip (absolute or containing ..): refused")
        elif member.file_size > MAX_MEMBER_BYTES:
            yield Item(label, error="zip member too large when uncompressed (possible zip bomb)")
        elif member.filename.lower().endswith(".zip"):
            yield Item(label, error="nested zip archives are not accepted: send the images directly")
        else:
            yield _read_member(archive, member, label, rules)


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, label: str,
                 rules: tuple[RoutingRule, ...]) -> Item:
    try:
        with archive.open(member) as handle:
            data = handle.read(MAX_MEMBER_BYTES + 1)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        return Item(label, error=f"cannot read zip member: {exc}")
    if len(data) > MAX_MEMBER_BYTES:
        return Item(label, error="zip member too large when uncompressed (possible zip bomb)")
    if data[:4] == b"PK\x03\x04":
        return Item(label, error="nested zip archives are not accepted: send the images directly")
    return _item(label, data, rules)


def clean_name(name: str) -> str:
    """A file name fit to store and show: no control characters (NUL breaks PostgreSQL), bounded length."""
    cleaned = _CONTROL.sub("?", name or "unnamed").strip() or "unnamed"
    return cleaned if len(cleaned) <= MAX_NAME else cleaned[:MAX_NAME - 3] + "..."


def _unsafe_path(filename: str) -> bool:
    """Absolute or parent-relative member names: harmless here (names never become paths), refused anyway."""
    parts = filename.replace("\\", "/").split("/")
    return filename.startswith(("/", "\\")) or ".." in parts or bool(re.match(r"^[A-Za-z]:", filename))


def _item(name: str, data: bytes, rules: tuple[RoutingRule, ...] = ()) -> Item:
    """An accepted, ignored or refused image; DICOM files carry their header attributes along."""
    if not is_dicom(data):
        return Item(name, data, check_image(data))
    try:
        return _dicom_item(name, data, rules)
    except Exception as exc:  # pydicom parses lazily and raises many kinds on a hostile header: this file alone
        return Item(name, data, f"unreadable DICOM header: {type(exc).__name__}: {str(exc)[:200]}",
                    dicom_status=CANNOT_UNDERSTAND)


def _dicom_item(name: str, data: bytes, rules: tuple[RoutingRule, ...]) -> Item:
    """Parsed once (the pixel bytes read, not decoded): header facts, routing and the image check share it."""
    try:
        ds = read_dataset(data)
    except ImageDecodeError as exc:
        return Item(name, data, str(exc), dicom_status=CANNOT_UNDERSTAND)
    meta = meta_of(ds)
    decision = route(ds, meta, rules)
    if decision.action == REFUSE:
        return Item(name, data, decision.reason, dicom_status=decision.status)
    if decision.action == IGNORE:
        return Item(name, data, meta=meta, not_applicable=decision.reason)
    error = header_problem(ds)  # to be screened: the image itself must be one the screener can take
    if error is not None:
        return Item(name, data, error, dicom_status=CANNOT_UNDERSTAND)
    return Item(name, data, meta=meta)


def _is_junk(filename: str) -> bool:
    """macOS resource forks and hidden files that archivers add: not studies."""
    base = filename.rsplit("/", 1)[-1]
    return filename.startswith("__MACOSX/") or base.startswith(".")


def walk(paths: list[Path], rules: tuple[RoutingRule, ...] = ()) -> Iterator[Item]:
    """Images under files, folders (recursive) and zip files, named by the path as found (`rules`: the site's
    routing rules, as for `expand`)."""
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
            yield from expand(str(path), data, rules)
