"""No dead ends: branded error pages with a way back (JSON for /api/ and /dicomweb/), and an expired or lost
session sent back to login and then to the same place, with what was typed kept (web/static/keep_form.js)."""
import logging
from urllib.parse import urlsplit

from flask import Flask, flash, g, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from core.services import current_services
from web.auth import LoginForm, local_path

logger = logging.getLogger(__name__)
HANDLED = (400, 403, 404, 405, 413, 429, 500)
TITLES = {400: "This request could not be understood", 403: "This page is not for your role",
          404: "Nothing here", 405: "Not allowed this way", 413: "Too large to upload in one go",
          429: "Too many requests", 500: "Something went wrong on our side"}
MESSAGES = {404: "The page or record you asked for does not exist, or your account may not see it.",
            403: "Your account's role may not use this page.",
            405: "This address does not take that kind of request.",
            500: "internal error; it has been logged"}
RESTORE = "restore"  # ?restore=1: keep_form.js puts back what was typed before the form was refused


def init_errors(app: Flask) -> None:
    """Register the handlers; the CSRF token lives as long as the session (its idle timeout bounds both)."""
    app.config["WTF_CSRF_TIME_LIMIT"] = None
    for code in HANDLED:
        app.register_error_handler(code, _error_page)
    app.register_error_handler(CSRFError, _csrf_failed)


def wants_json() -> bool:
    return (request.path.startswith(("/api/", "/dicomweb/"))
            or request.accept_mimetypes.best == "application/json")


def _message(error: HTTPException) -> str:
    if error.code == 413:
        limit = current_services().settings.max_upload_mb
        return f"request is larger than the {limit} MB upload limit: split it into smaller batches"
    return MESSAGES.get(error.code) or error.description or TITLES.get(error.code, "error")


def _error_page(error: HTTPException):
    if error.code == 500:  # Flask hands an unexpected exception over as InternalServerError, already logged
        session = g.get("db_session")
        if session is not None:
            session.rollback()
    if wants_json():
        return jsonify(error=_message(error)), error.code
    return render_template("error.html", code=error.code, title=TITLES.get(error.code, "Error"),
                           message=_message(error), back=_back_path()), error.code


def _csrf_failed(error: CSRFError):
    """A form posted without a valid token: the page was open across a restart, or the session ended."""
    logger.info("CSRF check failed: %s", error.description)
    if wants_json():
        if not current_user.is_authenticated:
            return jsonify(error="session ended: log in again", login=url_for("auth.login")), 401
        return jsonify(error=f"{error.description} Reload the page and try again."), 400
    if request.endpoint == "auth.login":  # the login page itself was stale: the same page, ready to try again
        flash("The login page had been open too long: log in again.", "error")
        return render_template("login.html", form=LoginForm()), 400
    back = _with_restore(_back_path())
    if not current_user.is_authenticated:
        flash("Your session ended. Log in again to go back where you were; what you typed is kept.", "error")
        return redirect(url_for("auth.login", next=back))
    # Refused (400), with the way back to the form, where keep_form.js puts back what was typed.
    message = ("Nothing was saved: the page was older than the server's last restart or your last login. "
               "Go back to the form; what you typed is kept. Submit it again.")
    if request.endpoint == "auth.logout":
        message = "The page was older than the server's last restart or your last login: press Log out again."
    return render_template("error.html", code=400, title="This form had expired", message=message,
                           back=back), 400


def _back_path() -> str:
    """Where the person came from, when it is a page on this site; else the start page."""
    referrer = urlsplit(request.referrer or "")
    if referrer.netloc and referrer.netloc != request.host:
        return "/"
    path = referrer.path + (f"?{referrer.query}" if referrer.query else "")
    return local_path(path) if referrer.path else "/"


def _with_restore(path: str) -> str:
    if f"{RESTORE}=1" in path:
        return path
    return path + ("&" if "?" in path else "?") + f"{RESTORE}=1"
