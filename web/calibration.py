"""Admin pages for departments' operating points: upload a labelled zip, see the proposal and its ROC curve,
accept it, roll back to an earlier version. The screening runs in a worker (studies.calibrations)."""
import logging

from flask import Blueprint, Response, abort, flash, redirect, render_template, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from sqlalchemy import select
from sqlalchemy.orm import selectinload
from wtforms import DecimalField, StringField
from wtforms.validators import DataRequired, Length, NumberRange

from core.services import CALIBRATE_TASK, current_services
from db.models import AuditEvent, SiteCalibration
from db.session import audit
from models.operating_point import DEFAULT_MISS_RATE
from studies.calibrations import activate as activate_version
from studies.files import is_zip
from web.admin import ActionForm
from web.auth import roles_required
from web.context import db_session

logger = logging.getLogger(__name__)
bp = Blueprint("calibration", __name__, url_prefix="/admin/calibration")
RECENT = 10


class SampleForm(FlaskForm):
    department = StringField("Department", validators=[DataRequired(), Length(max=120)])
    miss_rate = DecimalField("Miss-rate target", default=DEFAULT_MISS_RATE, places=3,
                             validators=[DataRequired(), NumberRange(min=0.001, max=0.5)])
    sample = FileField("Labelled films (.zip with NORMAL/ and PNEUMONIA/ folders)", validators=[FileRequired()])


@bp.route("", methods=["GET", "POST"])
@roles_required("admin")
def index():
    form = SampleForm()
    if form.validate_on_submit():
        upload = form.sample.data
        data = upload.read()
        if not is_zip(upload.filename or "", data):
            flash("Send the labelled films as one .zip with NORMAL/ and PNEUMONIA/ folders.", "error")
        else:
            key, _ = current_services().storage.put_original(data)
            department = form.department.data.strip()
            audit(db_session(), current_user.id, "calibration.request", "department", None, department=department,
                  filename=upload.filename, miss_rate=float(form.miss_rate.data))
            db_session().commit()
            current_services().send(CALIBRATE_TASK, key, upload.filename or "sample.zip", department,
                                    float(form.miss_rate.data), current_user.id)
            flash(f"Screening the sample for {department}: its proposal appears below in a minute or two.", "info")
            return redirect(url_for("calibration.index"))
    records = db_session().scalars(select(SiteCalibration).options(selectinload(SiteCalibration.department))
                                   .order_by(SiteCalibration.department_id, SiteCalibration.version.desc())).all()
    failures = db_session().scalars(select(AuditEvent).where(AuditEvent.action == "calibration.failed")
                                    .order_by(AuditEvent.id.desc()).limit(RECENT)).all()
    status = 400 if form.errors else 200
    return render_template("admin_calibration.html", form=form, records=records, failures=failures,
                           action=ActionForm()), status


@bp.post("/<int:record_id>/activate")
@roles_required("admin")
def activate(record_id: int):
    record = db_session().get(SiteCalibration, record_id)
    if record is None or not ActionForm().validate_on_submit():
        abort(404 if record is None else 400)
    activate_version(db_session(), record.department.name, record.version, current_user.id, "portal")
    db_session().commit()
    flash(f"{record.department.name}: operating point version {record.version} is now active.", "info")
    return redirect(url_for("calibration.index"))


@bp.get("/<int:record_id>/roc.png")
@roles_required("admin")
def roc(record_id: int):
    record = db_session().get(SiteCalibration, record_id)
    if record is None or not record.roc_png:
        abort(404)
    return Response(record.roc_png, mimetype="image/png")
