"""Portal pages for reviewers: the flagged queue by risk, a study page, decision buttons."""
import logging

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import TextAreaField

from models.flags import REASON_TEXT
from web import db
from web.auth import roles_required
from web.queries import review_queue, study_json, visible_study
from web.reviews import record_decision
from worker.dicom_intake import OUT_OF_SCOPE, age_years, in_age_scope, in_modality_scope, is_frontal

logger = logging.getLogger(__name__)
bp = Blueprint("review", __name__, url_prefix="/review")


class DecisionForm(FlaskForm):
    note = TextAreaField("Note")


@bp.get("/")
@roles_required("reviewer", "admin")
def queue():
    status = "closed" if request.args.get("status") == "closed" else "open"
    return render_template("review_queue.html", rows=review_queue(db(), status), status=status)


@bp.route("/<int:study_id>", methods=["GET", "POST"])
@roles_required("reviewer", "admin")
def study(study_id: int):
    found = visible_study(db(), study_id)
    if found is None or found.flag is None:
        abort(404)
    form = DecisionForm()
    if form.validate_on_submit():
        try:
            record_decision(db(), found, current_user.id, request.form.get("decision", ""),
                            form.note.data or "")
        except ValueError as exc:
            flash(str(exc), "error")
            return redirect(url_for("review.study", study_id=study_id))
        db().commit()
        flash(f"Study {study_id}: decision recorded.", "info")
        return redirect(_next_open(study_id))
    return render_template("review_study.html", study=study_json(found), record=found, form=form,
                           reviews=found.flag.reviews, reasons=explain_flag(found),
                           details=found.prediction.details or {})


def explain_flag(study) -> list[tuple[str, str]]:
    """(reason, what it means) for each flag reason; a DICOM header's out_of_scope names its cause."""
    explained = []
    for reason in study.flag.reason.split(","):
        text = REASON_TEXT.get(reason, reason)
        causes = header_causes(study) if reason == OUT_OF_SCOPE else []
        if causes:
            text = f"DICOM header: {'; '.join(causes)}. {text}"
        explained.append((reason, text))
    return explained


def header_causes(study) -> list[str]:
    """Why the DICOM header puts this image out of scope; [] when it does not."""
    causes = []
    if not in_modality_scope(study.modality):
        causes.append(f"modality {study.modality} is not a radiograph")
    if not in_age_scope(study.patient_age):
        causes.append(f"patient age {age_years(study.patient_age):.0f} years (adult)")
    if not is_frontal(study.view_position):
        causes.append(f"view {study.view_position} is not frontal")
    return causes


def _next_open(done_id: int) -> str:
    for flag, study, _ in review_queue(db()):
        if study.id != done_id:
            return url_for("review.study", study_id=study.id)
    return url_for("review.queue")
