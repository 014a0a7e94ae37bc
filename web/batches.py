"""Portal pages for uploaders: upload many files or a zip, watch batches progress, see results."""
import logging

from flask import Blueprint, abort, flash, redirect, render_template, request, send_file, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from sqlalchemy import select

from core.services import current_services
from core.storage import DERIVED_KINDS
from db.models import Batch
from studies.intake import submit_uploads
from web.auth import roles_required
from web.context import db_session
from web.queries import batch_json, batch_progress, visible_batch, visible_batches, visible_study

logger = logging.getLogger(__name__)
bp = Blueprint("batches", __name__)


@bp.app_template_global()
def study_image_exists(study_id: int, kind: str) -> bool:
    """Whether a derived picture was made (the heatmap only when the model provides one)."""
    return kind in DERIVED_KINDS and current_services().storage.has_derived(study_id, kind)


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


@bp.route("/upload", methods=["GET", "POST"])
@roles_required("uploader", "admin")
def upload():
    form = UploadForm()
    if not form.validate_on_submit():
        return render_template("upload.html", form=form)
    files = [f for f in request.files.getlist("files") if f.filename]
    if not files:
        flash("Choose at least one image or .zip file.", "error")
        return render_template("upload.html", form=form), 400
    batch, rejected, accepted = submit_uploads(
        current_services(), ((f.filename, f.read()) for f in files), current_user.id, "portal")
    for item in rejected:
        flash(f"{item['filename']}: {item['error']}", "error")
    if batch is None:
        return render_template("upload.html", form=form), 422
    flash(f"Batch {batch.id}: {accepted} studies queued.", "info")
    return redirect(url_for("batches.batch", batch_id=batch.id))


@bp.get("/batches/<int:batch_id>")
@login_required
def batch(batch_id: int):
    found = visible_batch(db_session(), batch_id)
    if found is None:
        abort(404)
    return render_template("batch.html", batch=batch_json(db_session(), found))


@bp.get("/studies/<int:study_id>/<kind>.png")
@login_required
def study_image(study_id: int, kind: str):
    study = visible_study(db_session(), study_id)
    if study is None or kind not in DERIVED_KINDS:
        abort(404)
    # A duplicate upload shows the pictures made for the first copy of the same file.
    path = current_services().storage.derived_path(study.duplicate_of_id or study.id, kind)
    if not path.exists():
        abort(404)
    return send_file(path, mimetype="image/png", max_age=0)
