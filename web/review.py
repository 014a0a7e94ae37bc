"""Portal pages for reviewers: the flagged queue by risk, a study page, decision buttons."""
import logging

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import TextAreaField

from db.models import FlagStatus
from studies.reviews import explain_flag, record_decision
from web.auth import roles_required
from web.context import db_session
from web.queries import result_json, review_queue, study_json, visible_study

logger = logging.getLogger(__name__)
bp = Blueprint("review", __name__, url_prefix="/review")


class DecisionForm(FlaskForm):
    note = TextAreaField("Note")


@bp.get("/")
@roles_required("reviewer", "admin")
def queue():
    status = FlagStatus.CLOSED if request.args.get("status") == "closed" else FlagStatus.OPEN
    page = review_queue(db_session(), status, request.args.get("page", 1, type=int))
    return render_template("review_queue.html", queue=page, rows=page.rows, status=status)


@bp.route("/<int:study_id>", methods=["GET", "POST"])
@roles_required("reviewer", "admin")
def study(study_id: int):
    found = visible_study(db_session(), study_id)
    if found is None or found.flag is None:
        abort(404)
    form = DecisionForm()
    if form.validate_on_submit():
        try:
            record_decision(db_session(), found, current_user.id, request.form.get("decision", ""),
                            form.note.data or "")
        except ValueError as exc:
            flash(str(exc), "error")
            return redirect(url_for("review.study", study_id=study_id))
        db_session().commit()
        flash(f"Study {study_id}: decision recorded.", "info")
        return redirect(_next_open(study_id))
    result = result_json(db_session(), found.study_result) if found.study_result else None
    return render_template("review_study.html", study=study_json(found), record=found, form=form,
                           reviews=found.flag.reviews, reasons=explain_flag(found),
                           details=found.prediction.details or {}, result=result)


def _next_open(done_id: int) -> str:
    for flag, study, _ in review_queue(db_session()).rows:
        if study.id != done_id:
            return url_for("review.study", study_id=study.id)
    return url_for("review.queue")
