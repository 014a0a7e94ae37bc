"""JSON API for scripts and PACS bridges: bearer tokens, batches, the review queue."""
import logging

from flask import Blueprint, jsonify, request
from flask_login import current_user

from core.services import current_services
from db.models import StudyStatus
from studies.intake import submit_uploads
from studies.reviews import record_decision
from web.auth import by_bearer_token, roles_required
from web.context import csrf, db_session
from web.queries import PAGE_SIZE, batch_json, review_queue, visible_batch, visible_study

logger = logging.getLogger(__name__)
bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.before_request
def _csrf_for_cookie_sessions():
    """Scripts send a bearer token; a browser session posting here must carry the CSRF token."""
    if request.method != "GET" and current_user.is_authenticated and not by_bearer_token():
        csrf.protect()


def _error(message: str, status: int):
    return jsonify(error=message), status


@bp.post("/batches")
@roles_required("uploader", "admin")
def create_batch():
    files = request.files.getlist("files")
    if not files:
        return _error("no files: send them as multipart form field 'files'", 400)
    batch, rejected, accepted = submit_uploads(
        current_services(), ((f.filename or "unnamed", f.read()) for f in files), current_user.id, "api")
    if batch is None:
        return jsonify(id=None, status="rejected", total=0, rejected=rejected), 422
    return jsonify(id=batch.id, status=StudyStatus.QUEUED, total=accepted, rejected=rejected), 202


@bp.get("/batches/<int:batch_id>")
@roles_required("uploader", "reviewer", "admin")
def get_batch(batch_id: int):
    batch = visible_batch(db_session(), batch_id)
    if batch is None:
        return _error("no such batch", 404)
    return jsonify(batch_json(db_session(), batch))


@bp.get("/review")
@roles_required("reviewer", "admin")
def get_review_queue():
    """The open review queue, riskiest first: ?page=N&per_page=M (at most 200 a page)."""
    page = review_queue(db_session(), page=request.args.get("page", 1, type=int),
                        per_page=request.args.get("per_page", PAGE_SIZE, type=int))
    return jsonify(items=[
        {"study_id": study.id, "batch_id": study.batch_id, "filename": study.filename,
         "probability": round(prediction.probability, 4), "prediction": prediction.prediction,
         "flag_reasons": flag.reasons, "flagged_at": flag.created_at.isoformat()}
        for flag, study, prediction in page.rows], page=page.page, pages=page.pages, total=page.total)


@bp.post("/studies/<int:study_id>/review")
@roles_required("reviewer", "admin")
def post_review(study_id: int):
    study = visible_study(db_session(), study_id)
    if study is None:
        return _error("no such study", 404)
    body = request.get_json(silent=True) or {}
    try:
        review = record_decision(db_session(), study, current_user.id, str(body.get("decision", "")),
                                 str(body.get("note", "")))
    except LookupError as exc:
        return _error(str(exc), 409)
    except ValueError as exc:
        return _error(str(exc), 400)
    db_session().commit()
    return jsonify(study_id=study.id, decision=review.decision, note=review.note,
                   reviewer=current_user.username, at=review.created_at.isoformat()), 201
