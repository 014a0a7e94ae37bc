"""DICOMweb STOW-RS (PS3.18 10.5): a PACS or modality posts instances; each is answered stored or failed.

Also the protocol pieces the read side (web/dicomweb_search.py, web/dicomweb_retrieve.py) shares: UID checks,
Accept parsing, multipart.
"""
import logging
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from flask import Blueprint, Response, jsonify, request, url_for
from flask_login import current_user

from core.services import current_services
from db import counters
from models.dicom import is_dicom, read_dataset
from models.imaging import ImageDecodeError
from studies.files import expand
from studies.intake import submit_batch
from web.auth import by_bearer_token

logger = logging.getLogger(__name__)
bp = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")

DICOM_JSON = "application/dicom+json"
UID = re.compile(r"[0-9.]{1,64}")
# PS3.4 C.4.2.1.4 / PS3.18 10.5.3 failure reasons; a refused file's own status (Item.dicom_status) comes first.
CANNOT_UNDERSTAND = 0xC000
NOT_SUPPORTED = 0xA900  # "data set does not match": no grayscale image to screen, or not the target study
PROCESSING_FAILURE = 0x0110  # accepted at the door, then not stored (it could not be de-identified)


@bp.before_request
def _bearer_only():
    """Machines post here: a token (so no CSRF), and 401 (not a login page) without one."""
    if not current_user.is_authenticated or not by_bearer_token():
        return jsonify(error="authentication required: send 'Authorization: Bearer <token>'"), 401, {
            "WWW-Authenticate": "Bearer"}
    if current_user.role not in ("uploader", "admin"):
        return jsonify(error="this needs the role uploader or admin"), 403
    return None


@bp.post("/studies")
def store_instances():
    """Store every application/dicom part of a multipart/related body; answer per instance."""
    return _store(None)


@bp.post("/studies/<study>")
def store_study_instances(study: str):
    """The same, into one study: an instance of another study fails, the rest are stored."""
    if not UID.fullmatch(study):
        return jsonify(error="the study UID in the path must be digits and dots, at most 64 characters"), 400
    return _store(study)


def _store(target_study: str | None):
    content_type = request.headers.get("Content-Type", "")
    boundary = _boundary(content_type)
    if not content_type.lower().startswith("multipart/related") or boundary is None:
        return jsonify(error='send multipart/related; type="application/dicom" with a boundary'), 415
    body_type = _parameter(content_type, "type")
    if body_type and body_type.lower() != "application/dicom":
        return jsonify(error=f'multipart/related; type="{body_type}" is not supported: only DICOM instances '
                             '(type="application/dicom") are stored, not metadata with bulk data'), 415
    parts = split_multipart(request.get_data(), boundary)
    if not parts:
        return jsonify(error="the multipart body holds no parts"), 400
    stored, failed, items = [], [], []
    rules = current_services().settings.routing_rules
    for index, (headers, body) in enumerate(parts):
        uids = _uids(body)
        part_type = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if part_type != "application/dicom":
            failed.append((uids, NOT_SUPPORTED, f"part {index + 1} is {part_type}, not application/dicom"))
            continue
        if not is_dicom(body):  # a JPEG or a zip labelled application/dicom is not a DICOM instance
            failed.append((uids, CANNOT_UNDERSTAND, f"part {index + 1} is labelled application/dicom but is not DICOM"))
            continue
        if target_study is not None and uids.study != target_study:
            failed.append((uids, NOT_SUPPORTED, f"part {index + 1} belongs to study {uids.study}, not {target_study}"))
            continue
        item = next(expand(f"stow/{uids.instance or index + 1}.dcm", body, rules))
        if item.error:
            reason = item.dicom_status or (CANNOT_UNDERSTAND if uids.instance is None else NOT_SUPPORTED)
            failed.append((uids, reason, item.error))
        else:  # not-applicable instances (Item.not_applicable) are stored too: accepted, never screened
            stored.append(uids)
            items.append(item)
    batch, reasons = None, {}
    if items:
        batch, rejected = submit_batch(current_services(), items, current_user.id, "dicomweb",
                                       current_user.department_id)
        reasons = {refused["filename"]: refused["error"] for refused in rejected}
        failed += [(uids, PROCESSING_FAILURE, reasons[item.name]) for uids, item in zip(stored, items)
                   if item.name in reasons]
        stored = [uids for uids, item in zip(stored, items) if item.name not in reasons]
    for uids, _, reason in failed:
        logger.info("STOW-RS instance %s refused: %s", uids.instance, reason)
    _count([item for item in items if item.name not in reasons], failed)
    status = 200 if not failed else 202 if stored else 409
    response = Response(_store_response(stored, failed, target_study), status=status, mimetype=DICOM_JSON)
    if batch is not None:
        response.headers["Content-Location"] = url_for("api.get_batch", batch_id=batch.id)
    return response


def _count(kept: list, failed: list) -> None:
    """/metrics: instances received by STOW-RS, stored (screened or accepted and ignored) or refused by status."""
    ignored = sum(1 for item in kept if item.not_applicable)
    refused = Counter(reason for _, reason, _ in failed)
    with current_services().sessions.begin() as session:
        for outcome, count in (("stored", len(kept) - ignored), ("ignored", ignored)):
            if count:
                counters.count_instances(session, "stow-rs", outcome, 0, by=count)
        for status, count in refused.items():
            counters.count_instances(session, "stow-rs", "refused", status, by=count)


def _boundary(content_type: str) -> str | None:
    return _parameter(content_type, "boundary")


def _parameter(content_type: str, name: str) -> str | None:
    match = re.search(rf'(?:^|;)\s*{name}\s*=\s*"?([^";]+)"?', content_type, re.IGNORECASE)
    return match[1].strip() if match else None


def split_multipart(body: bytes, boundary: str) -> list[tuple[dict, bytes]]:
    """The parts of a multipart body as (lower-cased headers, bytes) (RFC 2046)."""
    delimiter = b"--" + boundary.encode("latin-1")
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, _, payload = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, payload[:-2] if payload.endswith(b"\r\n") else payload))
    return parts


@dataclass(frozen=True)
class _Uids:
    sop_class: str | None = None
    instance: str | None = None
    study: str | None = None
    series: str | None = None


def _uids(body: bytes) -> _Uids:
    """SOP class, instance, study and series UIDs when the header can be read at all."""
    try:
        ds = read_dataset(body, pixels=False)
    except ImageDecodeError:
        return _Uids()
    return _Uids(*(str(ds[keyword].value) if keyword in ds and ds[keyword].value else None for keyword in
                   ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")))


def _store_response(stored: list, failed: list, target_study: str | None) -> str:
    """PS3.18 store response: ReferencedSOPSequence (with each instance's RetrieveURL) and FailedSOPSequence."""
    from pydicom.dataset import Dataset

    def reference(uids):
        item = Dataset()
        if uids.sop_class:
            item.ReferencedSOPClassUID = uids.sop_class
        if uids.instance:
            item.ReferencedSOPInstanceUID = uids.instance
        return item

    response = Dataset()
    if target_study is not None:
        response.RetrieveURL = url_for("dicomweb_read.retrieve", study=target_study, _external=True)
    if stored:
        items = []
        for uids in stored:
            item = reference(uids)
            if uids.study and uids.series and uids.instance and all(
                    UID.fullmatch(uid) for uid in (uids.study, uids.series, uids.instance)):
                item.RetrieveURL = url_for("dicomweb_read.retrieve", study=uids.study, series=uids.series,
                                           instance=uids.instance, _external=True)
            items.append(item)
        response.ReferencedSOPSequence = items
    if failed:
        items = []
        for uids, reason, _ in failed:
            item = reference(uids)
            item.FailureReason = reason
            items.append(item)
        response.FailedSOPSequence = items
    return response.to_json()


# ---- Content negotiation (PS3.18 8.7) and multipart answers, for the read side ----

@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: media type, its `type` and `transfer-syntax` parameters, quality."""

    media: str
    type: str | None = None
    transfer_syntax: str | None = None
    quality: float = 1.0
    params: dict = field(default_factory=dict, compare=False)


_ACCEPT_ENTRY = re.compile(r'(?:[^,"]|"[^"]*")+')


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header; none given means */*. Raises ValueError on a malformed one."""
    ranges = []
    for entry in _ACCEPT_ENTRY.findall(header or "*/*"):
        media, *params = [piece.strip() for piece in re.findall(r'(?:[^;"]|"[^"]*")+', entry)]
        if not media:
            continue
        if not re.fullmatch(r"[\w.+*-]+/[\w.+*-]+", media):
            raise ValueError(f"Accept: {media!r} is not a media type")
        values = {}
        for param in params:
            name, sep, value = param.partition("=")
            if sep:
                values[name.strip().lower()] = value.strip().strip('"')
        try:
            quality = float(values.get("q", 1))
        except ValueError:
            raise ValueError(f"Accept: q={values['q']!r} is not a number") from None
        ranges.append(MediaRange(media.lower(), values.get("type", "").lower() or None,
                                 values.get("transfer-syntax"), min(max(quality, 0.0), 1.0), values))
    return ranges or [MediaRange("*/*")]


def _media_matches(pattern: str, media: str) -> bool:
    if pattern in ("*/*", media):
        return True
    return pattern.endswith("/*") and media.split("/")[0] == pattern.split("/")[0]


def choose(ranges: list[MediaRange], offers: list[str]) -> str | None:
    """The offered single-part media type the caller accepts best (server order breaks ties); None: 406."""
    best, best_quality = None, 0.0
    for offer in offers:
        matching = [r for r in ranges if _media_matches(r.media, offer)]
        if not matching:
            continue
        most_specific = max(matching, key=lambda r: (r.media.count("*") == 0, r.media != "*/*", r.quality))
        if most_specific.quality > best_quality:
            best, best_quality = offer, most_specific.quality
    return best


def multipart_syntaxes(ranges: list[MediaRange], part_type: str) -> set[str] | None:
    """Transfer syntaxes acceptable for multipart/related parts of `part_type`: {"*"} for any, None for none.

    A range without transfer-syntax takes what is stored (no transcoding here), like `transfer-syntax=*`.
    """
    syntaxes = set()
    for accepted in ranges:
        if accepted.quality <= 0:
            continue
        if accepted.media == "multipart/related":
            if accepted.type and not _media_matches(accepted.type, part_type):
                continue
        elif accepted.media not in ("*/*", "multipart/*"):
            continue
        syntaxes.add(accepted.transfer_syntax or "*")
    return syntaxes or None


def multipart(parts: Iterable[tuple[str, bytes]], part_type: str) -> Response:
    """A multipart/related answer of (Content-Type, bytes) parts, streamed part by part."""
    boundary = uuid.uuid4().hex

    def body() -> Iterator[bytes]:
        for content_type, data in parts:
            yield f"--{boundary}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            yield data
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return Response(body(), content_type=f'multipart/related; type="{part_type}"; boundary={boundary}')
