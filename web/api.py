"""JSON API for scripts and PACS bridges: bearer tokens, batches, study results, the review queue."""
import logging
import re

from flask import Blueprint, jsonify, request
from flask_login import current_user
from sqlalchemy import func, select

from core.services import current_services
from db.models import Batch, StudyResult, StudyStatus, as_utc
from studies.intake import submit_uploads
from studies.reviews import Conflict, record_decision
from web.auth import by_bearer_token, roles_required
from web.context import csrf, db_session
from web.queries import (
    LANES,
    MAX_PAGE_SIZE,
    PAGE_SIZE,
    batch_json,
    batch_progress,
    queue_counts,
    result_json,
    review_queue,
    visible_batch,
    visible_batches,
    visible_result,
    visible_results,
    visible_study,
)

logger = logging.getLogger(__name__)
bp = Blueprint("api", __name__, url_prefix="/api/v1")
UID = re.compile(r"[0-9]+(\.[0-9]+)*")


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
        current_services(), ((f.filename or "unnamed", f.read()) for f in files), current_user.id, "api",
        current_user.department_id)
    if not accepted:  # every file refused: the batch is still recorded with them (GET /batches/<id> lists them)
        return jsonify(id=batch.id if batch else None, status="rejected", total=0, rejected=rejected), 422
    return jsonify(id=batch.id, status=StudyStatus.QUEUED, total=accepted, rejected=rejected), 202


@bp.get("/batches")
@roles_required("uploader", "reviewer", "admin")
def list_batches():
    """The batches the caller may see, newest first: ?page=N&per_page=M."""
    query = select(Batch).where(visible_batches())
    page, pages, total, rows = _page(query.order_by(Batch.id.desc()))
    progress = batch_progress(db_session(), [batch.id for batch in rows])
    return jsonify(items=[{"id": batch.id, "source": batch.source, "department_id": batch.department_id,
                           "created_at": as_utc(batch.created_at).isoformat(), **progress[batch.id]}
                          for batch in rows], page=page, pages=pages, total=total)


@bp.get("/results")
@roles_required("uploader", "reviewer", "admin")
def list_results():
    """Radiology studies, newest change first, looked up by ?study_instance_uid= or ?accession_number=."""
    query = select(StudyResult).where(visible_results())
    uid, accession = request.args.get("study_instance_uid"), request.args.get("accession_number")
    if uid is not None:
        if len(uid) > 64 or not UID.fullmatch(uid):
            return _error("study_instance_uid must be a DICOM UID (digits and dots, at most 64)", 400)
        query = query.where(StudyResult.study_instance_uid == uid)
    if accession is not None:
        if not 0 < len(accession) <= 16:
            return _error("accession_number must be 1 to 16 characters", 400)
        query = query.where(StudyResult.accession_number == accession)
    page, pages, total, rows = _page(query.order_by(StudyResult.updated_at.desc(), StudyResult.id.desc()))
    return jsonify(items=[result_json(db_session(), result) for result in rows], page=page, pages=pages, total=total)


@bp.get("/results/<int:result_id>")
@roles_required("uploader", "reviewer", "admin")
def get_result(result_id: int):
    result = visible_result(db_session(), result_id)
    if result is None:
        return _error("no such study result", 404)
    return jsonify(result_json(db_session(), result))


def _page(query) -> tuple[int, int, int, list]:
    """?page and ?per_page (at most MAX_PAGE_SIZE) applied to a query: (page, pages, total, rows)."""
    per_page = max(1, min(request.args.get("per_page", PAGE_SIZE, type=int), MAX_PAGE_SIZE))
    total = db_session().scalar(select(func.count()).select_from(query.subquery()))
    pages = max(1, -(-total // per_page))
    page = max(1, min(request.args.get("page", 1, type=int), pages))
    return page, pages, total, db_session().scalars(query.offset((page - 1) * per_page).limit(per_page)).all()


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
    """The open review queue lane by lane, riskiest first: ?lane=third|missed|confirm|scope|qa, ?page=N&per_page=M
    (at most 200 a page); `version` is what a decision sends back as expected_version."""
    lane = request.args.get("lane")
    if lane is not None and lane not in LANES:
        return _error(f"lane must be one of {', '.join(LANES)}", 400)
    page = review_queue(db_session(), page=request.args.get("page", 1, type=int),
                        per_page=request.args.get("per_page", PAGE_SIZE, type=int), lane=lane)
    return jsonify(items=[
        {"study_id": study.id, "batch_id": study.batch_id, "filename": study.filename,
         "probability": round(prediction.probability, 4), "prediction": prediction.prediction,
         "threshold": prediction.threshold, "flag_reasons": flag.reasons, "version": len(flag.reviews),
         "flagged_at": as_utc(flag.created_at).isoformat()}
        for flag, study, prediction in page.rows], page=page.page, pages=page.pages, total=page.total,
        counts=queue_counts(db_session()))


@bp.post("/studies/<int:study_id>/review")
@roles_required("reviewer", "admin")
def post_review(study_id: int):
    study = visible_study(db_session(), study_id)
    if study is None:
        return _error("no such study", 404)
    body = request.get_json(silent=True) or {}
    expected = body.get("expected_version")  # optional: the queue item's version; a stale one is refused (409)
    if expected is not None and (type(expected) is not int or expected < 0):
        return _error("expected_version must be a whole number (the review queue item's version)", 400)
    try:
        review = record_decision(db_session(), study, current_user.id, str(body.get("decision", "")),
                                 str(body.get("note", "")), expected_version=expected)
    except Conflict as exc:
        latest = exc.latest
        return jsonify(error=str(exc), version=len(study.flag.reviews), latest=latest and {
            "decision": latest.decision, "reviewer": latest.reviewer.username, "note": latest.note,
            "at": as_utc(latest.created_at).isoformat()}), 409
    except LookupError as exc:
        return _error(str(exc), 409)
    except ValueError as exc:
        return _error(str(exc), 400)
    db_session().commit()
    return jsonify(study_id=study.id, decision=review.decision, note=review.note,
                   reviewer=current_user.username, at=as_utc(review.created_at).isoformat(),
                   review_status=study.flag.status, flag_reasons=study.flag.reasons,
                   version=len(study.flag.reviews)), 201
