"""DICOMweb STOW-RS (PS3.18 10.5): a PACS or modality posts instances; each is answered stored or failed."""
import logging
import re

from flask import Blueprint, Response, jsonify, request, url_for
from flask_login import current_user

from core.services import current_services
from models.dicom import is_dicom, read_dataset
from models.imaging import ImageDecodeError
from studies.files import expand
from studies.intake import submit_batch
from web.auth import by_bearer_token

logger = logging.getLogger(__name__)
bp = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")

DICOM_JSON = "application/dicom+json"
# PS3.4 C.4.2.1.4 / PS3.18 10.5.3 failure reasons.
CANNOT_UNDERSTAND = 0xC000
NOT_SUPPORTED = 0xA900  # "data set does not match SOP class": here, no grayscale image to screen


@bp.before_request
def _bearer_only():
    """Machines talk to this endpoint: a token (so no CSRF), and 401 (not a login page) without one."""
    if not current_user.is_authenticated or not by_bearer_token():
        return jsonify(error="authentication required: send 'Authorization: Bearer <token>'"), 401, {
            "WWW-Authenticate": "Bearer"}
    if current_user.role not in ("uploader", "admin"):
        return jsonify(error="this needs the role uploader or admin"), 403
    return None


@bp.post("/studies")
def store_instances():
    """Store every application/dicom part of a multipart/related body; answer per instance."""
    content_type = request.headers.get("Content-Type", "")
    boundary = _boundary(content_type)
    if not content_type.lower().startswith("multipart/related") or boundary is None:
        return jsonify(error='send multipart/related; type="application/dicom" with a boundary'), 415
    parts = split_multipart(request.get_data(), boundary)
    if not parts:
        return jsonify(error="the multipart body holds no parts"), 400
    stored, failed, items = [], [], []
    for index, (headers, body) in enumerate(parts):
        uids = _uids(body)
        part_type = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if part_type != "application/dicom":
            failed.append((uids, NOT_SUPPORTED, f"part {index + 1} is {part_type}, not application/dicom"))
            continue
        if not is_dicom(body):  # a JPEG or a zip labelled application/dicom is not a DICOM instance
            failed.append((uids, CANNOT_UNDERSTAND, f"part {index + 1} is labelled application/dicom but is not DICOM"))
            continue
        item = next(expand(f"stow/{uids[1] or index + 1}.dcm", body))
        if item.error:
            reason = CANNOT_UNDERSTAND if uids[1] is None else NOT_SUPPORTED
            failed.append((uids, reason, item.error))
        else:
            stored.append(uids)
            items.append(item)
    batch = None
    if items:
        batch, _ = submit_batch(current_services(), items, current_user.id, "dicomweb")
    for uids, _, reason in failed:
        logger.info("STOW-RS instance %s refused: %s", uids[1], reason)
    status = 200 if not failed else 202 if stored else 409
    response = Response(_store_response(stored, failed), status=status, mimetype=DICOM_JSON)
    if batch is not None:
        response.headers["Content-Location"] = url_for("api.get_batch", batch_id=batch.id)
    return response


def _boundary(content_type: str) -> str | None:
    match = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    return match[1] if match else None


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


def _uids(body: bytes) -> tuple[str | None, str | None]:
    """SOP Class and Instance UID when the header can be read at all."""
    try:
        ds = read_dataset(body, pixels=False)
    except ImageDecodeError:
        return None, None
    return ds.get("SOPClassUID"), ds.get("SOPInstanceUID")


def _store_response(stored: list, failed: list) -> str:
    """PS3.18 store response: ReferencedSOPSequence and FailedSOPSequence, as DICOM JSON."""
    from pydicom.dataset import Dataset

    def reference(uids):
        item = Dataset()
        if uids[0]:
            item.ReferencedSOPClassUID = uids[0]
        if uids[1]:
            item.ReferencedSOPInstanceUID = uids[1]
        return item

    response = Dataset()
    if stored:
        response.ReferencedSOPSequence = [reference(uids) for uids in stored]
    if failed:
        items = []
        for uids, reason, _ in failed:
            item = reference(uids)
            item.FailureReason = reason
            items.append(item)
        response.FailedSOPSequence = items
    return response.to_json()
