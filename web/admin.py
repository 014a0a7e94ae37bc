"""Admin pages: users (create, edit, password reset, unlock, disable), departments (create, rename), API tokens
(issue with an expiry, revoke), the audit trail (security apart from results, filters, pages) and its CSV."""
import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import func, or_, select
from sqlalchemy.orm import selectinload
from wtforms import PasswordField, SelectField, StringField
from wtforms.validators import DataRequired, Length, Optional

from core.csvcells import csv_text
from db.accounts import (
    create_user,
    department_named,
    ensure_department,
    failed_attempts,
    issue_token,
    login_window,
    rename_department,
    reset_password,
    revoke_token,
    set_active,
    token_expired,
    update_user,
)
from db.models import ROLES, ApiToken, AuditEvent, Department, User, utcnow
from db.session import audit
from web.auth import LOGIN_WINDOW_MINUTES, MAX_FAILURES_PER_USERNAME, roles_required
from web.context import db_session

logger = logging.getLogger(__name__)
bp = Blueprint("admin", __name__, url_prefix="/admin")
AUDIT_PAGE = 100
CSV_FIELDS = ["id", "at", "actor_id", "actor", "action", "object_type", "object_id", "detail"]


class UserForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=80)])
    role = SelectField("Role", choices=list(ROLES))
    department = SelectField("Department", coerce=int)
    password = PasswordField("Password (empty: API only)", validators=[Optional(), Length(min=8)])


class EditUserForm(FlaskForm):
    role = SelectField("Role", choices=list(ROLES))
    department = SelectField("Department", coerce=int)


class PasswordForm(FlaskForm):
    password = PasswordField("Temporary password", validators=[DataRequired()])


class DepartmentForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=120)])


class TokenForm(FlaskForm):
    user_id = SelectField("User", coerce=int)
    name = StringField("Token name", validators=[DataRequired(), Length(max=80)])
    expires = SelectField("Expires", coerce=int, default=90, choices=[
        (30, "in 30 days"), (90, "in 90 days"), (365, "in a year"), (0, "never")])


class ActionForm(FlaskForm):
    """Carries only the CSRF token for one-button forms (disable, unlock, revoke, accept a calibration)."""


NO_DEPARTMENT = 0  # the department select's "none"


def _department_choices() -> list[tuple[int, str]]:
    names = db_session().execute(select(Department.id, Department.name).order_by(func.lower(Department.name)))
    return [(NO_DEPARTMENT, "(none: sees own batches only)")] + [(row.id, row.name) for row in names]


@bp.get("/")
@roles_required("admin")
def index():
    return redirect(url_for("admin.users"))


@bp.route("/users", methods=["GET", "POST"])
@roles_required("admin")
def users():
    form = UserForm()
    form.department.choices = _department_choices()
    if form.validate_on_submit():
        try:
            create_user(db_session(), form.username.data, form.role.data, form.password.data or None,
                        actor_id=current_user.id, department_id=form.department.data or None)
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
                           choices=form.department.choices, action=ActionForm(), roles=ROLES,
                           locked=_locked(rows)), 400 if form.is_submitted() else 200


def _locked(rows: list[User]) -> set[int]:
    """Users the login throttle holds back now (web.auth), so the page can say why Unlock matters."""
    since = login_window(LOGIN_WINDOW_MINUTES)
    return {user.id for user in rows
            if failed_attempts(db_session(), user.username, None, since)[0] >= MAX_FAILURES_PER_USERNAME}


def _user_or_404(user_id: int) -> User:
    user = db_session().get(User, user_id)
    if user is None:
        abort(404)
    return user


@bp.post("/users/<int:user_id>")
@roles_required("admin")
def edit_user(user_id: int):
    """Change a user's role and department (their sessions end: the new rights apply at once)."""
    user = _user_or_404(user_id)
    form = EditUserForm()
    form.department.choices = _department_choices()
    if not form.validate_on_submit():  # a department deleted or renamed meanwhile, a role that does not exist
        flash(f"{user.username}: " + " ".join(e for errors in form.errors.values() for e in errors), "error")
        return redirect(url_for("admin.users"))
    if user.id == current_user.id and form.role.data != "admin":
        flash("You cannot take the admin role from your own account.", "error")
        return redirect(url_for("admin.users"))
    try:
        update_user(db_session(), user, form.role.data, form.department.data or None, current_user.id)
    except ValueError as exc:
        flash(str(exc), "error")
        return redirect(url_for("admin.users"))
    db_session().commit()
    flash(f"{user.username}: role {user.role}, department "
          f"{dict(form.department.choices).get(form.department.data)}.", "info")
    return redirect(url_for("admin.users"))


@bp.post("/users/<int:user_id>/password")
@roles_required("admin")
def reset_user_password(user_id: int):
    """Set a temporary password (the strength rule applies); tell the user by another channel."""
    user = _user_or_404(user_id)
    form = PasswordForm()
    if not form.validate_on_submit():
        flash(f"{user.username}: type a temporary password.", "error")
        return redirect(url_for("admin.users"))
    try:
        reset_password(db_session(), user, form.password.data, current_user.id)
    except ValueError as exc:
        flash(f"{user.username}: {exc}", "error")
        return redirect(url_for("admin.users"))
    db_session().commit()
    flash(f"{user.username} has a new temporary password; their sessions have ended.", "info")
    return redirect(url_for("admin.users"))


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
        flash(f"{user.username} {'enabled' if user.active else 'disabled'}.", "info")
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


@bp.route("/departments", methods=["GET", "POST"])
@roles_required("admin")
def departments():
    """Departments are chosen from this list everywhere; names are unique whatever their case."""
    form = DepartmentForm()
    if form.validate_on_submit():
        try:
            existing = department_named(db_session(), form.name.data)
            if existing is not None:
                raise ValueError(f"department {existing.name!r} already exists")
            ensure_department(db_session(), form.name.data, current_user.id)
        except ValueError as exc:
            db_session().rollback()
            flash(str(exc), "error")
        else:
            db_session().commit()
            flash(f"Department {form.name.data.strip()} created.", "info")
            return redirect(url_for("admin.departments"))
    rows = db_session().execute(
        select(Department, func.count(User.id)).outerjoin(User, User.department_id == Department.id)
        .group_by(Department.id).order_by(func.lower(Department.name))).all()
    return render_template("admin_departments.html", form=form, rows=rows,
                           rename=DepartmentForm(formdata=None)), 400 if form.is_submitted() else 200


@bp.post("/departments/<int:department_id>")
@roles_required("admin")
def rename(department_id: int):
    department = db_session().get(Department, department_id)
    if department is None:
        abort(404)
    form = DepartmentForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        rename_department(db_session(), department, form.name.data, current_user.id)
    except ValueError as exc:
        flash(str(exc), "error")
    else:
        db_session().commit()
        flash(f"Department renamed to {department.name}.", "info")
    return redirect(url_for("admin.departments"))


@bp.route("/tokens", methods=["GET", "POST"])
@roles_required("admin")
def tokens():
    form = TokenForm()
    form.user_id.choices = [(u.id, u.username) for u in db_session().scalars(select(User).order_by(User.username))]
    issued = None
    if form.validate_on_submit():
        user = db_session().get(User, form.user_id.data)
        expires = utcnow() + timedelta(days=form.expires.data) if form.expires.data else None
        issued = issue_token(db_session(), user, form.name.data, actor_id=current_user.id, expires_at=expires)
        db_session().commit()
        form.name.data = ""  # a second press must not issue a second token with the same name
    rows = db_session().scalars(
        select(ApiToken).options(selectinload(ApiToken.user)).order_by(ApiToken.id.desc())).all()
    return render_template("admin_tokens.html", form=form, tokens=rows, issued=issued, action=ActionForm(),
                           expired={row.id for row in rows if token_expired(row)})


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


# Who got in and who changed whom, apart from what happened to results.
AUDIT_KINDS = {
    "security": ("Security", ("user.", "token.", "department.", "audit.")),
    "results": ("Results", ("study.", "review.", "batch.")),
    "all": ("Everything", ()),
}


@dataclass(frozen=True)
class AuditFilter:
    """The audit page's filters: kind (tab), actor username, action prefix, dates (YYYY-MM-DD, UTC, inclusive)."""

    kind: str = "security"
    actor: str = ""
    action: str = ""
    since: date | None = None
    until: date | None = None

    @classmethod
    def from_args(cls, args, default: str = "security") -> "AuditFilter":
        kind = args.get("kind", default)
        return cls(kind=kind if kind in AUDIT_KINDS else default, actor=args.get("actor", "").strip()[:80],
                   action=args.get("action", "").strip()[:40], since=_day(args.get("since")),
                   until=_day(args.get("until")))

    def args(self) -> dict:
        """The filters as query arguments (for paging and the CSV link)."""
        return {key: value for key, value in (("kind", self.kind), ("actor", self.actor), ("action", self.action),
                                              ("since", self.since), ("until", self.until)) if value}

    def query(self):
        query = (select(AuditEvent, User.username).outerjoin(User, AuditEvent.actor_id == User.id)
                 .order_by(AuditEvent.id.desc()))
        prefixes = AUDIT_KINDS[self.kind][1]
        if prefixes:
            query = query.where(or_(*(AuditEvent.action.startswith(p, autoescape=True) for p in prefixes)))
        if self.action:
            query = query.where(AuditEvent.action.startswith(self.action, autoescape=True))
        if self.actor:
            query = query.where(User.username == self.actor) if self.actor != "system" \
                else query.where(AuditEvent.actor_id.is_(None))
        if self.since:
            query = query.where(AuditEvent.at >= datetime.combine(self.since, time(), timezone.utc))
        if self.until:
            query = query.where(AuditEvent.at < datetime.combine(self.until + timedelta(days=1), time(), timezone.utc))
        return query


def _day(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None  # a malformed date filters nothing rather than failing the page


@bp.get("/audit")
@roles_required("admin")
def audit_trail():
    filters = AuditFilter.from_args(request.args)
    query = filters.query()
    total = db_session().scalar(select(func.count()).select_from(query.subquery()))
    pages = max(1, -(-total // AUDIT_PAGE))
    page = max(1, min(request.args.get("page", 1, type=int), pages))
    rows = db_session().execute(query.offset((page - 1) * AUDIT_PAGE).limit(AUDIT_PAGE)).all()
    actors = db_session().scalars(select(User.username).order_by(User.username)).all()
    return render_template("admin_audit.html", rows=rows, filters=filters, kinds=AUDIT_KINDS, page=page,
                           pages=pages, total=total, actors=actors)


@bp.get("/audit.csv")
@roles_required("admin")
def audit_csv():
    filters = AuditFilter.from_args(request.args, default="all")  # the page's link names its tab; scripts get all
    audit(db_session(), current_user.id, "audit.export", "audit_log", None, filter=filters.args())
    db_session().commit()
    rows = ((event.id, event.at.isoformat(), event.actor_id, actor or "", event.action, event.object_type,
             event.object_id, event.detail) for event, actor in db_session().execute(filters.query()))
    return Response(csv_text(CSV_FIELDS, rows), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=audit.csv"})
