"""The DICOMweb read side's blueprint and what its two halves share: the sign-in check, error answers, Accept
handling, the visible DICOM images and their stored headers.

Search (QIDO-RS) lives in web/dicomweb_search.py, retrieve (WADO-RS) in web/dicomweb_retrieve.py; both put their
routes on this blueprint. One `studies` row is one stored image; a SOP instance sent twice is answered once (its
newest visible copy). PNG/JPEG uploads have no DICOM original and are never listed.
"""
import logging

from flask import Blueprint, Response, abort, jsonify, request, url_for
from flask_login import current_user
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from db.models import Batch, Study
from models.dicom import read_dataset
from models.limits import ImageDecodeError
from web.dicomweb import DICOM_JSON, UID, choose, parse_accept
from web.queries import visible_batches

logger = logging.getLogger(__name__)
bp = Blueprint("dicomweb_read", __name__, url_prefix="/dicomweb")

JSON_TYPES = [DICOM_JSON, "application/json"]
BULK_VRS = ("OB", "OD", "OF", "OL", "OV", "OW", "UN")


@bp.before_request
def _signed_in():
    """A bearer token or a portal session (a browser viewer); every UID in the path checked before any query."""
    if not current_user.is_authenticated:
        return jsonify(error="authentication required: send 'Authorization: Bearer <token>' or sign in"), 401, {
            "WWW-Authenticate": "Bearer"}
    if current_user.role not in ("uploader", "reviewer", "admin"):
        return jsonify(error="this needs the role uploader, reviewer or admin"), 403
    for name, value in (request.view_args or {}).items():
        if name != "frames" and not UID.fullmatch(value):
            return jsonify(error=f"the {name} UID must be digits and dots, at most 64 characters"), 400
    return None


def fail(status: int, message: str):
    """End the request with `status` and a JSON {"error": message}."""
    abort(Response(jsonify(error=message).get_data(), status=status, mimetype="application/json"))


def accepted() -> list:
    """The request's Accept header, parsed; a 400 when it cannot be."""
    try:
        return parse_accept(request.headers.get("Accept"))
    except ValueError as exc:
        fail(400, str(exc))


def json_type() -> str:
    """The DICOM JSON media type the caller accepts; a 406 when it accepts neither."""
    media = choose(accepted(), JSON_TYPES)
    if media is None:
        fail(406, "this resource is application/dicom+json (or application/json): accept one of them")
    return media


def visible(statement):
    """Only images the caller may see (web.queries' department rule) that carry their three UIDs."""
    return statement.select_from(Study).join(Batch, Study.batch_id == Batch.id).where(
        visible_batches(), Study.study_instance_uid.is_not(None), Study.series_instance_uid.is_not(None),
        Study.sop_instance_uid.is_not(None))


def newest_copies(*conditions):
    """Rows of the matching instances, one per SOP instance UID (the newest visible copy)."""
    newest = visible(select(func.max(Study.id))).where(*conditions).group_by(Study.sop_instance_uid)
    return select(Study).where(Study.id.in_(newest))


def stored_header(storage, row: Study) -> Dataset:
    """The stored original's header (no pixels); empty when it cannot be read (logged)."""
    try:
        return read_dataset(storage.get(row.storage_key), pixels=False)
    except (OSError, ImageDecodeError) as exc:
        logger.warning("stored original of study row %s unreadable: %s", row.id, exc)
        return Dataset()


def instance_url(row: Study, suffix: str = "") -> str:
    """The WADO-RS address of the row's instance, with `suffix` (such as /frames/1) after it."""
    return url_for("dicomweb_read.retrieve", study=row.study_instance_uid, series=row.series_instance_uid,
                   instance=row.sop_instance_uid, _external=True) + suffix
