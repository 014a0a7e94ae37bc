"""Portal pages for readers: the queue in lanes, every result (worklist), the study page with the diagnostic
viewer, decisions that are safe with several readers (claims, versions, third reads)."""
import gzip
import logging
import threading

from flask import Blueprint, Response, abort, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import IntegerField, TextAreaField
from wtforms.validators import NumberRange, Optional
from wtforms.widgets import HiddenInput

from core.services import current_services
from db.models import Department, FlagStatus, User, as_utc, utcnow
from models.film import encode_film, read_film
from models.limits import ImageDecodeError
from studies.reviews import Conflict, claim, explain_flag, flag_version, holder, record_decision
from web.auth import roles_required
from web.context import db_session
from web.queries import LANES, copies_of, lane_order, queue_counts, result_json, review_queue, study_json, visible_study
from web.worklist import REASONS, Filters, worklist

logger = logging.getLogger(__name__)
bp = Blueprint("review", __name__, url_prefix="/review")
# Decoding a full-size film takes ~0.1-0.5 s and up to ~100 MB: two at a time per portal process.
FILM_DECODES = threading.BoundedSemaphore(2)


class DecisionForm(FlaskForm):
    note = TextAreaField("Note")
    # How many decisions the case held when the page loaded: a decision on a changed case is refused (409).
    # The page always sends it; a form without it (a script) is not checked.
    version = IntegerField(widget=HiddenInput(), validators=[Optional(), NumberRange(min=0)])


@bp.app_context_processor
def _queue_counts() -> dict:
    """Open cases per lane for the navigation (readers only)."""
    if not current_user.is_authenticated or current_user.role not in ("reviewer", "admin"):
        return {}
    return {"review_counts": queue_counts(db_session())}


@bp.app_template_filter("waited")
def waited(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes // 1440} days"


@bp.get("/")
@roles_required("reviewer", "admin")
def queue():
    status = FlagStatus.CLOSED if request.args.get("status") == "closed" else FlagStatus.OPEN
    lane = request.args.get("lane")
    lane = lane if lane in LANES and status == FlagStatus.OPEN else None
    page = review_queue(db_session(), status, request.args.get("page", 1, type=int), lane=lane)
    flags = [flag for flag, _, _ in page.rows]
    names = _names({flag.claimed_by for flag in flags} | {flag.latest.reviewer_id for flag in flags if flag.latest})
    copies = copies_of(db_session(), [study.id for _, study, _ in page.rows])
    return render_template("review_queue.html", queue=page, rows=page.rows, status=status, lane=lane, lanes=LANES,
                           counts=queue_counts(db_session()), copies=copies, names=names, now=utcnow(),
                           holder=holder, me=current_user.id)


@bp.get("/all")
@roles_required("reviewer", "admin")
def all_results():
    filters = Filters.from_args(request.args)
    page = worklist(db_session(), filters, request.args.get("page", 1, type=int))
    departments = db_session().execute(select(Department.id, Department.name).order_by(Department.name)).all()
    return render_template("review_worklist.html", page=page, filters=filters, departments=departments,
                           department_names=dict(departments), reasons=REASONS)


@bp.route("/<int:study_id>", methods=["GET", "POST"])
@roles_required("reviewer", "admin")
def study(study_id: int):
    session = db_session()
    found = visible_study(session, study_id)
    if found is None:
        abort(404)
    lane = request.args.get("lane") if request.args.get("lane") in LANES else None
    form = DecisionForm()
    conflict = None
    if form.validate_on_submit():
        try:
            record_decision(session, found, current_user.id, request.form.get("decision", ""), form.note.data or "",
                            expected_version=form.version.data, on_request=True)
        except Conflict as exc:
            session.rollback()
            conflict = str(exc)
        except (ValueError, LookupError) as exc:
            session.rollback()
            flash(str(exc), "error")
            return redirect(url_for("review.study", study_id=study_id, lane=lane))
        else:
            session.commit()
            flash(f"Study {study_id}: decision recorded ({request.form['decision']}).", "info")
            return redirect(_next_case(study_id, lane) or url_for("review.queue", lane=lane))
        found = visible_study(session, study_id)
    elif request.method == "POST":
        flash("The decision form was incomplete or expired: nothing was recorded; please decide again.", "error")
        return redirect(url_for("review.study", study_id=study_id, lane=lane))
    held_by = None
    if found.flag is not None and found.flag.status == FlagStatus.OPEN:
        held_by = claim(session, found.flag, current_user.id)
        session.commit()
    return _study_page(found, lane, held_by, conflict), (409 if conflict else 200)


def _study_page(found, lane: str | None, held_by: int | None, conflict: str | None) -> str:
    session = db_session()
    # After a conflict the form carries the case's new version and the note as typed: deciding again is deliberate.
    form = DecisionForm(formdata=None, version=flag_version(found), note=request.form.get("note", ""))
    flag = found.flag
    decided = flag is not None and flag.status == FlagStatus.CLOSED and bool(flag.reviews)
    order = [row[0] for row in lane_order(session, lane)]
    position = order.index(found.id) if found.id in order else None
    previous = order[position - 1] if position else None
    batch = found.batch
    department = session.get(Department, batch.department_id) if batch.department_id else None
    result = result_json(session, found.study_result) if found.study_result else None
    return render_template(
        "review_study.html", study=study_json(found), record=found, form=form, flag=flag,
        reviews=flag.reviews if flag else [], reasons=explain_flag(found) if flag else [],
        details=(found.prediction.details or {}) if found.prediction else {}, result=result, decided=decided,
        conflict=conflict, held_by=_names([held_by]).get(held_by) if held_by else None, lane=lane, lanes=LANES,
        position=position, queue_size=len(order), previous=previous, next=_next_case(found.id, lane),
        department=department.name if department else None, uploader=session.get(User, batch.created_by).username,
        waited=_waited(found), can_decide=found.prediction is not None)


def _waited(found) -> float:
    """Seconds from upload to the first decision, or to now while undecided."""
    flag = found.flag
    end = as_utc(flag.reviews[0].created_at) if flag is not None and flag.reviews else utcnow()
    return max(0.0, (end - as_utc(found.created_at)).total_seconds())


def _next_case(after_id: int, lane: str | None) -> str | None:
    """The next open case after this one in the lane's order, skipping cases other readers hold."""
    order = lane_order(db_session(), lane)
    ids = [row[0] for row in order]
    start = ids.index(after_id) + 1 if after_id in ids else 0
    now = utcnow()
    for study_id, claimed_by, claimed_until in order[start:] + order[:start]:
        taken = claimed_by not in (None, current_user.id) and claimed_until and as_utc(claimed_until) > now
        if study_id != after_id and not taken:
            return url_for("review.study", study_id=study_id, lane=lane)
    return None


def _names(user_ids) -> dict[int, str]:
    ids = [user_id for user_id in user_ids if user_id is not None]
    if not ids:
        return {}
    return dict(db_session().execute(select(User.id, User.username).where(User.id.in_(ids))).all())


@bp.post("/<int:study_id>/claim")
@roles_required("reviewer", "admin")
def keep_claim(study_id: int):
    """The open study page calls this every minute: the claim stays while the reader reads, and the page learns
    at once when another reader decided (so the reader is warned before deciding, not after)."""
    session = db_session()
    found = visible_study(session, study_id)
    if found is None:
        abort(404)
    flag = found.flag
    if flag is None:
        return jsonify(version=0, status=None, held_by=None, latest=None)
    held_by = claim(session, flag, current_user.id) if flag.status == FlagStatus.OPEN else None
    session.commit()
    latest = flag.latest
    return jsonify(version=len(flag.reviews), status=flag.status, held_by=_names([held_by]).get(held_by),
                   latest=latest and {"decision": latest.decision, "reviewer": latest.reviewer.username,
                                      "at": as_utc(latest.created_at).isoformat()})


@bp.get("/<int:study_id>/film")
@roles_required("reviewer", "admin")
def film(study_id: int):
    """The stored original at its bit depth (models.film wire format), gzip-compressed when the client accepts."""
    found = visible_study(db_session(), study_id)
    if found is None:
        abort(404)
    if found.original_purged_at is not None:
        return Response("the original was deleted by the retention purge; only the preview remains",
                        404, mimetype="text/plain")
    storage = current_services().storage
    if not FILM_DECODES.acquire(timeout=30):
        return Response("busy decoding other films: retry in a moment", 503, {"Retry-After": "5"},
                        mimetype="text/plain")
    try:
        data = storage.get(found.storage_key)
        payload = encode_film(read_film(data))
    except (ImageDecodeError, FileNotFoundError) as exc:
        logger.info("film %s cannot be shown: %s", study_id, exc)
        return Response(f"the original cannot be shown: {exc}", 404, mimetype="text/plain")
    finally:
        FILM_DECODES.release()
    response = Response(payload, mimetype="application/octet-stream")
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        response.set_data(gzip.compress(payload, compresslevel=1))
        response.headers["Content-Encoding"] = "gzip"
    response.headers["Vary"] = "Accept-Encoding"
    return response
