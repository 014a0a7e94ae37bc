"""Login for people (session cookie) and for scripts (bearer token), and role checks."""
import functools
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Blueprint, abort, flash, g, jsonify, redirect, render_template, request, session, url_for
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired

from core.services import current_services
from db.accounts import check_password, end_sessions, failed_attempts, login_window, user_for_token
from db.models import User
from db.session import audit
from web.context import db_session

logger = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)
login_manager = LoginManager()
login_manager.login_view = "auth.login"
# Failed logins, counted from the audit log so every portal process sees the same count.
LOGIN_WINDOW_MINUTES = 15
MAX_FAILURES_PER_USERNAME = 5
MAX_FAILURES_PER_ADDRESS = 20


@dataclass
class CurrentUser(UserMixin):
    """The signed-in user, detached from any database session."""

    id: int
    username: str
    role: str
    department_id: int | None = None

    @classmethod
    def of(cls, user: User) -> "CurrentUser":
        return cls(user.id, user.username, user.role, user.department_id)


SESSION_EPOCH = "epoch"  # the user's session_epoch when this session was made


@login_manager.user_loader
def _load_user(user_id: str) -> CurrentUser | None:
    if request.headers.get("Authorization", "").startswith("Bearer "):
        return None  # an explicit token speaks for the request, not a session cookie riding along
    user = db_session().get(User, int(user_id))
    if user is None or not user.active or session.get(SESSION_EPOCH) != user.session_epoch:
        return None  # logged out, disabled or re-enabled since this cookie was issued
    return CurrentUser.of(user)


@login_manager.request_loader
def _load_from_token(req) -> CurrentUser | None:
    header = req.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    user = user_for_token(db_session(), header[len("Bearer "):].strip())
    if user is None:
        return None
    db_session().commit()  # keeps the token's last-used time
    g.bearer = True  # only a valid bearer token spares a request the CSRF check (web/api.py, web/dicomweb.py)
    return CurrentUser.of(user)


def by_bearer_token() -> bool:
    """True when a valid bearer token, not a session cookie, authenticated this request."""
    current_user._get_current_object()  # loads the user, which sets the flag
    return bool(g.get("bearer"))


@login_manager.unauthorized_handler
def _unauthorized():
    if request.path.startswith("/api/"):
        return jsonify(error="authentication required: send 'Authorization: Bearer <token>'"), 401
    # The query too: back to the same filtered page after login.
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def roles_required(*roles: str):
    """Allow only signed-in users with one of `roles` (401 for nobody, 403 for the wrong role)."""
    def decorator(view):
        @functools.wraps(view)
        @login_required
        def wrapped(*args, **kwargs):
            if current_user.role not in roles:
                if request.path.startswith("/api/"):
                    return jsonify(error=f"this needs the role {' or '.join(roles)}"), 403
                abort(403)
            return view(*args, **kwargs)
        return wrapped
    return decorator


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    if form.validate_on_submit():
        username, address = form.username.data[:80], request.remote_addr
        # The attempt is on record before the (slow) password check: parallel guesses count each other.
        audit(db_session(), None, "user.login_attempt", "user", None, username=username, address=address)
        db_session().commit()
        if _throttled(username, address):
            logger.warning("login throttled after repeated failures")
            message = (f"Too many failed logins: wait {LOGIN_WINDOW_MINUTES} minutes and try again, "
                       "or ask an administrator to unlock the account.")
            flash(message, "error")
            return render_template("login.html", form=form), 429
        user = check_password(db_session(), username, form.password.data)
        if user is not None:
            login_user(CurrentUser.of(user))
            session.permanent = True  # expires after PNEUMOSCREEN_SESSION_IDLE_MINUTES without a request
            session[SESSION_EPOCH] = user.session_epoch
            audit(db_session(), user.id, "user.login", "user", user.id, username=username, address=address)
            db_session().commit()
            return redirect(local_path(request.args.get("next", "")))
        audit(db_session(), None, "user.login_failed", "user", None, username=username, address=address)
        db_session().commit()
        flash("Wrong username or password.", "error")
    return render_template("login.html", form=form), 200 if request.method == "GET" else 401


def local_path(target: str) -> str:
    """`target` when it is a path on this site as a browser would read it, else "/": never bounce a fresh login
    to another site. Browsers drop tabs and newlines from URLs and read a backslash as a slash."""
    cleaned = "".join(char for char in target if char >= " " and char != "\x7f").replace("\\", "/")
    parts = urlsplit(cleaned)
    if not cleaned.startswith("/") or cleaned.startswith("//") or parts.scheme or parts.netloc:
        return "/"
    return cleaned


def _throttled(username: str, address: str | None) -> bool:
    # The counts include this attempt.
    by_name, by_address = failed_attempts(db_session(), username, address, login_window(LOGIN_WINDOW_MINUTES))
    return by_name > MAX_FAILURES_PER_USERNAME or by_address > MAX_FAILURES_PER_ADDRESS


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    user = db_session().get(User, current_user.id)
    end_sessions(user)  # a copy of this session's cookie is worthless from now on
    audit(db_session(), current_user.id, "user.logout", "user", current_user.id)
    db_session().commit()
    logout_user()
    session.clear()
    # The idle logoff (web/static/idle.js) sends where the person was: after login, back there.
    then = local_path(request.form.get("next", ""))
    if request.form.get("idle"):
        flash("You were logged out after a while without activity. Log in to go back where you were.", "info")
    return redirect(url_for("auth.login", next=then) if then != "/" else url_for("auth.login"))


@bp.app_template_global()
def idle_minutes() -> int:
    """The idle timeout pages warn about (web/static/portal.js)."""
    return current_services().settings.session_idle_minutes


@bp.get("/session/ping")
@login_required
def ping():
    """Keeps an idle session alive ("Stay logged in"): any request refreshes the session cookie."""
    return jsonify(idle_minutes=current_services().settings.session_idle_minutes)
