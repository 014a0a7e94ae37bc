"""Portal pages for uploaders: upload files, folders or zips, watch batches progress, see results and what was
refused (every file handed over is accounted for)."""
import logging

from flask import Blueprint, Response, abort, flash, jsonify, redirect, render_template, request, send_file, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from sqlalchemy import select

from core.csvcells import csv_text
from core.services import current_services
from core.storage import DERIVED_KINDS
from db.models import Batch, Study
from studies.intake import submit_uploads
from studies.pictures import can_make, picture
from studies.rejections import grouped, rejections_of
from web.auth import roles_required
from web.context import db_session
from web.queries import batch_json, batch_progress, visible_batch, visible_batches, visible_study

logger = logging.getLogger(__name__)
bp = Blueprint("batches", __name__)


@bp.app_template_global()
def study_image_exists(study_id: int, kind: str) -> bool:
    """Whether the study has (or can have) this picture: the heatmap only when the model made one."""
    study = db_session().get(Study, study_id)
    return study is not None and can_make(current_services().storage, study, kind)


class UploadForm(FlaskForm):
    """Only carries the CSRF token; the files come from a multiple file input."""


@bp.get("/")
@login_required
def home():
    if current_user.role == "reviewer":
        return redirect(url_for("review.queue"))
    return redirect(url_for("batches.batches"))


@bp.get("/batches")
@login_required
def batches():
    query = select(Batch).where(visible_batches()).order_by(Batch.id.desc()).limit(200)
    rows = db_session().scalars(query).all()
    progress = batch_progress(db_session(), [batch.id for batch in rows])
    return render_template("batches.html", batches=rows, progress=progress)


def headline(queued: int, rejected: int) -> str:
    """What happened to the files handed over, in one line: "86 queued, 4 rejected"."""
    return f"{queued} queued, {rejected} rejected" if rejected else f"{queued} queued"


@bp.route("/upload", methods=["GET", "POST"])
@roles_required("uploader", "admin")
def upload():
    form = UploadForm()
    limit = current_services().settings.max_upload_mb
    if not form.validate_on_submit():
        return render_template("upload.html", form=form, max_upload_mb=limit)
    files = [f for f in request.files.getlist("files") if f.filename]
    if not files:
        flash("Choose at least one image, folder or .zip file.", "error")
        return render_template("upload.html", form=form, max_upload_mb=limit), 400
    batch, rejected, accepted = submit_uploads(
        current_services(), ((f.filename, f.read()) for f in files), current_user.id, "portal",
        current_user.department_id)
    # Refused files are recorded on the batch (studies/rejections.py): its page lists them, grouped by reason.
    flash(f"Batch {batch.id}: {headline(accepted, len(rejected))}.", "error" if not accepted else "info")
    return redirect(url_for("batches.batch", batch_id=batch.id))


@bp.get("/batches/<int:batch_id>")
@login_required
def batch(batch_id: int):
    found = visible_batch(db_session(), batch_id)
    if found is None:
        abort(404)
    batch = batch_json(db_session(), found)
    return render_template("batch.html", batch=batch, groups=grouped(batch["rejections"]), filters=_filters(),
                           headline=headline(batch["total"], batch["rejected"]))


FILTERS = {"call": ("", "PNEUMONIA", "NORMAL", "none"), "show": ("", "flagged", "error", "decided")}


def _filters() -> dict:
    """The batch page's filters from the query (?call=NORMAL&show=flagged); unknown values are ignored."""
    return {name: value if (value := request.args.get(name, "")) in allowed else ""
            for name, allowed in FILTERS.items()}


@bp.get("/api/v1/batches/<int:batch_id>/rejections.csv")
@login_required
def rejections_csv(batch_id: int):
    """The files refused at the door, with why, in the batch's natural file order."""
    found = visible_batch(db_session(), batch_id)
    if found is None:
        return jsonify(error="no such batch"), 404
    rows = ((batch_id, row["filename"], row["reason"]) for row in rejections_of(db_session(), batch_id))
    return Response(csv_text(["batch_id", "filename", "reason"], rows), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="batch-{batch_id}-rejected.csv"'})


@bp.get("/studies/<int:study_id>/<kind>.png")
@login_required
def study_image(study_id: int, kind: str):
    study = visible_study(db_session(), study_id)
    if study is None or kind not in DERIVED_KINDS:
        abort(404)
    path = picture(current_services().storage, study, kind)  # a copy's are its original's; made now if not yet
    if path is None:
        abort(404)
    return send_file(path, mimetype="image/png", max_age=0)
