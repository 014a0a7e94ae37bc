"""Admin pages: users and departments, API tokens (issue, revoke), the audit trail and its CSV export."""
import logging

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from sqlalchemy.orm import selectinload
from wtforms import PasswordField, SelectField, StringField
from wtforms.validators import DataRequired, Length, Optional

from core.csvcells import csv_text
from db.accounts import create_user, ensure_department, issue_token, revoke_token, set_active
from db.models import ROLES, ApiToken, AuditEvent, Department, User
from db.session import audit
from web.auth import roles_required
from web.context import db_session

logger = logging.getLogger(__name__)
bp = Blueprint("admin", __name__, url_prefix="/admin")
AUDIT_PAGE = 500
CSV_FIELDS = ["id", "at", "actor_id", "actor", "action", "object_type", "object_id", "detail"]


class UserForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=80)])
    role = SelectField("Role", choices=list(ROLES))
    department = StringField("Department", validators=[Optional(), Length(max=120)])
    password = PasswordField("Password (empty: API only)", validators=[Optional(), Length(min=8)])


class TokenForm(FlaskForm):
    user_id = SelectField("User", coerce=int)
    name = StringField("Token name", validators=[DataRequired(), Length(max=80)])


class ActionForm(FlaskForm):
    """Carries only the CSRF token for one-button forms (disable, unlock, revoke, accept a calibration)."""


@bp.get("/")
@roles_required("admin")
def index():
    return redirect(url_for("admin.users"))


@bp.route("/users", methods=["GET", "POST"])
@roles_required("admin")
def users():
    form = UserForm()
    if form.validate_on_submit():
        try:
            department = (ensure_department(db_session(), form.department.data, current_user.id)
                          if form.department.data else None)
            create_user(db_session(), form.username.data, form.role.data, form.password.data or None,
                        actor_id=current_user.id, department_id=department.id if department else None)
        except ValueError as exc:
            db_session().rollback()
            flash(str(exc), "error")
        else:
            db_session().commit()
            flash(f"User {form.username.data} created.", "info")
            return redirect(url_for("admin.users"))
    rows = db_session().scalars(select(User).order_by(User.username)).all()
    departments = {d.id: d.name for d in db_session().scalars(select(Department))}
    return render_template("admin_users.html", form=form, users=rows, departments=departments,
                           action=ActionForm()), 400 if form.errors else 200


@bp.post("/users/<int:user_id>/active")
@roles_required("admin")
def toggle_active(user_id: int):
    user = db_session().get(User, user_id)
    if user is None or not ActionForm().validate_on_submit():
        abort(404 if user is None else 400)
    if user.id == current_user.id:
        flash("You cannot disable your own account.", "error")
    else:
        set_active(db_session(), user, not user.active, current_user.id)
        db_session().commit()
    return redirect(url_for("admin.users"))


@bp.post("/users/<int:user_id>/unlock")
@roles_required("admin")
def unlock(user_id: int):
    """Clear an account's failed logins: it may try again at once."""
    user = db_session().get(User, user_id)
    if user is None or not ActionForm().validate_on_submit():
        abort(404 if user is None else 400)
    audit(db_session(), current_user.id, "user.unlock", "user", user.id, username=user.username)
    db_session().commit()
    flash(f"{user.username} may log in again.", "info")
    return redirect(url_for("admin.users"))


@bp.route("/tokens", methods=["GET", "POST"])
@roles_required("admin")
def tokens():
    form = TokenForm()
    form.user_id.choices = [(u.id, u.username) for u in db_session().scalars(select(User).order_by(User.username))]
    issued = None
    if form.validate_on_submit():
        user = db_session().get(User, form.user_id.data)
        issued = issue_token(db_session(), user, form.name.data, actor_id=current_user.id)
        db_session().commit()
    rows = db_session().scalars(
        select(ApiToken).options(selectinload(ApiToken.user)).order_by(ApiToken.id.desc())).all()
    return render_template("admin_tokens.html", form=form, tokens=rows, issued=issued, action=ActionForm())


@bp.post("/tokens/<int:token_id>/revoke")
@roles_required("admin")
def revoke(token_id: int):
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        revoke_token(db_session(), token_id, current_user.id)
    except LookupError:
        abort(404)
    db_session().commit()
    flash(f"Token {token_id} revoked.", "info")
    return redirect(url_for("admin.tokens"))


@bp.get("/audit")
@roles_required("admin")
def audit_trail():
    action = request.args.get("action", "").strip()
    rows = db_session().execute(_audit_query(action).limit(AUDIT_PAGE)).all()
    return render_template("admin_audit.html", rows=rows, action=action, limit=AUDIT_PAGE)


@bp.get("/audit.csv")
@roles_required("admin")
def audit_csv():
    action = request.args.get("action", "").strip()
    audit(db_session(), current_user.id, "audit.export", "audit_log", None, filter=action)
    db_session().commit()
    rows = ((event.id, event.at.isoformat(), event.actor_id, actor or "", event.action, event.object_type,
             event.object_id, event.detail) for event, actor in db_session().execute(_audit_query(action)))
    return Response(csv_text(CSV_FIELDS, rows), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=audit.csv"})


def _audit_query(action: str):
    query = (select(AuditEvent, User.username).outerjoin(User, AuditEvent.actor_id == User.id)
             .order_by(AuditEvent.id.desc()))
    return query.where(AuditEvent.action.startswith(action, autoescape=True)) if action else query

